"""Preview Variations benchmark (run by hand): N variations in one engine run against N separate previews.

Both sides are engine processes as Blender starts them (`python -m engine run JOB.json`), from an empty
inversion cache each time, on the same real frames, model, steps and prompts:

- `one run`: one job with `variations` (one model load, one inversion of the keyframes, each prompt
  encoded once, the keyframe denoising per variation);
- `separate`: N preview jobs one after another (each loads the model; the first inverts, the others
  read the cache the first filled, as in Blender).

The two are interleaved (ABBA...) and the fastest of each is kept. Prints wall time and UNet frame
evaluations of both and their ratios; writes bench/results/variations/variations_bench.json.

    .venvs/engine/bin/python bench/variations_bench.py [--variations 4] [--model-size mid] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import protocol  # noqa: E402

PROMPTS = [
    "a watercolor painting of a city street",
    "a snowy street at night",
    "a street in autumn, oil painting",
    "a cyberpunk city at dusk",
    "a pencil sketch of a street",
    "a street flooded with water",
    "a street in the desert",
    "a street under cherry blossoms",
]


def run_engine(job: protocol.Job, folder: Path) -> dict:
    """One engine process; returns its `done` event (with the wall time as seen by the caller)."""
    path = folder / f"job-{time.monotonic_ns()}.json"
    path.write_text(job.to_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(path)], capture_output=True, text=True, cwd=ROOT, env=env
    )
    wall = time.perf_counter() - start
    events = [e for e in map(protocol.parse_event, done.stdout.splitlines()) if e]
    finished = [e for e in events if e["event"] == "done"]
    if done.returncode != 0 or not finished:
        raise SystemExit(f"the engine failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {**finished[0], "wall": wall}


def unet(stats: dict) -> int:
    return sum(
        stats.get(k, 0) for k in ("inversion_unet_frames", "keyframe_unet_frames", "propagate_unet_frames")
    )


def one_run(base: protocol.Job, prompts: list[str], work: Path) -> dict:
    job = protocol.Job(**{**base.to_dict(), "output": str(work / "out" / "one")})
    job.variations = [{"prompt": p} for p in prompts]
    done = run_engine(job, work)
    return {"seconds": done["wall"], "unet_frames": unet(done["stats"]), "engine_seconds": done["seconds"]}


def separate(base: protocol.Job, prompts: list[str], work: Path) -> dict:
    seconds = engine = 0.0
    frames = 0
    for i, prompt in enumerate(prompts):
        job = protocol.Job(**{**base.to_dict(), "output": str(work / "out" / f"sep-{i}"), "prompt": prompt})
        done = run_engine(job, work)
        seconds += done["wall"]
        engine += done["seconds"]
        frames += unet(done["stats"])
    return {"seconds": seconds, "unet_frames": frames, "engine_seconds": engine}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variations", type=int, default=4)
    parser.add_argument("--model-size", default="mid", choices=("tiny", "mid", "sd15"))
    parser.add_argument("--model", default="", help="a local model folder instead of a random-weight one")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "variations"))
    args = parser.parse_args()

    from engine.model.tiny_model import make_tiny_model
    from tests.clips import extract_frames

    work = Path(tempfile.mkdtemp(prefix="tf-variations-bench-"))
    try:
        model = args.model or str(make_tiny_model(work / "model", size=args.model_size))
        frames = extract_frames("cityCC0.mpg", work / "frames", args.frames, start=40, width=args.size)
        prompts = PROMPTS[: args.variations]
        base = protocol.Job(
            frames=[str(f) for f in frames],
            output="-",
            prompt=prompts[0],
            stage="preview",
            source_prompt="a city street",
            model=model,
            device="cpu",
            steps=args.steps,
            size=args.size,
            keyframe_stride=args.stride,
        )
        trials: dict[str, list[dict]] = {"one_run": [], "separate": []}
        order = []
        for r in range(args.rounds):
            order += ["one_run", "separate"] if r % 2 == 0 else ["separate", "one_run"]
        for name in order:
            trial = work / f"trial-{time.monotonic_ns()}"
            trial.mkdir()
            base.cache_dir = str(trial / "cache")  # an empty inversion cache for every trial
            result = (one_run if name == "one_run" else separate)(base, prompts, trial)
            trials[name].append(result)
            print(f"{name:9s} {result['seconds']:7.1f} s  {result['unet_frames']:5d} UNet frames", flush=True)
            shutil.rmtree(trial, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = {name: min(runs, key=lambda r: r["seconds"]) for name, runs in trials.items()}
    ratio_time = best["separate"]["seconds"] / best["one_run"]["seconds"]
    ratio_unet = best["separate"]["unet_frames"] / best["one_run"]["unet_frames"]
    print(
        f"\n{args.variations} variations, {args.frames} frames at {args.size}, {args.steps} steps, "
        f"stride {args.stride}, {args.model or args.model_size} model:"
    )
    print(f"  one run : {best['one_run']['seconds']:.1f} s, {best['one_run']['unet_frames']} UNet frames")
    print(f"  separate: {best['separate']['seconds']:.1f} s, {best['separate']['unet_frames']} UNet frames")
    print(f"  separate / one run: time {ratio_time:.2f}x, UNet frames {ratio_unet:.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": vars(args),
        "trials": trials,
        "best": best,
        "ratio_time_separate_over_one_run": round(ratio_time, 3),
        "ratio_unet_separate_over_one_run": round(ratio_unet, 3),
    }
    (out / "variations_bench.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'variations_bench.json'}")


if __name__ == "__main__":
    main()
