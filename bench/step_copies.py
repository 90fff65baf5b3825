"""Copies and host syncs inside the edit's step loop, counted with torch.profiler on the CPU (by hand).

On CUDA every step should move only the chunk's latents between host and device: the latents in
(one copy per UNet call), the denoised latents out (one per chunk), and no `.item()`-style sync. On
the CPU the device copies themselves are no-ops, so this counts the operations that become host-
device traffic on a GPU: tensors made from Python data (`aten::lift_fresh`: Python lists used as
indices, timesteps given as ints), `.to()` / `.cpu()` conversions (`aten::_to_copy`), `copy_`, and
scalar reads (`aten::_local_scalar_dense`: a sync on CUDA). Each is attributed to the engine source
line that caused it, per denoising step of one TokenFlow propagate (inversion cached first).

    .venvs/engine/bin/python bench/step_copies.py [--steps 4] [--frames 8]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WATCHED = ("aten::lift_fresh", "aten::_to_copy", "aten::copy_", "aten::_local_scalar_dense")
# Indexing with Python lists: on CUDA the list becomes a host tensor copied to the device.
INDEXING = ("aten::index", "aten::index_put_")


class _Counter(TorchDispatchMode):
    """Counts the watched operators called from inside Editor._run, by the engine line that called
    them (the profiler's own stacks are empty for aten operators in this torch build)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[tuple[str, str]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = f"aten::{func.__name__.split('.')[0]}"
        if name in WATCHED or name in INDEXING:
            frames = traceback.extract_stack()
            if any(f.name == "_run" and f.filename.endswith("editing.py") for f in frames):
                here = next(
                    (
                        f
                        for f in reversed(frames)
                        if "/engine/" in f.filename and "site-packages" not in f.filename
                    ),
                    None,
                )
                where = f"{Path(here.filename).name}:{here.lineno} {here.name}" if here else "?"
                self.counts[(name, where)] += 1
        return func(*args, **(kwargs or {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "copies"))
    args = parser.parse_args(argv)

    from torch.profiler import ProfilerActivity, profile

    from engine import protocol
    from engine.model import devices, loading
    from engine.model.tiny_model import make_tiny_model
    from engine.run.events import CancelToken, Emitter
    from engine.run.execute import execute
    from tests.clips import extract_frames

    work = Path(tempfile.mkdtemp(prefix="step-copies-"))
    model = loading.load(str(make_tiny_model(work / "tiny")), devices.choose("cpu"))
    frames = [
        str(p) for p in extract_frames("cityCC0.mpg", work / "frames", args.frames, start=40, width=128)
    ]
    common = dict(
        frames=frames,
        prompt="a watercolor painting",
        source_prompt="a city street",
        model="tiny",
        cache_dir=str(work / "cache"),
        steps=args.steps,
        size=64,
        keyframe_stride=4,
        chunk_size=4,
    )
    execute(
        protocol.Job(output="", stage="invert", **common), Emitter(io.StringIO()), CancelToken(), model=model
    )
    job = protocol.Job(output=str(work / "out"), stage="propagate", **common)
    counter = _Counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof, counter:
        execute(job, Emitter(io.StringIO()), CancelToken(), model=model)
    totals = Counter(e.name for e in prof.events() if e.name in WATCHED)
    counts = counter.counts
    print(f"per denoising step of a TokenFlow propagate ({args.frames} frames, chunk 4, {args.steps} steps):")
    print(f"{'op':28s} {'per step':>9s}  engine line")
    rows = []
    for (name, frame), n in sorted(counts.items(), key=lambda kv: -kv[1]):
        rows.append({"op": name, "where": frame, "per_step": n / args.steps})
        print(f"{name:28s} {n / args.steps:9.1f}  {frame}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"step_copies-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"frames": args.frames, "steps": args.steps, "rows": rows}, indent=2))
    print("\nwhole run, profiler totals: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
