"""`python -m engine evaluate`: measure how steady and faithful an edit is, against its source shot.

    python -m engine evaluate --source DIR --edited DIR [--prompt TEXT] [--json FILE] [--clip PATH]

Frames are matched by file stem (source `frame_0001.jpg` <-> edited `frame_0001.png`, as the engine
writes them) in name order. The figures are explained in engine/quality/metrics.py and the README ("How good
is the edit?"). The engine calls :func:`evaluate_frames` at the end of a propagate run when the job
asks for it (`evaluate: true`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .. import protocol
from ..errors import BadInput
from ..images import plates
from ..images.frames import decode_image
from ..run.preflight import SUPPORTED
from . import metrics

NO_CLIP_NOTE = "not measured: no --clip model folder given"
NO_PROMPT_NOTE = "not measured: no --prompt given"
FEW_FRAMES_NOTE = (
    "temporal figures not measured: the shot has {n} frame; warp error, motion error and flicker "
    "need at least 2 frames"
)
METHOD = {
    "flow": "OpenCV DIS optical flow (MEDIUM preset) on the source frames",
    "warp_error": "mean |edited frame i warped onto i+1 - edited frame i+1|, 0-255, over pixels that pass "
    "the forward-backward check |f(x+b)+b|^2 <= 0.01 (|f|^2+|b|^2) + 0.5",
    "motion_error": "mean end-point error (pixels) between the edit's own DIS flow and the source's",
    "flicker": "mean |change of the mean RGB colour| between neighbouring frames, 0-255",
    "flicker_excess": "mean |edited colour change - source colour change|, 0-255",
    "structure_ssim": "SSIM of Sobel edge maps of the luma (scikit-image), source frame vs edited frame",
    "clip_score": "cosine similarity of CLIP image and prompt embeddings, mean over frames",
}


# --- finding and matching frames -----------------------------------------------------------
def list_frames(folder: str | Path, role: str) -> list[Path]:
    """The image files of a folder in name order; errors name the folder and the fix."""
    path = Path(folder)
    if not path.exists():
        raise BadInput(f"the {role} folder {path} does not exist; check the --{role} path")
    if not path.is_dir():
        raise BadInput(f"--{role} {path} is a file; give the folder that holds the frames")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED)
    if any(plates.is_plate(p) for p in files):
        raise BadInput(f"the {role} folder {path} holds EXR plates; evaluate measures 8/16-bit sRGB frames")
    if not files:
        raise BadInput(
            f"the {role} folder {path} holds no frames ({', '.join(SUPPORTED)}); "
            "export the shot as an image sequence there"
        )
    return files


def match_frames(source: Sequence[Path], edited: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Pair each source frame with the edited frame of the same stem, in source order."""
    by_stem: dict[str, Path] = {}
    for path in edited:
        if path.stem in by_stem:
            raise BadInput(
                f"the edited frames {by_stem[path.stem].name} and {path.name} share one name; keep one"
            )
        by_stem[path.stem] = path
    source_stems = [p.stem for p in source]
    if len(set(source_stems)) != len(source_stems):
        raise BadInput("two source frames share one name (stem); rename them so frames can be matched")
    missing = [s for s in source_stems if s not in by_stem]
    extra = sorted(set(by_stem) - set(source_stems))
    if len(source) != len(edited) or missing or extra:
        detail = []
        if missing:
            detail.append(f"no edit for {_few(missing)}")
        if extra:
            detail.append(f"no source for {_few(extra)}")
        raise BadInput(
            f"the shots do not match: {len(source)} source frames, {len(edited)} edited frames"
            + (f" ({'; '.join(detail)})" if detail else "")
            + "; evaluate an edit against the exact frames it was made from (same count and names)"
        )
    return [(path, by_stem[path.stem]) for path in source]


def _few(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except OSError as exc:
        raise BadInput(f"{path} could not be read as an image ({exc}); re-export it as PNG") from exc


def check_sizes(pairs: Sequence[tuple[Path, Path]]) -> tuple[int, int]:
    """Every source and edited frame share one size; return it (width, height)."""
    size = image_size(pairs[0][0])
    for source, edited in pairs:
        for path in (source, edited):
            other = image_size(path)
            if other != size:
                raise BadInput(
                    f"frame sizes differ: {pairs[0][0].name} is {size[0]}x{size[1]} but {path} is "
                    f"{other[0]}x{other[1]}; the edit must be at the source size (the engine writes it "
                    "so; rescale the edited frames to the source size first)"
                )
    return size


def measured_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The size the figures are computed at: the source size, or shrunk so its long side is max_side."""
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def read_frames(paths: Sequence[Path], size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Decode frames one at a time as RGB float [0, 1] at `size` (area filter when shrinking)."""
    for path in paths:
        image, _depth = decode_image(path, path.read_bytes())
        if image.shape[1::-1] != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        yield image


# --- the evaluation ------------------------------------------------------------------------
def evaluate_frames(
    source_paths: Sequence[str | Path],
    edited_paths: Sequence[str | Path],
    prompt: str | None = None,
    clip: str | Path | None = None,
    max_side: int | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Measure an edit against its source, given both frame lists (matched by stem).

    Returns the JSON-ready report: `summary` (shot means), `summary_line` (one line for a UI),
    `per_frame` figures, notes and how each figure was computed. `max_side` shrinks large frames
    first (e.g. to the edit's working size) to save time; `on_frame(i)` runs after each frame
    (progress, or cancelling by raising). Raises BadInput for shots that do not match.
    """
    pairs = match_frames([Path(p) for p in source_paths], [Path(p) for p in edited_paths])
    if not pairs:
        raise BadInput("no frames to evaluate; give at least one source frame and its edit")
    size = check_sizes(pairs)
    work = measured_size(size, max_side)
    clip_dir = _check_clip(clip)
    sources = [s for s, _ in pairs]
    edits = [e for _, e in pairs]

    figures = metrics.measure_shot(read_frames(sources, work), read_frames(edits, work), on_frame)
    summary: dict[str, Any] = {key: metrics.shot_mean(values) for key, values in asdict(figures).items()}
    notes: list[str] = []
    temporal_note = FEW_FRAMES_NOTE.format(n=len(pairs)) if len(pairs) < 2 else None
    if temporal_note:
        notes.append(temporal_note)
    summary["warp_error_ratio"] = _ratio(summary["warp_error"], summary["warp_error_source"])
    summary["temporal_note"] = temporal_note

    clip_scores: list[float] | None = None
    summary["clip_score"] = summary["clip_score_source"] = None
    if clip_dir is None:
        summary["clip_note"] = NO_CLIP_NOTE
    elif not prompt:
        summary["clip_note"] = NO_PROMPT_NOTE
    else:
        clip_scores = _clip(read_frames(edits, work), prompt, clip_dir)
        source_scores = _clip(read_frames(sources, work), prompt, clip_dir)
        summary["clip_score"] = metrics.shot_mean(clip_scores)
        summary["clip_score_source"] = metrics.shot_mean(source_scores)
        summary["clip_note"] = f"measured with the CLIP model in {clip_dir}"
    if summary["clip_score"] is None:
        notes.append(f"CLIP score {summary['clip_note']}")

    per_frame: dict[str, Any] = {key: [_finite(v) for v in values] for key, values in asdict(figures).items()}
    per_frame["clip_score"] = None if clip_scores is None else [_finite(v) for v in clip_scores]
    return {
        "source": str(sources[0].parent),
        "edited": str(edits[0].parent),
        "frames": len(pairs),
        "names": [s.stem for s in sources],
        "size": list(size),
        "measured_size": list(work),
        "prompt": prompt,
        "summary": {key: _finite(value) for key, value in summary.items()},
        "summary_line": summary_line(summary),
        "per_frame": per_frame,
        "pairs_note": "warp_error, motion_error and flicker lists hold one value per step i -> i+1",
        "notes": notes,
        "method": METHOD,
    }


def evaluate_folders(
    source_dir: str | Path,
    edited_dir: str | Path,
    prompt: str | None = None,
    clip: str | Path | None = None,
    max_side: int | None = None,
) -> dict[str, Any]:
    """Measure the edit in `edited_dir` against the source frames in `source_dir` (see evaluate_frames)."""
    source = list_frames(source_dir, "source")
    edited = list_frames(edited_dir, "edited")
    return evaluate_frames(source, edited, prompt=prompt, clip=clip, max_side=max_side)


def _check_clip(clip: str | Path | None) -> Path | None:
    if not clip:
        return None
    folder = Path(clip)
    if not folder.is_dir():
        raise BadInput(
            f"--clip {folder} is not a folder; give a local CLIP model folder (config.json, weights and "
            "processor files, e.g. a downloaded openai/clip-vit-base-patch32), or leave --clip out"
        )
    return folder


def _clip(frames: Iterator[np.ndarray], prompt: str, folder: Path) -> list[float]:
    try:
        return metrics.clip_scores(frames, prompt, folder)
    except (OSError, ValueError) as exc:
        raise BadInput(f"the CLIP model in {folder} could not be loaded or run: {exc}") from exc


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def _finite(value: Any) -> Any:
    """JSON has no NaN: a figure that could not be measured is null. Four decimals are plenty."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


# --- presenting ------------------------------------------------------------------------------
def summary_line(summary: dict[str, Any]) -> str:
    """One short line for a UI, e.g. 'warp error 3.1 (source 1.1)'."""
    if summary.get("warp_error") is None:
        line = f"structure {summary['structure_ssim']:.2f} (one frame: no temporal figures)"
    else:
        line = f"warp error {summary['warp_error']:.1f} (source {summary['warp_error_source']:.1f})"
    if summary.get("clip_score") is not None:
        line += f", CLIP {summary['clip_score']:.3f}"
    return line


def format_table(report: dict[str, Any]) -> str:
    """The human table printed by the command."""
    s = report["summary"]
    w, h = report["measured_size"]

    def cell(value: Any, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [
        ("warp error (0-255)", cell(s["warp_error"], 2), cell(s["warp_error_source"], 2), "lower = steadier"),
        ("motion error (px)", cell(s["motion_error"], 2), "", "edit's flow vs source's"),
        ("flicker (0-255)", cell(s["flicker"], 2), cell(s["flicker_source"], 2), "mean colour jumps"),
        ("flicker excess (0-255)", cell(s["flicker_excess"], 2), "", "jumps the source lacks"),
        ("structure SSIM", cell(s["structure_ssim"], 3), "", "edges kept; 1 = same"),
        ("CLIP score", cell(s["clip_score"], 3), cell(s["clip_score_source"], 3), "prompt fidelity"),
    ]
    lines = [
        f"{report['frames']} frames at {w}x{h}: {report['edited']} against {report['source']}",
        f"{'':24}{'edit':>8}{'source':>8}  meaning",
    ]
    lines += [f"{name:24}{a:>8}{b:>8}  {meaning}" for name, a, b, meaning in rows]
    lines += [f"note: {note}" for note in report["notes"]]
    lines.append(f"summary: {report['summary_line']}")
    return "\n".join(lines)


# --- the subcommand ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `evaluate` subcommand's options."""
    parser.add_argument("--source", required=True, help="folder of the source frames")
    parser.add_argument("--edited", required=True, help="folder of the edited frames (same stems)")
    parser.add_argument("--prompt", default=None, help="the edit prompt (for the CLIP score)")
    parser.add_argument("--json", default=None, help="write the full report (summary and per-frame) here")
    parser.add_argument(
        "--clip",
        default=None,
        help="a local CLIP model folder (transformers CLIPModel + CLIPProcessor) for the prompt-fidelity "
        "score; nothing is downloaded, and without it the score is reported as not measured",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=0,
        help="shrink frames so their long side is at most this many pixels before measuring "
        "(faster on large frames; 0 = measure at the source size)",
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write the JSON; exit 2 with a message for shots that do not match."""
    try:
        if args.max_side < 0:
            raise BadInput(f"--max-side is {args.max_side}; give 0 (source size) or a positive pixel count")
        report = evaluate_folders(
            args.source, args.edited, prompt=args.prompt, clip=args.clip, max_side=args.max_side or None
        )
        if args.json:
            path = Path(args.json)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(report, indent=2))
            except OSError as exc:
                raise BadInput(
                    f"cannot write the report to {path}: {exc.strerror}; choose another --json path"
                ) from exc
    except BadInput as exc:
        print(f"evaluate: error: {exc.message}", file=sys.stderr)
        return protocol.EXIT_BAD_INPUT
    print(format_table(report))
    return protocol.EXIT_OK
