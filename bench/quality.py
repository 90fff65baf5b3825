"""Quality benchmark: TokenFlow against per-frame editing on real clips, measured the same way.

Each clip (a continuous stretch, no scene cut) is edited three times with one prompt, seed and step
count through the engine's command line: per-frame PnP (no propagation), TokenFlow with fixed
keyframes, TokenFlow with keyframes re-drawn every step. The three edits are measured with
engine/quality/evaluate.py; the report is a JSON file, a chart of warp error per method and clip, and a
contact sheet of source and edits at a few frames.

    .venvs/engine/bin/python bench/quality.py                       # tiny random model: runs anywhere
    .venvs/engine/bin/python bench/quality.py --model ~/models/sd21 --frames 24 --size 512 --steps 50

With the default tiny random-weight model the edits are noise-like textures: the figures then show
how steady each method is, not how good the picture looks. Use a real model for docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # engine/ and tests/clips.py, when run as `python bench/quality.py`


@dataclass(frozen=True)
class Clip:
    name: str
    start: int
    end: int  # last frame of the continuous stretch (inclusive)
    source_prompt: str


# Stretches between scene cuts (found as jumps of the mean frame difference): cityCC0 jumps at 116,
# bikes cuts at 30, 76, 137, 187 and 242; bigbuckbunny is one shot.
CLIPS = {
    "cityCC0.mpg": Clip("cityCC0.mpg", 20, 115, "a city street at night"),
    "bigbuckbunny.mp4": Clip("bigbuckbunny.mp4", 0, 131, "a cartoon rabbit in a meadow"),
    "bikes.mp4": Clip("bikes.mp4", 80, 136, "people riding bicycles"),
}
METHODS = {
    "per-frame": ["--method", "per-frame"],
    "tokenflow-fixed": ["--method", "tokenflow", "--keyframe-mode", "fixed"],
    "tokenflow-resample": ["--method", "tokenflow", "--keyframe-mode", "resample"],
}
BASELINE = "per-frame"
RATIO_KEYS = ("warp_error", "motion_error", "flicker_excess")


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="", help="local diffusers model folder (default: a tiny random model)"
    )
    parser.add_argument(
        "--tiny-size",
        default="tiny",
        choices=("tiny", "mid"),
        help="width of the default random-weight model",
    )
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS), help="clips to edit")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--width", type=int, default=320, help="width the source frames are decoded at")
    parser.add_argument(
        "--size", type=int, default=256, help="engine working size (long side, multiple of 64)"
    )
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps (inversion and edit)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keyframe-stride", type=int, default=8, help="one keyframe per this many frames")
    parser.add_argument("--prompt", default="a watercolor painting")
    parser.add_argument("--source-prompt", default=None, help="inversion prompt (default: one per clip)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    parser.add_argument("--clip", default=None, help="local CLIP model folder for the prompt-fidelity score")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality"), help="results folder")
    parser.add_argument("--sheet-frames", type=int, default=4, help="frames per clip on the contact sheet")
    return parser


# --- running the engine ------------------------------------------------------------------------
def engine(*args: str, timeout: float | None = None) -> tuple[list[dict[str, Any]], float]:
    """Run `python -m engine ARGS`; its events and the wall time. Raises BenchError on failure."""
    from engine.protocol import parse_event

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )
    seconds = time.monotonic() - started
    events = [e for e in (parse_event(line) for line in result.stdout.splitlines()) if e]
    if result.returncode != 0:
        errors = [e["message"] for e in events if e["event"] == "error"]
        detail = errors[-1] if errors else (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"`python -m engine {args[0]}` failed (exit {result.returncode}): {detail}")
    return events, seconds


def tiny_model(folder: Path, size: str) -> Path:
    """The default model: the engine's random-weight SD layout, made once per results folder."""
    if not (folder / "model_index.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        engine("make-tiny-model", str(folder), "--size", size)
    return folder


def check_length(clip: Clip, count: int) -> None:
    """The frames asked for fit in the clip's continuous stretch (a scene cut would ruin the figures)."""
    if count < 2:
        raise BenchError(f"--frames is {count}; temporal figures need at least 2 frames")
    if count > clip.end - clip.start + 1:
        raise BenchError(
            f"--frames {count} is longer than {clip.name}'s continuous stretch "
            f"({clip.start}-{clip.end}, {clip.end - clip.start + 1} frames); ask for fewer"
        )


def extract(clip: Clip, folder: Path, count: int, width: int) -> Path:
    """`count` consecutive source frames of the clip's continuous stretch, as PNG files."""
    from tests.clips import extract_frames

    shutil.rmtree(folder, ignore_errors=True)
    extract_frames(clip.name, folder, count, start=clip.start, width=width)
    return folder


def edit(
    frames: Path, out: Path, method: str, model: Path | str, args: argparse.Namespace, source_prompt: str
):
    """One edit of a clip by one method; returns the engine's `done` event and the wall time."""
    shutil.rmtree(out, ignore_errors=True)  # the engine never overwrites; a re-run of the bench does
    out.parent.mkdir(parents=True, exist_ok=True)
    events, seconds = engine(
        "edit", "--frames", str(frames), "--prompt", args.prompt, "--out", str(out), "--model", str(model),
        "--source-prompt", source_prompt, "--steps", str(args.steps), "--seed", str(args.seed),
        "--size", str(args.size), "--keyframe-stride", str(args.keyframe_stride), "--device", args.device,
        "--cache-dir", str(Path(args.out) / "cache"), *METHODS[method],
    )  # fmt: skip
    done = [e for e in events if e["event"] == "done"]
    if not done:
        raise BenchError(f"the {method} edit of {frames} ended without a 'done' event")
    return done[-1], seconds


# --- the benchmark -------------------------------------------------------------------------------
def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from engine.quality.evaluate import evaluate_folders

    for name in args.clips:
        check_length(CLIPS[name], args.frames)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.model:
        model, label = Path(args.model), f"model: {Path(args.model).name}"
    else:
        model = tiny_model(out / f"{args.tiny_size}-model", args.tiny_size)
        label = f"{args.tiny_size} random-weight model (make-tiny-model --size {args.tiny_size})"
    report: dict[str, Any] = {
        "model": str(model),
        "model_label": label,
        "settings": {
            "prompt": args.prompt,
            "frames": args.frames,
            "width": args.width,
            "size": args.size,
            "steps": args.steps,
            "seed": args.seed,
            "keyframe_stride": args.keyframe_stride,
            "device": args.device,
        },
        "clips": {},
    }
    for name in args.clips:
        clip = CLIPS[name]
        frames = extract(clip, out / "frames" / Path(name).stem, args.frames, args.width)
        source_prompt = clip.source_prompt if args.source_prompt is None else args.source_prompt
        entry: dict[str, Any] = {"start": clip.start, "source_prompt": source_prompt, "methods": {}}
        for method in METHODS:
            edited = out / "edits" / Path(name).stem / method
            print(f"{name}: {method} ...", file=sys.stderr, flush=True)
            done, seconds = edit(frames, edited, method, model, args, source_prompt)
            measured = evaluate_folders(frames, edited, prompt=args.prompt, clip=args.clip)
            entry["methods"][method] = {
                "summary": measured["summary"],
                "summary_line": measured["summary_line"],
                "seconds": round(seconds, 2),
                "engine_seconds": done.get("seconds"),
                # the first method of a clip also pays the inversion; the others hit its cache
                "inversion_cache_misses": (done.get("stats") or {}).get("cache_misses"),
                "keyframes": done.get("keyframes"),
                "output": str(edited),
            }
        entry["ratios"] = ratios(entry["methods"])
        report["clips"][name] = entry
    report["mean_ratios"] = mean_ratios(report["clips"])
    return report


def ratios(methods: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each TokenFlow figure divided by per-frame editing's: below 1 means TokenFlow is steadier."""
    base = methods[BASELINE]["summary"]
    result: dict[str, dict[str, float | None]] = {}
    for method, entry in methods.items():
        if method == BASELINE:
            continue
        result[method] = {
            key: (
                entry["summary"][key] / base[key] if entry["summary"][key] is not None and base[key] else None
            )
            for key in RATIO_KEYS
        }
    return result


def mean_ratios(clips: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Geometric mean of the ratios over the clips (ratios multiply, so they average geometrically)."""
    result: dict[str, dict[str, float | None]] = {}
    for method in METHODS:
        if method == BASELINE:
            continue
        result[method] = {}
        for key in RATIO_KEYS:
            values = [c["ratios"][method][key] for c in clips.values() if c["ratios"][method][key]]
            result[method][key] = float(np.exp(np.mean(np.log(values)))) if values else None
    return result


# --- pictures ------------------------------------------------------------------------------------
def chart(report: dict[str, Any], path: Path) -> Path:
    """Grouped bars: warp error per clip and method, with the source's own figure as the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = list(report["clips"])
    x = np.arange(len(clips))
    width = 0.8 / len(METHODS)
    fig, ax = plt.subplots(figsize=(max(5.5, 2.4 + 2.2 * len(clips)), 4.6), dpi=100)
    for k, method in enumerate(METHODS):
        values = [report["clips"][c]["methods"][method]["summary"]["warp_error"] or 0.0 for c in clips]
        bars = ax.bar(x + (k - (len(METHODS) - 1) / 2) * width, values, width, label=method)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    floor = [report["clips"][c]["methods"][BASELINE]["summary"]["warp_error_source"] or 0.0 for c in clips]
    ax.hlines(floor, x - 0.45, x + 0.45, colors="black", linestyles="dashed", label="source (floor)")
    ax.set_xticks(x, clips)
    ax.set_ylabel("warp error (0-255, lower is steadier)")
    s = report["settings"]
    ax.set_title(
        f"{report['model_label']}\n{s['frames']} frames, size {s['size']}, {s['steps']} steps", fontsize=9
    )
    ax.set_ylim(0, 1.15 * max([*floor, *(p.get_height() for p in ax.patches)], default=1.0))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def contact_sheet(report: dict[str, Any], frames_root: Path, path: Path, count: int) -> Path:
    """Rows: source and each method, per clip; columns: a few frames spread over the shot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.quality.evaluate import image_size, list_frames, read_frames

    rows = [(clip, label) for clip in report["clips"] for label in ("source", *METHODS)]
    n = report["settings"]["frames"]
    picks = sorted({int(round(i)) for i in np.linspace(0, n - 1, min(count, n))})
    fig, axes = plt.subplots(
        len(rows), len(picks), figsize=(2.0 * len(picks), 1.4 * len(rows)), squeeze=False
    )
    for r, (clip, label) in enumerate(rows):
        if label == "source":
            folder = frames_root / Path(clip).stem
        else:
            folder = Path(report["clips"][clip]["methods"][label]["output"])
        files = list_frames(folder, "source" if label == "source" else "edited")
        chosen = [files[i] for i in picks]
        for c, image in enumerate(read_frames(chosen, image_size(chosen[0]))):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{Path(clip).stem}\n{label}", fontsize=7)
            if r == 0:
                ax.set_title(f"frame {picks[c]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_summary(report: dict[str, Any]) -> None:
    """Warp error per clip and method, and TokenFlow / per-frame ratios."""
    print(report["model_label"])
    for name, entry in report["clips"].items():
        methods = entry["methods"]
        floor = methods[BASELINE]["summary"]["warp_error_source"]
        parts = [f"{m} {methods[m]['summary']['warp_error']:.2f}" for m in METHODS]
        print(f"{name}: warp error {', '.join(parts)} (source {floor:.2f})")
        for method, r in entry["ratios"].items():
            print(f"  {method} / per-frame: " + ", ".join(f"{k} {_x(v)}" for k, v in r.items()))
    for method, r in report["mean_ratios"].items():
        print(
            f"all clips (geometric mean) {method} / per-frame: "
            + ", ".join(f"{k} {_x(v)}" for k, v in r.items())
        )


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        report = run_benchmark(args)
    except BenchError as exc:
        print(f"quality bench: error: {exc}", file=sys.stderr)
        return 2
    report["chart"] = str(chart(report, out / "warp_error.png"))
    report["contact_sheet"] = str(
        contact_sheet(report, out / "frames", out / "contact_sheet.png", args.sheet_frames)
    )
    (out / "quality.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    print_summary(report)
    print(
        f"report: {out / 'quality.json'}; chart: {report['chart']}; contact sheet: {report['contact_sheet']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
