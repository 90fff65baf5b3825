"""How far each cheaper nearest-neighbour search (engine/method/matching.MatchOptions) is from the exact one.

bench/edit_bench.py judges the options by their edits; with models/microsd the edits barely depend on
propagation (bench/propagation_probe.py), so that judge cannot see much. This measures the fields
themselves, in one exact TokenFlow edit of held-out frames with the trained model: at every search it
also works out what each option would have used and reports, per option,

- agreement: the share of tokens whose nearest neighbour is the same token as the exact search's;
- similarity kept: the mean cosine similarity of each token to the keyframe token the option picks,
  over the same for the exact pick (1.0: as good a match; a different but equally similar token, as in
  flat regions, costs nothing here).

`level` uses the field of the first layer of the same resolution; `dims` searches a random orthonormal
projection; `reuse` compares each of the last steps' fields with the field of the step before them;
`window r` searches only the keys within r tokens of the query's position (r scaled down per level).
Prints the table and writes JSON.

    .venvs/engine/bin/python bench/match_agreement.py [--clip carphone_pristine.mp4] [--steps 25]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.search_bench import window_nearest  # noqa: E402
from engine.method import keyframes  # noqa: E402
from engine.method.attention import TokenFlowState  # noqa: E402
from engine.method.matching import MatchOptions, nearest_tokens, reduce  # noqa: E402


class Recording(TokenFlowState):
    """The exact search (scope ``layer``), which also scores what each option would have picked."""

    dims: int = 16
    reuse_steps: int = 5
    total_steps: int = 0
    top_grid: tuple[int, int] = (0, 0)  # the latent's token grid (h, w) at the first level
    radii: tuple[int, ...] = ()  # window radii in tokens of the first level

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_of_level: dict[tuple[int, int, int], torch.Tensor] = {}
        self.by_step: dict[tuple[str, int, int], dict[int, tuple[torch.Tensor, ...]]] = {}
        self.scores: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def begin_chunk(self, frames: list[int], plan: list[keyframes.FrameSource]) -> None:
        super().begin_chunk(frames, plan)
        self.first_of_level.clear()

    def nearest(self, scope, i, key, queries, key_tokens):  # type: ignore[no-untyped-def]
        idx = super().nearest(scope, i, key, queries, key_tokens)
        q, keys = queries(), key_tokens[key].to(queries().device)
        exact_sim = (q * keys[idx]).sum(-1)

        def score(option: str, picked: torch.Tensor) -> None:
            kept = float((q * keys[picked]).sum(-1).mean() / exact_sim.mean())
            self.scores[option].append((float((picked == idx).float().mean()), kept))

        frame, keyframe = self.chunk_frames[i], self.keyframe_frames[key]
        level = self.first_of_level.setdefault((q.shape[0], frame, keyframe), idx)
        score("level", level)
        d = min(self.dims, q.shape[-1] // 2)
        score(f"dims {self.dims}", nearest_tokens(reduce(q, d), reduce(keys, d), normalized=True))
        h, w = self.top_grid
        factor = round(math.sqrt(h * w / q.shape[0])) if q.shape[0] else 0
        if factor and (h // factor) * (w // factor) == q.shape[0]:  # the level's grid, row-major
            for r in self.radii:
                near = window_nearest(q, keys, (h // factor, w // factor), max(1, round(r / factor)))
                score(f"window {r}", near)
        if self.step >= self.total_steps - self.reuse_steps - 1:  # only what reuse_scores reads
            self.by_step.setdefault((str(scope), frame, keyframe), {})[self.step] = (idx, q, keys)
        return idx

    def reuse_scores(self, steps: int) -> None:
        """Each of the last `reuse_steps` steps against the field of the step before them."""
        first = steps - self.reuse_steps
        for fields in self.by_step.values():
            if first - 1 not in fields:
                continue
            old = fields[first - 1][0]
            for step in range(first, steps):
                if step in fields:
                    idx, q, keys = fields[step]
                    exact = (q * keys[idx]).sum(-1).mean()
                    kept = float((q * keys[old]).sum(-1).mean() / exact)
                    agree = float((old == idx).float().mean())
                    self.scores[f"reuse {self.reuse_steps}"].append((agree, kept))


def main() -> None:
    from bench.edit_bench import prepare, read
    from engine.method.editing import Editor, EditSettings, Prompts
    from engine.method.inversion import encode, invert
    from engine.model import devices
    from engine.model.loading import load
    from training.data import CLIPS
    from training.styles import STYLES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "microsd"))
    p.add_argument("--clip", default="carphone_pristine.mp4", choices=list(CLIPS))
    p.add_argument("--style", default="pencil", choices=list(STYLES))
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--dims", type=int, default=16)
    p.add_argument("--reuse", type=float, default=0.2, help="fraction of the last steps that reuse fields")
    p.add_argument("--radii", default="2,4,8", help="window radii, in tokens of the first level")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "match"))
    args = p.parse_args()
    torch.set_num_threads(1)

    out = Path(args.out)
    folder = prepare(args.clip, out, args.frames, args.size, [args.style])
    images = torch.from_numpy(np.stack(read(folder / "source"))).permute(0, 3, 1, 2) * 2 - 1
    model = load(args.model, devices.choose("cpu"))
    caption = CLIPS[args.clip].caption
    source_embeds = model.encode_prompt(caption)
    settings = EditSettings(steps=args.steps, keyframe_stride=args.stride, chunk_size=8)
    editor = Editor(
        model,
        settings,
        lambda t: latents[timesteps.index(int(t))],
        Prompts(
            source_embeds, model.encode_prompt(""), model.encode_prompt(STYLES[args.style].caption(caption))
        ),
    )
    with torch.no_grad():
        timesteps, latents = invert(model, encode(model, images), source_embeds, args.steps)
    state = Recording(match=MatchOptions("layer", 0.0, 0))  # the exact search, scored
    steps = len(editor.timesteps)
    state.dims, state.reuse_steps, state.total_steps = args.dims, int(steps * args.reuse), steps
    state.top_grid = (images.shape[2] // 8, images.shape[3] // 8)  # the VAE's 8x
    state.radii = tuple(int(r) for r in args.radii.split(",") if r.strip())
    editor.state = state
    editor.run(preview=False)
    state.reuse_scores(len(editor.timesteps))
    report: dict[str, Any] = {
        "model": args.model,
        "clip": args.clip,
        "frames": args.frames,
        "size": args.size,
        "steps": args.steps,
        "options": {},
    }
    shot = f"{args.frames} held-out frames, {args.size} px, {args.steps} steps, stride {args.stride}"
    print(f"{args.clip}: {shot}")
    print(f"{'option':12s} {'agreement':>10s} {'similarity kept':>16s} {'searches scored':>16s}")
    for option, values in state.scores.items():
        agree = float(np.mean([a for a, _ in values]))
        kept = float(np.mean([k for _, k in values]))
        report["options"][option] = {"agreement": agree, "similarity_kept": kept, "scored": len(values)}
        print(f"{option:12s} {agree:10.3f} {kept:16.4f} {len(values):16d}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "match_agreement.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'match_agreement.json'}")


if __name__ == "__main__":
    main()
