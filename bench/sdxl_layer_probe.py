"""Which SDXL decoder layers get PnP injection: the evidence behind attention.SDXL_QK_LAYERS / _CONV_LAYERS.

The reference injects into SD's decoder: the residual of up_blocks.1.resnets.1 (the first level with
attention, latent/4) and self-attention queries/keys of up_blocks.1.attentions.1-2, 2.* and 3.* (every
decoder attention block after the first). SDXL's decoder has one level fewer with attention (latent/4,
latent/2; the full-size level has none), so the mapping is not unique. This probe measures, on real
frames (cityCC0, CC0):

1. Layout: how much each decoder layer's features carry the source's spatial layout: the correlation
   between the token-to-token cosine similarity of its features (the source's inverted latent at a mid
   timestep) and that of the source image itself at the same grid.
2. What each candidate injection does to an edit: PSNR of the edit to the source (structure kept), and
   PSNR between the edits of two prompts (lower: the prompt still decides more), with no injection as the
   floor, for each candidate set, beside the reference's own set on the tiny SD model (calibration).

Random weights (the tiny SDXL and SD models of engine/model/tiny_model.py, or `--model` folders):
the figures say how strongly each set binds an edit to the source, not how a picture looks.

    .venvs/engine/bin/python bench/sdxl_layer_probe.py [--frames 8] [--steps 10] [--out bench/results]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (query/key blocks, residual ResNets); "" keeps the family default out of the job
SDXL_CANDIDATES = {
    "none": ("", ""),
    "by resolution (chosen)": (
        "up_blocks.0.attentions.1,up_blocks.0.attentions.2,up_blocks.1.attentions.0,"
        "up_blocks.1.attentions.1,up_blocks.1.attentions.2",
        "up_blocks.0.resnets.1",
    ),
    "all decoder attention": (
        "up_blocks.0.attentions.0,up_blocks.0.attentions.1,up_blocks.0.attentions.2,"
        "up_blocks.1.attentions.0,up_blocks.1.attentions.1,up_blocks.1.attentions.2",
        "up_blocks.0.resnets.1",
    ),
    "finest level only": (
        "up_blocks.1.attentions.0,up_blocks.1.attentions.1,up_blocks.1.attentions.2",
        "up_blocks.1.resnets.1",
    ),
    "coarse level only": ("up_blocks.0.attentions.1,up_blocks.0.attentions.2", "up_blocks.0.resnets.1"),
}
SD_CANDIDATES = {
    "none": ("", ""),
    "reference": (None, None),  # the family default: the reference's layers
}


def psnr(a, b) -> float:  # noqa: ANN001
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def layout_scores(model, frames: list[Path], size: int) -> dict[str, float]:  # noqa: ANN001
    """Per decoder layer: correlation of its features' token similarity with the image's own."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from engine.images import frames as framing
    from engine.method.inversion import encode, invert

    image = np.asarray(Image.open(frames[0]).convert("RGB"), dtype=np.float32) / 255.0
    geometry = framing.geometry(image.shape[1], image.shape[0], size)
    work = framing.to_working(image, geometry)
    x = torch.from_numpy(work).permute(2, 0, 1)[None].contiguous() * 2 - 1
    latents = encode(model, x)
    text = model.encode_prompt("")
    timesteps, noisy = invert(model, latents, text, 10)
    t = timesteps[len(timesteps) // 2]
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(model.unet.up_blocks):
        for j, resnet in enumerate(block.resnets):
            name = f"up_blocks.{i}.resnets.{j}"
            hooks.append(resnet.register_forward_hook(lambda m, a, o, n=name: captured.__setitem__(n, o)))
        for j, attention in enumerate(getattr(block, "attentions", []) or []):
            name = f"up_blocks.{i}.attentions.{j}"
            first = attention.transformer_blocks[0].attn1

            def keep(m, args, kwargs, n=name):  # noqa: ANN001, ANN202
                hidden = args[0] if args else kwargs["hidden_states"]
                captured[n + " (q)"] = m.to_q(hidden)
                captured[n + " (k)"] = m.to_k(hidden)

            hooks.append(first.register_forward_pre_hook(keep, with_kwargs=True))
    try:
        with torch.no_grad():
            model.predict(noisy[len(timesteps) // 2], t, text)
    finally:
        for h in hooks:
            h.remove()
    scores = {}
    picture = torch.from_numpy(work).permute(2, 0, 1)[None]
    for name, feats in captured.items():
        if feats.ndim == 4:
            grid = feats.shape[-2:]
            tokens = feats[0].flatten(1).T
        else:
            h = int(round((feats.shape[1] * geometry.padded[1] / geometry.padded[0]) ** 0.5))
            grid = (h, feats.shape[1] // h)
            tokens = feats[0]
        pixels = F.adaptive_avg_pool2d(picture, grid)[0].flatten(1).T
        a = F.normalize(tokens.float(), dim=1)
        b = F.normalize(pixels - pixels.mean(0), dim=1)
        sim_f, sim_p = (a @ a.T).flatten(), (b @ b.T).flatten()
        scores[name] = float(torch.corrcoef(torch.stack([sim_f, sim_p]))[0, 1])
    return scores


def edit(model, frames, out: Path, prompt: str, qk, conv, steps: int, size: int) -> list:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    from engine import protocol
    from engine.run.events import CancelToken, Emitter
    from engine.run.execute import execute

    fields = dict(
        frames=[str(f) for f in frames],
        output=str(out),
        prompt=prompt,
        source_prompt="a city street at night",
        model="in-process",
        steps=steps,
        size=size,
        keyframe_stride=4,
        cache_dir=str(out.parent / "cache"),
        device="cpu",
        stage="propagate",
    )
    if qk is not None:
        fields.update(pnp_qk_layers=qk, pnp_conv_layers=conv)
        if not qk and not conv:
            fields.update(pnp_f_t=0.0, pnp_attn_t=0.0)
    job = protocol.Job(**fields)
    stream = io.StringIO()
    code = execute(job, Emitter(stream), CancelToken(), model=model)
    if code:
        raise RuntimeError(stream.getvalue()[-2000:])
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(out.glob("*.png"))]


def probe(label: str, model, candidates: dict, frames, work: Path, args) -> dict:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    sources = [np.asarray(Image.open(f).convert("RGB")) for f in frames]
    rows = {}
    for name, (qk, conv) in candidates.items():
        started = time.monotonic()
        slug = f"{label}-{len(rows)}"
        a = edit(model, frames, work / f"{slug}-a", "a watercolor painting", qk, conv, args.steps, args.size)
        b = edit(model, frames, work / f"{slug}-b", "a pencil sketch", qk, conv, args.steps, args.size)
        rows[name] = {
            "to_source_db": round(float(np.mean([psnr(x, s) for x, s in zip(a, sources, strict=True)])), 2),
            "between_prompts_db": round(float(np.mean([psnr(x, y) for x, y in zip(a, b, strict=True)])), 2),
            "seconds": round(time.monotonic() - started, 1),
        }
        print(
            f"{label:5s} {name:26s} to source {rows[name]['to_source_db']:6.2f} dB, "
            f"between prompts {rows[name]['between_prompts_db']:6.2f} dB",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default="", help="an SDXL diffusers folder (default: the tiny SDXL)")
    parser.add_argument("--sd-model", default="", help="an SD 1.x/2.x folder for calibration (default: tiny)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    from engine.model import devices, loading
    from engine.model.tiny_model import make_tiny_model
    from tests.clips import extract_frames

    with tempfile.TemporaryDirectory(prefix="sdxl-probe-") as scratch:
        work = Path(scratch)
        frames = extract_frames("cityCC0.mpg", work / "frames", args.frames, start=40, width=128)
        placement = devices.choose("cpu")
        xl = loading.load(args.model or str(make_tiny_model(work / "xl", family="sdxl")), placement)
        sd = loading.load(args.sd_model or str(make_tiny_model(work / "sd")), placement)
        layout = layout_scores(xl, frames, args.size)
        print("layout carried by SDXL decoder features (correlation with the image's own similarity):")
        for name, score in layout.items():
            print(f"  {name:34s} {score:6.3f}")
        sd_layout = layout_scores(sd, frames, args.size)
        results = {
            "setting": f"{args.frames} cityCC0 frames, size {args.size}, {args.steps} steps, random weights",
            "sdxl_layout": layout,
            "sd_layout": sd_layout,
            "sdxl": probe("sdxl", xl, SDXL_CANDIDATES, frames, work, args),
            "sd": probe("sd", sd, SD_CANDIDATES, frames, work, args),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sdxl_layer_probe.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'sdxl_layer_probe.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
