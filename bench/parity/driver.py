"""Runs the patched reference code in its own environment (diffusers 0.20, transformers 4.36).

Copied into the reference's scratch folder and started there by bench/reference_parity.py, once per
stage: `preprocess` (the reference's preprocess.py: VAE encoding, DDIM inversion, its reconstruction
pass) and `edit` (run_tokenflow_pnp.py). It calls the reference's own classes with the options its
command line would set, keeps what the comparison needs (the VAE latents, the edited latents and
frames as float tensors) and times each part (wall and CPU seconds). It never imports the engine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

TIMES: dict[str, dict[str, float]] = {}


def timed(cls: type, method: str, name: str) -> None:
    """Accumulate the wall and CPU seconds of `cls.method` under `name`."""
    original = getattr(cls, method)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            entry = TIMES.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] += time.perf_counter() - wall
            entry["cpu_s"] += time.process_time() - cpu

    setattr(cls, method, wrapper)


def time_the_unet() -> None:
    """The UNet's own share: its calls' wall and CPU seconds (how many cores the model's work uses)."""
    from diffusers import UNet2DConditionModel

    timed(UNet2DConditionModel, "forward", "unet calls")


def preprocess(args: argparse.Namespace, out: Path) -> None:
    import preprocess as P

    time_the_unet()
    P.device = "cpu"  # the module's global, set by its __main__ block
    timed(P.Preprocess, "__init__", "load + encode")
    timed(P.Preprocess, "ddim_inversion", "inversion")
    timed(P.Preprocess, "ddim_sample", "reconstruction")
    timed(P.Preprocess, "decode_latents", "decode")
    original_encode = P.Preprocess.encode_imgs

    def encode(self, imgs, *a, **kw):
        latents = original_encode(self, imgs, *a, **kw)
        torch.save(latents.clone(), out / "vae_latents.pt")  # before the inversion steps them in place
        return latents

    P.Preprocess.encode_imgs = encode
    opt = argparse.Namespace(
        data_path=args.frames,
        H=args.height,
        W=args.width,
        save_dir=str(Path(args.work) / "latents"),
        sd_version="2.1",
        steps=args.steps,
        batch_size=args.stride,  # its --batch_size: the UNet batches of the engine's chunks
        save_steps=args.save_steps,
        n_frames=args.n_frames,
        inversion_prompt=args.prompt,
    )
    P.prep(opt)


def edit(args: argparse.Namespace, out: Path) -> None:
    import run_tokenflow_pnp as R

    time_the_unet()
    config = {
        "seed": args.seed,
        "device": "cpu",
        "output_path": str(Path(args.work) / "edit"),
        "data_path": args.frames,
        "latents_path": str(Path(args.work) / "latents"),
        "n_inversion_steps": args.inversion_steps,
        "n_frames": args.n_frames,
        "sd_version": "2.1",
        "guidance_scale": args.guidance,
        "n_timesteps": args.steps,
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "batch_size": args.stride,
        "pnp_attn_t": args.pnp_attn_t,
        "pnp_f_t": args.pnp_f_t,
    }
    os.makedirs(config["output_path"], exist_ok=True)
    R.config = config  # the module reads its configuration as a global, set by its __main__ block
    timed(R.TokenFlow, "__init__", "load + encode")
    timed(R.TokenFlow, "sample_loop", "edit + decode")
    timed(R.TokenFlow, "decode_latents", "decode")
    decoded: list = []
    original_decode = R.TokenFlow.decode_latents

    def decode(self, latents, *a, **kw):
        decoded.append(latents.detach().clone())
        return original_decode(self, latents, *a, **kw)

    R.TokenFlow.decode_latents = decode
    kept: dict[str, torch.Tensor] = {}
    original_save = R.save_video

    def save_video(frames, path, *a, **kw):
        if "tokenflow_PnP_fps_10" in str(path):
            kept["frames"] = frames.detach().float().clone()
        return original_save(frames, path, *a, **kw)

    R.save_video = save_video
    R.run(config)
    torch.save(decoded[-1], out / "edited_latents.pt")  # the last decode is the edit's
    torch.save(kept["frames"], out / "edited_frames.pt")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("stage", choices=["preprocess", "edit"])
    p.add_argument("--work", required=True)
    p.add_argument("--frames", required=True)
    p.add_argument("--n-frames", type=int, required=True)
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--save-steps", type=int, default=0)
    p.add_argument("--inversion-steps", type=int, default=0)
    p.add_argument("--prompt", default="")
    p.add_argument("--negative", default="")
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--pnp-f-t", type=float, default=0.8)
    p.add_argument("--pnp-attn-t", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    out = Path(args.work) / "reference"
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, os.getcwd())  # the patched scripts and the torchvision stand-in
    (preprocess if args.stage == "preprocess" else edit)(args, out)
    (out / f"{args.stage}_times.json").write_text(json.dumps(TIMES, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
