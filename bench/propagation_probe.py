"""Why is TokenFlow no steadier than per-frame PnP on a model? Two measurements, via the engine's run path.

1. How much of the UNet's noise prediction comes from self-attention at all: the relative change of
   epsilon when every self-attention (attn1) output, or every cross-attention (attn2) output, is zeroed.
2. How much propagation changes what it replaces: the self-attention outputs of the non-keyframes
   (prompt copy) in a TokenFlow run against the same layer, step and frame in a per-frame run, and the
   mean difference of the two edits' frames.

When both are small, per-frame editing leaves no flicker for TokenFlow to remove (compare the warp
errors of bench/edit_bench.py). Used for the figures in docs/quality.md on models/microsd:

    .venvs/engine/bin/python bench/propagation_probe.py --model models/microsd
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LAYERS = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn1",
)


class Zero:
    """An attention processor whose output is zero: the layer's contribution removed."""

    def __call__(
        self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None, *a: Any, **k: Any
    ):
        return torch.zeros(*hidden_states.shape[:2], attn.to_out[0].out_features)


@torch.no_grad()
def attention_share(model: Any, latents: torch.Tensor, embeds: torch.Tensor) -> dict[int, dict[str, float]]:
    """Relative change of epsilon with all attn1 (or attn2) outputs zeroed, at three noise levels."""
    from diffusers import DDIMScheduler
    from diffusers.models.attention_processor import AttnProcessor2_0

    alphas = DDIMScheduler.from_config(model.scheduler_config).alphas_cumprod
    original = dict(model.unet.attn_processors)
    generator = torch.Generator().manual_seed(0)
    result: dict[int, dict[str, float]] = {}
    for t in (900, 500, 200):
        noise = torch.randn(latents.shape, generator=generator)
        noisy = alphas[t].sqrt() * latents + (1 - alphas[t]).sqrt() * noise
        base = model.unet(noisy, t, embeds).sample
        result[t] = {}
        for which in ("attn1", "attn2"):
            model.unet.set_attn_processor(
                {n: Zero() if n.endswith(which + ".processor") else AttnProcessor2_0() for n in original}
            )
            eps = model.unet(noisy, t, embeds).sample
            result[t][which] = float((eps - base).norm() / base.norm())
        model.unet.set_attn_processor(dict(original))  # diffusers empties the dict it is given
    return result


def main(argv: list[str] | None = None) -> int:
    import bench.edit_bench as eb
    from engine.method.inversion import encode
    from training.data import CLIPS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "microsd"))
    p.add_argument("--clip", default="carphone_pristine.mp4", choices=list(CLIPS))
    p.add_argument("--style", default="watercolor")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--keyframe-stride", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from training.styles import STYLES

    work = Path(tempfile.mkdtemp(prefix="propagation-probe-"))
    engine = eb.Engine(args.model)
    folder = eb.prepare(args.clip, work, args.frames, 256, list(STYLES))
    source = eb.read(folder / "source")
    caption = CLIPS[args.clip].caption
    frames = torch.from_numpy(np.stack(source)).permute(0, 3, 1, 2) * 2 - 1
    latents = encode(engine.model, frames)
    embeds = engine.model.encode_prompt(caption).expand(latents.shape[0], -1, -1)
    share = attention_share(engine.model, latents, embeds)
    for t, figures in share.items():
        print(
            f"t={t}: epsilon changes by {figures['attn1']:.1%} without self-attention, "
            f"{figures['attn2']:.1%} without cross-attention"
        )

    n = len(source)
    kept: dict[str, dict[str, list[torch.Tensor]]] = {}
    images = {}
    for method in ("per-frame", "tokenflow"):
        store: dict[str, list[torch.Tensor]] = {layer: [] for layer in LAYERS}

        def hook(module: Any, inputs: Any, output: torch.Tensor, layer: str, store=store) -> None:
            if output.shape[0] == 3 * n:  # the calls that carry every frame (not the keyframe passes)
                store[layer].append(output[2 * n :].clone())  # the prompt copy

        handles = [
            engine.model.unet.get_submodule(layer).register_forward_hook(
                lambda m, i, o, layer=layer: hook(m, i, o, layer)
            )
            for layer in LAYERS
        ]
        out = eb.fresh(work / "edits" / method)
        done = engine.run(
            folder / "source",
            out,
            work / "cache",
            prompt=STYLES[args.style].caption(caption),
            source_prompt=caption,
            negative_prompt="",
            steps=args.steps,
            size=256,
            method=method,
            keyframe_stride=args.keyframe_stride,
            chunk_size=n,
        )
        for handle in handles:
            handle.remove()
        kept[method] = store
        images[method] = eb.read(out)
        if method == "tokenflow":
            keys = set(done.get("keyframes") or [])
    others = [i for i in range(n) if i not in keys]
    for layer in LAYERS:
        a, b = kept["per-frame"][layer], kept["tokenflow"][layer]
        rel = [
            float(np.mean([float((a[s][i] - b[s][i]).norm() / a[s][i].norm()) for i in others]))
            for s in range(len(a))
        ]
        print(
            f"{layer.split('.transformer')[0]}: propagated self-attention outputs differ from per-frame's by "
            f"{np.mean(rel):.1%} on average over steps (max {np.max(rel):.1%})"
        )
    diff = np.mean(
        [np.abs(x - y).mean() for x, y in zip(images["per-frame"], images["tokenflow"], strict=True)]
    )
    print(f"the two edits differ by {diff * 255:.2f} of 255 on average (non-keyframes {sorted(others)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
