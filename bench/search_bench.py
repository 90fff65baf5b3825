"""Speed of the nearest-neighbour search alone, and of the candidates issue 12 named for it.

Propagation searches, for every token of a frame, the most similar token of a keyframe. The engine's
exact search (engine/method/matching.nearest_tokens) is one matrix product per block of queries and an argmax.
This times it side by side with what might replace it, on the token shapes where the search is
largest (the top resolution level of a UNet):

- `window r`: only the keys within r tokens of the query's own position (motion between a frame and
  its keyframe is bounded): (2r+1)^2 keys per query instead of all, one pass per offset;
- `bf16`: the same full search in bfloat16 (the CPU's half precision: fp16 products are slower still);
- `dims N`: the full search in a random orthonormal projection to N dimensions (`--match-dims`).

Runs alternate, the fastest of `--repeat` counts; values do not change the speed, so tokens are random
unit vectors. How far each candidate's fields are from the exact ones is bench/match_agreement.py's
job (real features of the trained model). Prints a table and writes JSON.

    .venvs/engine/bin/python bench/search_bench.py [--repeat 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.method.matching import nearest_tokens, reduce, unit  # noqa: E402

# (name, token grid h x w, width): the top level of the mid model at 512x256 and of SD 1.5 / 2.1.
SHAPES = {
    "mid 512x256": ((32, 64), 64),
    "SD 1.5 512x384": ((48, 64), 320),
    "SD 512x512": ((64, 64), 320),
}


@torch.no_grad()
def window_nearest(
    queries: torch.Tensor, keys: torch.Tensor, grid: tuple[int, int], radius: int
) -> torch.Tensor:
    """The exact search restricted to keys within `radius` tokens (each axis) of the query's position.

    queries, keys: (h*w, D) unit tokens in row-major grid order -> (h*w,) key indices. One pass per
    offset: every query against the key shifted by that offset (a strided view of the padded grid, no
    copy), so the work is (2r+1)^2 * h*w * D multiply-adds with nothing gathered; positions outside the
    grid never win. (Gathering the windows with `F.unfold` instead measured 1.5-38x the full search.)
    """
    h, w = grid
    side = 2 * radius + 1
    q = queries.view(h, w, -1)
    padded = F.pad(keys.view(h, w, -1), (0, 0, radius, radius, radius, radius))
    inside = F.pad(torch.ones(h, w, dtype=torch.bool, device=keys.device), (radius,) * 4)
    sims = torch.empty(side * side, h, w, device=keys.device)
    for i in range(side * side):
        dy, dx = divmod(i, side)
        torch.linalg.vecdot(q, padded[dy : dy + h, dx : dx + w], out=sims[i])
        sims[i].masked_fill_(~inside[dy : dy + h, dx : dx + w], -math.inf)
    best = sims.argmax(dim=0).view(-1)  # the winning offset of each query
    position = torch.arange(h * w, device=keys.device)
    return (position // w + best // side - radius) * w + position % w + best % side - radius


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--radii", default="2,4,8", help="window radii in tokens of the top level")
    p.add_argument("--dims", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "search"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    radii = [int(r) for r in args.radii.split(",") if r.strip()]
    report: dict[str, dict[str, float]] = {}
    for name, (grid, width) in SHAPES.items():
        s = grid[0] * grid[1]
        q, k = unit(torch.randn(s, width)), unit(torch.randn(s, width))
        q16, k16 = q.bfloat16(), k.bfloat16()
        qd, kd = reduce(q, args.dims), reduce(k, args.dims)
        candidates: dict[str, Callable[[], object]] = {
            "exact": lambda q=q, k=k: nearest_tokens(q, k, normalized=True),
            "bf16": lambda q=q16, k=k16: nearest_tokens(q, k, normalized=True),
            f"dims {args.dims} (projected)": lambda q=qd, k=kd: nearest_tokens(q, k, normalized=True),
            **{f"window {r}": lambda q=q, k=k, grid=grid, r=r: window_nearest(q, k, grid, r) for r in radii},
        }
        times: dict[str, list[float]] = {c: [] for c in candidates}
        for _ in range(args.repeat):  # interleaved: a slow spell of the machine hits every candidate
            for c, fn in candidates.items():
                times[c].append(timed(fn))
        best = {c: min(v) for c, v in times.items()}
        report[name] = {"tokens": s, "width": width, **{f"{c} ms": 1000 * t for c, t in best.items()}}
        print(f"{name}: {s} tokens x {width}, one frame against one keyframe (fastest of {args.repeat})")
        for c, t in best.items():
            print(f"  {c:22s} {1000 * t:8.1f} ms   {t / best['exact']:5.2f}x exact")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_bench.json").write_text(json.dumps({"threads": args.threads, "shapes": report}, indent=1))
    print(f"wrote {out / 'search_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
