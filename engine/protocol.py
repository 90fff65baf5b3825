"""The job/event protocol between Blender (or any caller) and the engine.

Standard library only (and :mod:`engine.errors`, which is too): the Blender side imports this module
from Blender's own Python, the engine imports it from its environment. A job is one JSON object (a
:class:`Job`); the engine answers with JSON lines on stdout, one event each, and an exit code from
:data:`EXIT_CODES`. Each job field's type, bounds and help are in :data:`FIELDS`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import BadInput

PROTOCOL_VERSION = 1
# Job versions this engine reads; a job of another version is refused with this list.
SUPPORTED_VERSIONS = (1,)

# --- events (stdout, one JSON object a line, each with an "event" field) -------------------
EVENT_STARTED = "started"  # frames, width/height (working), padding, source_width/height, device, dtype
EVENT_PROGRESS = "progress"  # stage, step, total, elapsed, eta (seconds)
EVENT_KEYFRAMES = "keyframes"  # indices (0-based positions in the job's frame list)
EVENT_PREVIEW = "preview"  # files (the written keyframe images), indices
EVENT_DONE = "done"  # output, files, keyframes, stats, metrics (optional)
EVENT_ERROR = "error"  # kind, message
EVENT_CANCELLED = "cancelled"  # message
EVENT_CHECK = "check"  # answer of `python -m engine check`
# `python -m engine serve` (the warm engine): ready for the next job line, after starting and after
# every job's last event. Payload: pid, model and device loaded (or null), loads (models loaded so
# far), jobs (jobs run so far), idle_timeout (seconds).
EVENT_READY = "ready"
EVENTS = (
    EVENT_STARTED,
    EVENT_PROGRESS,
    EVENT_KEYFRAMES,
    EVENT_PREVIEW,
    EVENT_DONE,
    EVENT_ERROR,
    EVENT_CANCELLED,
    EVENT_CHECK,
    EVENT_READY,
)

# Event order of one run:
#   checks that need no model (job fields, frame headers, output and cache folders): on failure
#     one `error` and nothing else;
#   `started` (frame count, working and source size, padding, device and dtype): always the first
#     event of a run that passed those checks, before any `progress`;
#   `progress` events (stages below), `keyframes`, `preview` (preview stage only);
#   exactly one of `done`, `error` or `cancelled`, last. The output folder appears (atomically)
#   just before `done`; a run that cannot write its `done` (stdout closed: its caller is gone)
#   removes that folder again, so a result folder on disk always had its `done` sent. Its
#   `tokenflow.json` manifest repeats what `done` said (files, indices, keyframes, stats).
# Progress stages, in the order a run goes through them.
STAGES = ("read", "load", "inversion", "keyframes", "propagate", "per-frame", "decode", "write", "evaluate")

# --- error kinds and exit codes ------------------------------------------------------------
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 3
EXIT_OUT_OF_MEMORY = 4
EXIT_MODEL = 5
EXIT_DISK = 6  # the output folder's storage is read-only, full or failing (the message names it)
EXIT_CODES = {
    "internal": EXIT_INTERNAL,
    "bad_input": EXIT_BAD_INPUT,
    "cancelled": EXIT_CANCELLED,
    "out_of_memory": EXIT_OUT_OF_MEMORY,
    "model": EXIT_MODEL,
    "disk": EXIT_DISK,
}

# A line on the engine's stdin that asks it to stop (as SIGTERM / SIGINT do).
CANCEL_LINE = "cancel"
# A line on the warm engine's stdin that asks it to exit (freeing the model's memory). Closing its
# stdin does the same, after cancelling a running job.
UNLOAD_LINE = "unload"

# Written into every result folder: what its `done` event said (the engine writes it, takes and the
# farm's merge read it).
MANIFEST = "tokenflow.json"

STAGE_PREVIEW = "preview"
STAGE_PROPAGATE = "propagate"
STAGE_INVERT = "invert"  # only fill the inversion cache (a farm's prepare task); writes no output
STAGES_OF_JOB = (STAGE_PREVIEW, STAGE_PROPAGATE, STAGE_INVERT)
KEYFRAME_MODES = ("fixed", "resample")
EDIT_MODES = ("pnp", "sdedit")
METHODS = ("tokenflow", "per-frame")
MATCH_SCOPES = ("layer", "level")
# How a frame blends its keyframes' features (engine/method/keyframes.py): the paper's rule or the
# reference code's (docs/quality.md, "Parity with the reference code").
PROPAGATIONS = ("paper", "reference")
MATTE_CHANNELS = ("auto", "alpha", "luminance")
DEVICES = ("auto", "cuda", "mps", "cpu")
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
TRAIN_TIMESTEPS = 1000  # Stable Diffusion 1.x / 2.x
DEFAULT_NEGATIVE = "ugly, blurry, low res, unrealistic, unaesthetic"


class JobError(BadInput, ValueError):
    """A job that cannot run as written; the message names the field and the fix.

    A kind of engine error (kind `bad_input`, exit code 2) like any other bad input; still a
    ValueError for callers that validate plain values."""


@dataclass(frozen=True)
class Field:
    """One job field's contract: its type, bounds and one line of help.

    Validation (:meth:`Job.validate`), the command line's flags and help (engine/cli.py) and the
    Blender properties' descriptions and limits (tokenflow_blender's settings) are built from
    :data:`FIELDS`, so a bound or a sentence is written once.
    """

    name: str
    kind: str  # "int", "number", "choice", "bool" or "string"
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    low_open: bool = False  # the lower bound itself is not allowed (a number in (low, high])
    flag: bool = True  # offered as a flag of `python -m engine edit`
    group: str = ""  # the flag's group in `edit --help` ("": the general options)

    def check(self, value: Any) -> None:
        """Raise :class:`JobError` naming the field when `value` is of the wrong type or out of range."""
        if self.kind == "int":
            _integer(self.name, value, int(self.low), int(self.high))
        elif self.kind == "number":
            _number(self.name, value, self.low, self.high, self.low_open)
        elif self.kind == "choice":
            _choice(self.name, value, self.choices)
        elif self.kind == "bool":
            _boolean(self.name, value)
        else:
            _string(self.name, value)


PLATE_GROUP = "colour and matte"
# In the order the checks run: the first field out of range is the one an error names.
FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field(
            "negative_prompt",
            "string",
            "what the edit should avoid (classifier-free guidance's negative prompt)",
        ),
        Field(
            "source_prompt",
            "string",
            "a description of the source shot, used for the DDIM inversion (may be empty)",
        ),
        Field(
            "cache_dir",
            "string",
            "where inversions are cached (default $TOKENFLOW_CACHE or ~/.cache/tokenflow)",
        ),
        Field(
            "model",
            "string",
            "a diffusers hub id, a local diffusers folder, or a single-file .safetensors checkpoint "
            "(Stable Diffusion 1.x, 2.x or SDXL; the family is read from the model)",
        ),
        Field(
            "pnp_qk_layers",
            "string",
            "PnP: the UNet attention blocks whose self-attention queries/keys come from the source, "
            "comma-separated diffusers names (e.g. up_blocks.1.attentions.0); empty: the model family's "
            "default (docs/engine.md, PnP layers)",
            group="PnP layers",
        ),
        Field(
            "pnp_conv_layers",
            "string",
            "PnP: the UNet ResNets whose residual features come from the source, comma-separated "
            "(e.g. up_blocks.1.resnets.1); empty: the model family's default",
            group="PnP layers",
        ),
        Field(
            "evaluate",
            "bool",
            "measure temporal consistency (warp error etc.) of the result and report it in 'done'",
        ),
        Field(
            "stage",
            "choice",
            "'preview' denoises only the keyframes (about K/N of the cost); 'propagate' edits every frame; "
            "'invert' only fills the inversion cache (a farm's prepare task)",
            choices=STAGES_OF_JOB,
        ),
        Field(
            "keyframe_mode",
            "choice",
            "fixed: evenly spaced, the same at every step (preview matches the result); "
            "resample: one random keyframe per block, re-drawn each step (the reference)",
            choices=KEYFRAME_MODES,
        ),
        Field(
            "edit_mode",
            "choice",
            "pnp: inject source features (default); sdedit: start part-way from the inverted noise",
            choices=EDIT_MODES,
        ),
        Field(
            "method",
            "choice",
            "tokenflow (keyframes + propagation) or per-frame (PnP on each frame alone: the baseline)",
            choices=METHODS,
        ),
        Field("device", "choice", "auto picks CUDA, then Apple MPS, then the CPU (slow)", choices=DEVICES),
        Field(
            "steps",
            "int",
            "DDIM steps of the edit, and of the inversion unless the inversion steps are set (the inversion "
            "is cached per frame for its steps)",
            1,
            1000,
        ),
        Field(
            "inversion_steps",
            "int",
            "DDIM steps of the inversion, 0: as the steps. More than the steps (e.g. 50 for 25, as the "
            "reference inverts finely and edits coarsely) needs 1000 // inversion_steps to divide "
            "1000 // steps",
            0,
            TRAIN_TIMESTEPS,
        ),
        Field(
            "keyframe_stride",
            "int",
            "one keyframe per this many frames (the reference's batch size)",
            1,
            1000,
        ),
        Field("chunk_size", "int", "frames per UNet call: lower it when the GPU runs out of memory", 1, 256),
        Field(
            "keyframe_batch",
            "int",
            "keyframes that attend to each other jointly in one UNet call; beyond this, keyframes go in "
            "groups with their neighbours and a few global anchors (bounded memory for long shots)",
            1,
            1024,
        ),
        Field(
            "keyframe_anchors",
            "int",
            "global anchor keyframes every group also attends to, when keyframes are grouped",
            0,
            64,
        ),
        Field(
            "match_scope",
            "choice",
            "level: one nearest-neighbour search per resolution level, shared by that level's "
            "self-attention layers; layer: one at every layer (the reference, slower)",
            choices=MATCH_SCOPES,
        ),
        Field(
            "match_reuse",
            "number",
            "fraction of the last steps that reuse the nearest-neighbour fields of the step before them "
            "(0: search at every step)",
            0.0,
            1.0,
        ),
        Field(
            "match_dims",
            "int",
            "search nearest neighbours in a random projection to this many dimensions (0: full width)",
            0,
            4096,
        ),
        Field(
            "propagation",
            "choice",
            "paper: each frame blends its two nearest keyframes linearly by distance (the paper); "
            "reference: the reference code's rule, for parity checks (each block of keyframe_stride frames "
            "blends its keyframe with the previous block's, sigmoid weights, keyframes propagated too; needs "
            "resample keyframes; its search is the reference's, so the match_* settings do not apply)",
            choices=PROPAGATIONS,
        ),
        Field("seed", "int", "random seed (keyframe draws)", 0, 2**32 - 1),
        Field(
            "size",
            "int",
            "long side of the working size in pixels, a multiple of 64; the aspect ratio is kept (the short "
            "side is padded to a multiple of 64 and cropped back); results come back at the source size. "
            "0: the model's native size (SD 1.x 512, SD 2.x 512 or 768, SDXL 1024)",
            0,
            4096,
        ),
        Field(
            "guidance",
            "number",
            "classifier-free guidance scale: higher follows the prompt more closely",
            0.0,
            50.0,
        ),
        Field(
            "pnp_f_t",
            "number",
            "fraction of the first steps with PnP residual-feature injection (structure from the source)",
            0.0,
            1.0,
        ),
        Field(
            "pnp_attn_t",
            "number",
            "fraction of the first steps with PnP self-attention query/key injection",
            0.0,
            1.0,
        ),
        Field(
            "sdedit_strength",
            "number",
            "sdedit only: the fraction of the schedule that is re-denoised",
            0.0,
            1.0,
            low_open=True,
        ),
        Field(
            "colorspace",
            "string",
            "the frames' colour space in the OCIO config (e.g. ACEScg for an EXR plate); empty: sRGB files",
            group=PLATE_GROUP,
        ),
        Field("ocio_config", "string", "the OCIO config (default: $OCIO)", group=PLATE_GROUP),
        Field(
            "matte_channel",
            "choice",
            "auto: alpha if the matte has one, else luminance",
            choices=MATTE_CHANNELS,
            group=PLATE_GROUP,
        ),
        Field("matte_invert", "bool", "edit where the matte is black", group=PLATE_GROUP),
        Field("matte_feather", "number", "soft matte edge, in source pixels", 0.0, 1000.0, group=PLATE_GROUP),
    )
}


@dataclass
class Job:
    """Everything one engine run needs. Field names are the JSON keys."""

    frames: list[str]
    output: str
    prompt: str
    stage: str = STAGE_PROPAGATE
    negative_prompt: str = DEFAULT_NEGATIVE
    source_prompt: str = ""
    model: str = DEFAULT_MODEL
    device: str = "auto"
    cache_dir: str = ""
    steps: int = 50
    # DDIM steps of the inversion; 0: the same as `steps`. More inversion steps than edit steps (the
    # reference inverts finely and edits coarsely) need the edit's timesteps among the inversion's.
    inversion_steps: int = 0
    guidance: float = 7.5
    pnp_f_t: float = 0.8
    pnp_attn_t: float = 0.5
    edit_mode: str = "pnp"
    sdedit_strength: float = 0.9
    method: str = "tokenflow"
    keyframe_stride: int = 8
    keyframe_mode: str = "fixed"
    seed: int = 1
    size: int = 0  # 0: the model family's native size (engine/model/family.py)
    chunk_size: int = 8
    keyframe_batch: int = 8
    keyframe_anchors: int = 3
    # How propagation searches its nearest-neighbour fields (engine/method/matching.py, MatchOptions). The
    # defaults are the cheaper search that bench/edit_bench.py found as good as the exact one ("layer", 0).
    match_scope: str = "level"
    match_reuse: float = 0.2  # a fraction of the steps, as pnp_f_t
    match_dims: int = 0
    propagation: str = "paper"
    # PnP injection layers, comma-separated module names; empty: the family's (engine/method/attention.py)
    pnp_qk_layers: str = ""
    pnp_conv_layers: str = ""
    evaluate: bool = False
    # Colour: the source frames' colour space as Blender names it and the OCIO config that defines
    # it. An empty colorspace means display-referred sRGB files, which go to the model as they are.
    colorspace: str = ""
    ocio_config: str = ""
    # Matte: one matte image per frame (same count and size as `frames`); the edit is limited to
    # where the matte is white. Empty: the whole frame is edited.
    matte: list[str] = field(default_factory=list)
    matte_channel: str = "auto"  # auto (alpha if the file has one, else luminance) | alpha | luminance
    matte_invert: bool = False
    matte_feather: float = 0.0  # pixels at the source size
    # [start, end): produce only these frames (a farm chunk); start and end on keyframe-stride
    # multiples (end may be the shot's end). None produces the whole shot.
    frame_range: list[int] | None = None
    # Preview variations (engine/run/variations.py): each entry {"seed": int} and/or {"prompt": str}
    # overrides the job's; one run previews them all into `variation_output(output, i)` folders.
    variations: list[dict[str, Any]] = field(default_factory=list)
    version: int = PROTOCOL_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        if not isinstance(data, dict):
            raise JobError("a job must be a JSON object")
        _validate_version(data.get("version", PROTOCOL_VERSION))  # before fields a newer version may add
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise JobError(f"unknown job field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for name in ("frames", "output", "prompt"):
            if name not in data:
                raise JobError(f"the job has no '{name}'")
        job = cls(**data)
        job.validate()
        return job

    @classmethod
    def from_json(cls, text: str) -> Job:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise JobError(f"the job file is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    # -- validation (both sides run it: Blender before starting, the engine on arrival) ----
    def validate(self) -> None:
        """Raise :class:`JobError` naming the first field that is out of range or of the wrong type."""
        _validate_version(self.version)
        if not isinstance(self.frames, list) or not all(isinstance(f, str) for f in self.frames):
            raise JobError("'frames' must be a list of image file paths")
        if not self.frames:
            raise JobError("no frames: give at least one image file")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise JobError("the prompt is empty: describe the edit, e.g. 'a watercolor painting'")
        if not isinstance(self.output, str):
            raise JobError(f"'output' must be a string (a folder path), got {self.output!r}")
        if self.stage != STAGE_INVERT and not self.output.strip():
            raise JobError("'output' must name a folder that does not exist yet")
        if not isinstance(self.extra, dict):
            raise JobError(f"'extra' must be an object (a dict of settings), got {self.extra!r}")
        if not isinstance(self.extra.get("model_config", ""), str):
            raise JobError("'extra.model_config' must be a string (a local diffusers folder)")
        for spec in FIELDS.values():
            spec.check(getattr(self, spec.name))
        _validate_inversion_steps(self.steps, self.inversion_steps)
        if self.size % 64:
            raise JobError(
                f"'size' is {self.size}: the working size must be a multiple of 64 (e.g. 512), or 0 for the "
                "model's native size"
            )
        self._validate_range()
        if self.propagation == "reference" and self.keyframe_mode != "resample":
            raise JobError(
                "'propagation' reference pairs each block of keyframe_stride frames with the keyframe drawn "
                "in it, as the reference code does: set 'keyframe_mode' to 'resample'"
            )
        for name in ("pnp_qk_layers", "pnp_conv_layers"):
            _validate_layer_list(name, getattr(self, name))
        _validate_matte_fields(self)
        _validate_variations(self)
        if not isinstance(self.model, str) or not self.model.strip():
            raise JobError("'model' is empty: give a hub id, a diffusers folder or a .safetensors file")

    def _validate_range(self) -> None:
        if self.frame_range is None:
            return
        r = self.frame_range
        n = len(self.frames)
        if not (
            isinstance(r, list)
            and len(r) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
        ):
            raise JobError(f"'frame_range' must be [start, end] (whole numbers), got {r!r}")
        start, end = r
        if not 0 <= start < end <= n:
            raise JobError(f"'frame_range' {r} must satisfy 0 <= start < end <= {n} (the number of frames)")
        stride = self.keyframe_stride
        if start % stride or (end % stride and end != n):
            raise JobError(
                f"'frame_range' {r} must start and end on multiples of keyframe_stride ({stride}) "
                f"or end at the shot's end ({n})"
            )
        if self.stage == STAGE_PREVIEW:
            raise JobError("'frame_range' is for propagate chunks; a preview always covers the keyframes")


def leading_timesteps(steps: int) -> set[int]:
    """DDIM timesteps (less the scheduler's steps_offset) of `steps` steps with diffusers' 'leading'
    spacing over 1000 training timesteps: what SD 1.x / 2.x schedulers use."""
    ratio = TRAIN_TIMESTEPS // steps
    return set(range(0, steps * ratio, ratio))


def _validate_inversion_steps(steps: int, inversion_steps: Any) -> None:
    """The edit starts each step from an inverted latent, so its timesteps must be among the inversion's.

    For leading spacing that holds when 1000 // inversion_steps divides 1000 // steps and the inversion
    reaches the edit's noisiest timestep: not whenever inversion_steps is a multiple of steps (6 steps
    miss 3 steps' 333 and 666), nor only then (500 cover 7). Checked here for the standard schedule; the
    engine checks the model's own schedule exactly before inverting.
    """
    if inversion_steps in (0, steps):
        return
    edit = leading_timesteps(steps)
    if edit <= leading_timesteps(inversion_steps):
        return
    valid = [n for n in range(steps + 1, TRAIN_TIMESTEPS + 1) if edit <= leading_timesteps(n)]
    nice = [n for n in valid if n % steps == 0] or valid  # e.g. 50 for 25: the reference's pairs
    picks = [n for n in nice if n < inversion_steps][-1:] + [n for n in nice if n > inversion_steps][:1]
    choice = f"{' or '.join(map(str, picks))} inversion steps, or " if picks else ""
    apart, inverted_apart = TRAIN_TIMESTEPS // steps, TRAIN_TIMESTEPS // inversion_steps
    if inversion_steps < steps:
        why = "an inversion needs at least as many steps as the edit"
    elif apart % inverted_apart:
        why = (
            f"the edit's DDIM timesteps are {apart} apart, the inversion's {inverted_apart} "
            "(1000 // inversion_steps must divide 1000 // steps)"
        )
    else:
        why = "the inversion ends below the edit's noisiest timestep"
    raise JobError(
        f"'inversion_steps' {inversion_steps} does not cover the edit's {steps} 'steps': {why}. "
        f"Choose {choice}0 to invert with the edit's {steps} steps"
    )


MAX_VARIATIONS = 16
VARIATION_KEYS = ("seed", "prompt")


def variation_output(output: str, index: int) -> str:
    """The folder of variation `index` (0-based) of a job: `<output>-v1`, `<output>-v2`, ..."""
    base = output.rstrip("/\\")
    return f"{base}-v{index + 1}"


def _validate_variations(job: Job) -> None:
    """Variations are previews that differ in seed and/or prompt, and no two may give the same frames."""
    v = job.variations
    if not isinstance(v, list) or not all(isinstance(e, dict) for e in v):
        raise JobError("'variations' must be a list of objects such as {'seed': 2} or {'prompt': '...'}")
    if not v:
        return
    if job.stage != STAGE_PREVIEW:
        raise JobError("'variations' are previews: set 'stage' to 'preview' (propagate the chosen one alone)")
    if len(v) > MAX_VARIATIONS:
        raise JobError(f"{len(v)} variations; at most {MAX_VARIATIONS} in one run")
    seen: dict[tuple[str, int | None], int] = {}
    for i, entry in enumerate(v):
        unknown = sorted(set(entry) - set(VARIATION_KEYS))
        if unknown or not entry:
            raise JobError(f"variation {i + 1} must set 'seed' and/or 'prompt' (nothing else), got {entry!r}")
        if "seed" in entry:
            _integer(f"variations[{i}].seed", entry["seed"], 0, 2**32 - 1)
        prompt = entry.get("prompt", job.prompt)
        if not isinstance(prompt, str) or not prompt.strip():
            raise JobError(f"variation {i + 1} has an empty prompt")
        # The edit is deterministic given the inverted noise: the seed only draws resampled keyframes.
        seed = entry.get("seed", job.seed) if job.keyframe_mode == "resample" else None
        key = (prompt.strip(), seed)
        if key in seen:
            hint = (
                "; in fixed keyframe mode the seed changes nothing, vary the prompt or use resample keyframes"
                if job.keyframe_mode == "fixed" and "seed" in entry
                else ""
            )
            raise JobError(f"variations {seen[key] + 1} and {i + 1} would give the same frames{hint}")
        seen[key] = i


def _validate_matte_fields(job: Job) -> None:
    """The matte list (its channel, inversion and feather are in :data:`FIELDS`; the engine checks
    the files themselves)."""
    if not isinstance(job.matte, list) or not all(isinstance(f, str) for f in job.matte):
        raise JobError("'matte' must be a list of image file paths, one per frame (or empty)")
    if job.matte and len(job.matte) != len(job.frames):
        raise JobError(
            f"'matte' has {len(job.matte)} frames but the shot has {len(job.frames)}; "
            "give one matte image per frame"
        )


def _validate_version(version: Any) -> None:
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        speaks = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise JobError(
            f"the job's protocol 'version' is {version!r} but this engine speaks version(s) {speaks}; "
            "update the engine (or the extension) so that both speak the same version"
        )


def layer_list(text: str) -> tuple[str, ...]:
    """A comma-separated layer field as names ("" -> none: the family's default)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _validate_layer_list(name: str, text: str) -> None:
    for layer in layer_list(text):
        if not all(part.isidentifier() or part.isdigit() for part in layer.split(".")):
            raise JobError(
                f"'{name}' names {layer!r}, which is not a UNet module path such as up_blocks.1.attentions.0"
            )


def _string(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise JobError(f"'{name}' must be a string, got {value!r}")


def _boolean(name: str, value: Any) -> None:
    """JSON true / false only: a string such as "no" is not silently true."""
    if not isinstance(value, bool):
        raise JobError(f"'{name}' must be true or false, got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise JobError(f"'{name}' is {value!r}; choose one of: {', '.join(allowed)}")


def _integer(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(f"'{name}' must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise JobError(f"'{name}' is {value}; it must lie between {low} and {high}")


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JobError(f"'{name}' must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise JobError(f"'{name}' is {value}; it must lie in {bracket}{low}, {high}]")


# --- events --------------------------------------------------------------------------------
_SURROGATE = re.compile("[\ud800-\udfff]")


def event_line(event: str, **payload: Any) -> str:
    """One event as a JSON line (no trailing newline), always encodable as UTF-8.

    A file name that is not valid UTF-8 reaches Python as lone surrogates (surrogateescape); they
    are written as JSON escapes (`\\udcff`), never as raw bytes: the line stays valid UTF-8, and a
    Python reader gets the exact name back (`os.fsencode` of the parsed string).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    text = json.dumps({"event": event, **payload}, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def parse_event(line: str) -> dict[str, Any] | None:
    """The event on a stdout line, or None for a line that is not one (stray prints)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("event") not in EVENTS:
        return None
    return data
