"""Warm-engine benchmark (run by hand, not in CI): the tweak loop with a warm engine against a cold one.

What the artist waits for after a prompt tweak: from pressing Preview (or Propagate) to the
engine's last event. Cold: a one-shot `python -m engine run JOB` process (imports torch and
diffusers, loads the model, encodes the prompts, reads the cached inversions from disk). Warm: the
same job as a line to a `python -m engine serve` process that has already run one job on this
shot. Both read a warm inversion cache (the tweak loop's second Preview), on the same frames,
model and settings; each run has a new prompt (the tweak). The runs alternate `--repeat` times
and the fastest of each counts (noise only adds time). Printed side by side, written as JSON.

    .venvs/engine/bin/python bench/warm_bench.py                     # tiny model, 12 frames, 64 px
    .venvs/engine/bin/python bench/warm_bench.py --model PATH --size 512 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import protocol  # noqa: E402


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "OMP_WAIT_POLICY": "PASSIVE",
    }


def cold_run(job: dict, work: Path) -> float:
    """Seconds of a one-shot engine run of `job`, from process start to exit."""
    path = work / f"job-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(job))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    last = [e for e in (protocol.parse_event(line) for line in done.stdout.splitlines()) if e][-1:]
    if done.returncode != 0 or not last or last[0]["event"] != "done":
        raise SystemExit(f"cold run failed ({done.returncode}): {last}\n{done.stderr[-2000:]}")
    return seconds


class Warm:
    """A `python -m engine serve` child; `run(job)` times one job line to the next `ready`."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--idle-timeout", "0"],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.last: dict = {}
        self._until_ready()

    def _until_ready(self) -> list[dict]:
        assert self.proc.stdout is not None
        events = []
        for line in self.proc.stdout:
            event = protocol.parse_event(line)
            if event is None:
                continue
            events.append(event)
            if event["event"] == protocol.EVENT_READY:
                self.last = event
                return events
        raise SystemExit("the warm engine ended unexpectedly")

    def run(self, job: dict) -> float:
        assert self.proc.stdin is not None
        start = time.perf_counter()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        events = self._until_ready()
        seconds = time.perf_counter() - start
        if events[-2]["event"] != "done":
            raise SystemExit(f"warm run failed: {events[-2]}")
        return seconds

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="", help="a local model folder (default: build the tiny one)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "warm"))
    args = parser.parse_args()

    from engine.model.tiny_model import make_tiny_model
    from tests.clips import extract_frames

    work = Path(tempfile.mkdtemp(prefix="warm-bench-"))
    model = args.model or str(make_tiny_model(work / "model-tiny"))
    frames = [
        str(p) for p in extract_frames("cityCC0.mpg", work / "frames", args.frames, start=40, width=256)
    ]
    base = dict(
        frames=frames,
        source_prompt="a city street",
        model=model,
        device=args.device,
        cache_dir=str(work / "cache"),
        steps=args.steps,
        size=args.size,
        keyframe_stride=args.stride,
        chunk_size=8,
    )
    counter = iter(range(10**6))

    def job(stage: str) -> dict:
        n = next(counter)
        return {
            **base,
            "stage": stage,
            "prompt": f"a watercolor painting, take {n}",
            "output": str(work / f"o{n}"),
        }

    warm = Warm()
    try:
        warm.run(job("propagate"))  # the first job: loads the model, fills the inversion cache
        times: dict[str, dict[str, list[float]]] = {
            s: {"cold": [], "warm": []} for s in (protocol.STAGE_PREVIEW, protocol.STAGE_PROPAGATE)
        }
        for r in range(args.repeat):
            for stage in times:
                order = ("cold", "warm") if r % 2 == 0 else ("warm", "cold")
                for kind in order:
                    seconds = cold_run(job(stage), work) if kind == "cold" else warm.run(job(stage))
                    times[stage][kind].append(seconds)
                    print(f"  {stage:9s} {kind}: {seconds:6.2f} s", flush=True)
        loads = warm.last.get("loads")
    finally:
        warm.close()

    report = {
        "settings": {
            **{k: v for k, v in base.items() if k != "frames"},
            "frames": len(frames),
            "repeat": args.repeat,
        },
        "warm_engine_model_loads": loads,
        "stages": {},
    }
    print(
        f"\nwarm against cold engine, fastest of {args.repeat} ({len(frames)} frames, {args.size} px, "
        f"{args.steps} steps, model {Path(model).name}; the warm engine loaded the model {loads} time(s))"
    )
    print(
        f"{'second job after a prompt tweak':34s} {'cold s':>8s} {'warm s':>8s} "
        f"{'warm/cold':>10s} {'removed s':>10s}"
    )
    for stage, t in times.items():
        cold, hot = min(t["cold"]), min(t["warm"])
        report["stages"][stage] = {
            "cold_s": round(cold, 3),
            "warm_s": round(hot, 3),
            "ratio": round(hot / cold, 3),
            "fixed_cost_removed_s": round(cold - hot, 3),
            "all": t,
        }
        print(f"{stage:34s} {cold:8.2f} {hot:8.2f} {hot / cold:9.2f}x {cold - hot:10.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"warm_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
