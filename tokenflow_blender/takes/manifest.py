"""Takes: every Preview and Propagate of a strip, read back from the output folders' manifests (no bpy).

A take is one engine output folder. Its `tokenflow.json` (written by the engine, atomically, with the
frames) holds the whole job (prompts, seed, model, every setting), the keyframes, the stats (UNet frame
counts, cache use, `unet_seconds`), the consistency metrics and the run's `seconds`. What only Blender
knows rides along in the job's `extra["take"]`: the source strip's name, the scene and the time the
take was started. The take's id is its folder's name. Nothing is kept anywhere else, so the list is
rebuilt from the Output folder at any time: after reopening a .blend, or in a moved project.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ...engine import protocol
from ...engine.model import family
from ..sequencer import planning

PREVIEW, SHOT = "preview", "shot"

# The scene settings a take restores (scene.tokenflow field names, which follow protocol.Job).
RESTORED = (
    "prompt",
    "negative_prompt",
    "source_prompt",
    "model",
    "steps",
    "guidance",
    "pnp_f_t",
    "pnp_attn_t",
    "edit_mode",
    "sdedit_strength",
    "keyframe_stride",
    "keyframe_mode",
    "seed",
    "size",
    "chunk_size",
    "pnp_qk_layers",
    "pnp_conv_layers",
)


class TakeError(ValueError):
    """A folder that is not a readable take (no manifest, damaged JSON, missing fields)."""


@dataclass(frozen=True)
class Take:
    """One result folder as plain values."""

    id: str  # the folder's name
    folder: str  # absolute path
    kind: str  # PREVIEW or SHOT
    source: str  # the source strip's name ("" if the run did not record one)
    scene: str
    prompt: str
    seed: int
    created: float  # unix time the run was started (else the manifest's modification time)
    seconds: float | None  # the engine's run time
    keyframes: list[int]
    job: dict[str, Any] = field(repr=False)
    stats: dict[str, Any] = field(repr=False)
    metrics: dict[str, Any] | None = field(default=None, repr=False)
    model_family: str = ""  # "sd1", "sd2" or "sdxl" (engine/model/family.py); "" in takes made before
    working_size: int = 0  # the long side the model worked at (0: not recorded)

    @property
    def variation(self) -> int | None:
        """0-based index of the variation when this take came from a Preview Variations run."""
        v = (self.job.get("extra") or {}).get("variation")
        return int(v["index"]) if isinstance(v, dict) and "index" in v else None

    def settings(self) -> dict[str, Any]:
        """The scene settings that made this take (what "Restore Settings" puts back)."""
        # A field newer than the take restores its default: what the run that made the take used.
        defaults = {f.name: f.default for f in fields(protocol.Job) if f.default is not MISSING}
        found = {name: defaults[name] for name in RESTORED if name in defaults}
        found.update({name: self.job[name] for name in RESTORED if name in self.job})
        config = (self.job.get("extra") or {}).get("model_config")
        if isinstance(config, str) and config:  # a single-file checkpoint's configs
            found["model_config"] = config
        return found

    @property
    def unet_frames(self) -> int:
        s = self.stats
        keys = ("inversion_unet_frames", "keyframe_unet_frames", "propagate_unet_frames")
        return int(sum(s.get(k, 0) for k in keys))


def take_extra(scene: str, source: str, now: float | None = None) -> dict[str, Any]:
    """What Blender adds to a job's `extra` so that its manifest describes the take."""
    created = round(time.time() if now is None else now, 3)
    return {"take": {"source": source, "scene": scene, "created": created}}


def read_take(folder: str) -> Take:
    """The take in `folder`; raise TakeError when its manifest is missing or damaged."""
    path = os.path.join(folder, protocol.MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        mtime = os.path.getmtime(path)
    except FileNotFoundError as exc:
        raise TakeError(f"{folder}: no {protocol.MANIFEST}") from exc
    except (OSError, ValueError) as exc:
        raise TakeError(
            f"{folder}: unreadable {protocol.MANIFEST} ({exc.__class__.__name__}: {exc})"
        ) from exc
    try:
        job = data["job"]
        info = (job.get("extra") or {}).get("take") or {}
        stage = data.get("stage", job["stage"])
        seconds = data.get("seconds")
        return Take(
            id=os.path.basename(os.path.normpath(folder)),
            folder=os.path.abspath(folder),
            kind=PREVIEW if stage == "preview" else SHOT,
            source=str(info.get("source", "")),
            scene=str(info.get("scene", "")),
            prompt=str(job["prompt"]),
            seed=int(job.get("seed", 0)),
            created=float(info.get("created", mtime)),
            seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
            keyframes=[int(k) for k in data.get("keyframes", [])],
            job=dict(job),
            stats=dict(data.get("stats") or {}),
            metrics=data.get("metrics") if isinstance(data.get("metrics"), dict) else None,
            model_family=str(data.get("model_family", "")),
            working_size=int(data.get("working_size", 0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problem = f"{exc.__class__.__name__}: {exc}"
        raise TakeError(f"{folder}: {protocol.MANIFEST} lacks what a take needs ({problem})") from exc


def scan(parent: str) -> tuple[list[Take], list[str]]:
    """Every take directly under `parent`, newest first, and a note for each folder that has a
    manifest but cannot be read (a damaged take is skipped and named, never fatal)."""
    takes: list[Take] = []
    notes: list[str] = []
    try:
        entries = sorted(os.scandir(parent), key=lambda e: e.name)
    except OSError:
        return [], []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue  # the engine's temporary folders start with a dot
        if not os.path.exists(os.path.join(entry.path, protocol.MANIFEST)):
            continue  # chunk folders, job files, anything else
        try:
            takes.append(read_take(entry.path))
        except TakeError as exc:
            notes.append(f"{entry.name}: {str(exc).removeprefix(entry.path + ': ')}")
    return newest_first(takes), notes


def newest_first(takes: Iterable[Take]) -> list[Take]:
    return sorted(takes, key=lambda t: (t.created, t.id), reverse=True)


def of_source(takes: Iterable[Take], source: str, scene: str = "") -> list[Take]:
    """The takes of one source strip (and scene, when the take recorded one)."""
    return [t for t in takes if t.source == source and (not scene or not t.scene or t.scene == scene)]


def age(seconds: float) -> str:
    """A compact age for the list: 'now', '45 s', '12 min', '3 h', '5 d'."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return "now"
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def shorten(text: str, limit: int = 28) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def row(take: Take, now: float | None = None) -> tuple[str, str, str, str]:
    """The list row: (prompt shortened, 'seed N', kind, age)."""
    now = time.time() if now is None else now
    return shorten(take.prompt), f"seed {take.seed}", take.kind, age(now - take.created)


def family_label(name: str) -> str:
    return family.LABELS.get(name, name)


def details(take: Take) -> list[str]:
    """Lines that show a selected take's settings, time and figures in the panel."""
    j, s = take.job, take.stats
    lines = [
        f"Prompt: {j.get('prompt', '')}",
        f"Source: {j.get('source_prompt', '') or '-'}",
        f"Negative: {j.get('negative_prompt', '')}",
        f"Model: {j.get('model', '')}",
        f"Steps {j.get('steps')}, guidance {j.get('guidance')}, {j.get('edit_mode')}, seed {j.get('seed')}",
        f"Keyframes {j.get('keyframe_mode')} every {j.get('keyframe_stride')}: {take.keyframes}",
        f"Working size {take.working_size or j.get('size')}"
        + (f", {family_label(take.model_family)}" if take.model_family else ""),
    ]
    if take.seconds is not None:
        reuse = ", inversion from the cache" if s.get("inversion_unet_frames") == 0 else ""
        lines.append(f"Took {take.seconds:.0f} s, {take.unet_frames} UNet frames{reuse}")
    summary = (take.metrics or {}).get("summary_line")
    if summary:
        lines.append(f"Consistency: {summary}")
    return lines


# --- estimated cost ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Speed:
    """This machine's measured speed for one model and working size, from earlier takes."""

    per_unet_frame: float  # seconds per UNet frame evaluation
    overhead: float  # seconds per run besides UNet work (load, read, decode, write)
    runs: int


def speed(takes: Iterable[Take], model: str, size: int) -> Speed | None:
    """Seconds per UNet frame over earlier runs with this model and size; None when there are none."""
    seconds = frames = 0.0
    overheads: list[float] = []
    runs = 0
    seen_runs: set[str] = set()
    for t in takes:
        unet_seconds = t.stats.get("unet_seconds")
        if t.job.get("model") != model or t.job.get("size") != size or not unet_seconds or not t.unet_frames:
            continue
        seconds += float(unet_seconds)
        frames += t.unet_frames
        runs += 1
        run = str(((t.job.get("extra") or {}).get("variation") or {}).get("run", t.folder))
        if t.seconds is not None and run not in seen_runs and t.variation in (None, 0):
            seen_runs.add(run)
            overheads.append(max(0.0, t.seconds - float(unet_seconds)))
    if not frames:
        return None
    overheads.sort()
    overhead = overheads[len(overheads) // 2] if overheads else 0.0
    return Speed(seconds / frames, overhead, runs)


def keyframe_count(n_frames: int, stride: int, mode: str) -> int:
    if n_frames <= 1:
        return 1
    if mode == "resample":
        return math.ceil(n_frames / stride)
    return math.ceil((n_frames - 1) / stride) + 1


def edit_steps(settings: dict[str, Any]) -> int:
    steps = int(settings["steps"])
    if settings.get("edit_mode") == "sdedit":
        return max(1, round(steps * float(settings.get("sdedit_strength", 1.0))))
    return steps


def unet_frames(
    stage: str, n_frames: int, settings: dict[str, Any], inverted: bool = True, variations: int = 1
) -> int:
    """UNet frame evaluations a run will do (as the engine counts them), approximately for grouped
    keyframe passes. `inverted=False` adds the inversion of the frames the run reads."""
    stride, batch = int(settings["keyframe_stride"]), int(settings.get("keyframe_batch", 8))
    anchors = int(settings.get("keyframe_anchors", 3))
    k = keyframe_count(n_frames, stride, str(settings.get("keyframe_mode", "fixed")))
    groups = math.ceil(k / batch)
    members = k if groups == 1 else min(k * 3, k + groups * (2 + anchors))
    steps = edit_steps(settings)
    preview = stage == "preview"
    total = steps * members * (variations if preview else 1)
    if not preview:
        total += steps * n_frames
    if not inverted:
        total += int(settings["steps"]) * (k if preview else n_frames)
    return total


def estimate(
    measured: Speed | None,
    stage: str,
    n_frames: int,
    settings: dict[str, Any],
    inverted: bool = True,
    variations: int = 1,
) -> float | None:
    """Seconds a run is expected to take on this machine, or None when nothing was measured yet."""
    if measured is None:
        return None
    work = unet_frames(stage, n_frames, settings, inverted, variations)
    return measured.overhead + measured.per_unet_frame * work


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(1, int(round(seconds)))
    if seconds < 60:
        return f"~{seconds} s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"~{m}:{s:02d}"
    h, m = divmod(m, 60)
    return f"~{h}:{m:02d}:{s:02d}"


def inversion_known(
    takes: Iterable[Take], frames: Sequence[str], settings: dict[str, Any], model: str, stage: str
) -> bool:
    """Whether an earlier take read these frames with the same model, size, steps, inversion steps,
    source prompt and (when `settings` names it) colour space, so that the inversion comes from the
    cache (a shot inverted every frame, a preview its keyframes). The engine's cache key holds the
    decoded pixels, so another colour space is another inversion."""
    wanted = set(frames)
    for t in takes:
        j = t.job
        same = (
            j.get("model") == model
            and j.get("size") == settings.get("size")
            and j.get("steps") == settings.get("steps")
            and (j.get("inversion_steps") or 0) == (settings.get("inversion_steps") or 0)
            and j.get("source_prompt") == settings.get("source_prompt")
            and ("colorspace" not in settings or (j.get("colorspace") or "") == settings["colorspace"])
        )
        if same and wanted <= set(j.get("frames") or []) and (t.kind == SHOT or stage == "preview"):
            return True
    return False


def variation_specs(source: str, count: int, seed: int, lines: Iterable[str]) -> list[dict[str, Any]]:
    """The job's `variations` for Preview Variations: `count` seeds from `seed` on ("SEEDS"), or one
    prompt per non-empty line ("PROMPTS")."""
    if source == "SEEDS":
        return [{"seed": seed + i} for i in range(count)]
    prompts = [" ".join(line.split()) for line in lines]
    return [{"prompt": p} for p in dict.fromkeys(p for p in prompts if p)]


def variation_base(base: str, count: int) -> str:
    """An output base whose variation folders (`<base>-v1` ...) are all new: results never overwrite,
    and the engine refuses a run whose folders exist."""
    candidate, n = base, 1
    while os.path.exists(candidate) or any(
        os.path.exists(protocol.variation_output(candidate, i)) for i in range(count)
    ):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def discard_variation_temporaries(output: str, count: int) -> list[str]:
    """After a variations run that did not finish (a kill after a cancel): remove the engine's
    half-written `.<output>-vN.tmp-PID` folders. Finished variation folders are takes and stay."""
    removed = []
    for i in range(count):
        for path in planning.temp_folders(protocol.variation_output(output, i)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
