"""How OpenMP's wait policy changes an edit on the CPU, alone and beside a busy process.

Between two parallel regions, torch's OpenMP worker threads either spin (`OMP_WAIT_POLICY=ACTIVE`),
sleep at once (`PASSIVE`), or spin a while and then sleep (unset: libgomp's own default, or a
`GOMP_SPINCOUNT`). A diffusion UNet on the CPU is thousands of small kernels one after the other, so
a sleeping pool wakes up for every one of them; a spinning pool takes a core from anything else that
runs. This runs the same edit (`python -m engine run`, the tiny random model, 8 frames of bikes.mp4 at
256x192, 50 steps, stride 4; inversion cached first) under each policy, alone and beside a
single-threaded busy process (what Blender's UI thread, or a second job's Python, asks of a core),
in alternation, and prints wall time, CPU time, cores used and each policy's wall time against
PASSIVE's. JSON into bench/results/omp_wait/.

    .venvs/engine/bin/python bench/omp_wait_bench.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# name -> environment; "" for OMP_WAIT_POLICY leaves libgomp its own default (spin, then sleep)
POLICIES: dict[str, dict[str, str]] = {
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "default": {"OMP_WAIT_POLICY": ""},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    # spin this many times, then sleep (libgomp); its default is 300000, 1000 when threads outnumber cores
    "spin 1k": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "1000"},
    "spin 10k": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
    "spin 30k": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "30000"},
}
BUSY = "while True: pass"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=2, help="runs per policy and condition (the fastest counts)")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "omp_wait"))
    return p


def prepare(work: Path, steps: int) -> dict[str, Any]:
    """A tiny model, 8 real frames and a job whose inversion is already cached."""
    from bench.reference_parity import prepare_frames
    from engine import protocol
    from engine.model.tiny_model import make_tiny_model

    frames_args = argparse.Namespace(frames="", n_frames=8, size=256, height=0, clip="bikes.mp4", start=40)
    frames = prepare_frames(frames_args, work / "frames")
    model = make_tiny_model(work / "model", size="tiny", seed=11)
    job = protocol.Job(
        frames=[str(p) for p in frames],
        output="",
        prompt="a watercolor painting",
        model=str(model),
        device="cpu",
        cache_dir=str(work / "cache"),
        steps=steps,
        size=256,
        keyframe_stride=4,
        chunk_size=4,
        stage="invert",
    )
    path = work / "invert.json"
    path.write_text(job.to_json())
    command = [sys.executable, "-m", "engine", "run", str(path)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return job.to_dict()


def run_once(job: dict[str, Any], work: Path, name: str, env: dict[str, str], busy: bool) -> dict[str, float]:
    out = work / f"out-{name}-{'busy' if busy else 'alone'}-{time.monotonic_ns()}"
    path = work / f"{out.name}.json"
    path.write_text(json.dumps({**job, "stage": "propagate", "output": str(out)}))
    competitor = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run", str(path)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    finally:
        if competitor:
            competitor.kill()
            competitor.wait()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the engine failed under {name} (busy={busy})")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cores": round(cpu / wall, 2)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    work = out / "work"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    job = prepare(work, args.steps)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for _ in range(args.repeat):  # policies alternate, so a slow minute hits all of them alike
        for busy in (False, True):
            for name in args.policies:
                env = POLICIES[name]
                entry = runs.setdefault(name, {}).setdefault("busy" if busy else "alone", [])
                entry.append(run_once(job, work, name, env, busy))
    best = {n: {c: min(r, key=lambda x: x["wall_s"]) for c, r in conds.items()} for n, conds in runs.items()}
    base = best.get("PASSIVE")
    print(f"{'policy':10} {'condition':9} {'wall s':>7} {'CPU s':>7} {'cores':>6} {'vs PASSIVE':>10}")
    for name, conds in best.items():
        for cond, r in conds.items():
            ratio = f"{r['wall_s'] / base[cond]['wall_s']:9.2f}x" if base else ""
            print(f"{name:10} {cond:9} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} {r['cores']:6.2f} {ratio}")
    report = {"best": best, "runs": runs, "cpus": os.cpu_count()}
    (out / "omp_wait.json").write_text(json.dumps(report, indent=1))
    print(f"results: {out / 'omp_wait.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
