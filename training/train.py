"""One command that trains the micro SD and writes it as a diffusers folder the engine loads:

    .venvs/engine/bin/python -m training.train --out models/microsd [--minutes 70] [--resume]

Phase 1 trains the VAE to reconstruct frames; phase 2 encodes every training image once with the frozen
VAE, then trains the text encoder and UNet jointly on those latents (cheap epochs). A checkpoint
(weights, optimizer, EMA, step, RNG state) is written every few minutes and the run stops at the
wall-clock budget; `--resume` continues from it.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .components import Sizes, count, make_scheduler, make_text_encoder, make_unet, make_vae
from .data import Sample, captions, training_samples
from .tokenizer import load_tokenizer


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def eta(done: int, total: int, seconds_per_step: float) -> str:
    return f"{(total - done) * seconds_per_step / 60:.1f} min"


def progress(phase: str, done: int, total: int, t0: float, s0: int, what: str) -> None:
    """Every tenth step: the phase's step, `what` (its losses), the pace and the time left."""
    if done % 10 == 0:
        sps = (time.time() - t0) / (done - s0)
        log(f"{phase} step {done}/{total} {what}  {sps:.2f} s/step  eta {eta(done, total, sps)}")


class Trainer:
    """Holds the state that the checkpoint saves; each phase is resumable at any step."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = Sizes()
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.ckpt = Path(args.checkpoint)
        self.started = time.time()
        self.used_before = 0.0  # wall seconds of earlier sessions (from the checkpoint)
        torch.manual_seed(args.seed)
        self.tokenizer = load_tokenizer(self.work / "tokenizer")
        self.vae = make_vae(self.sizes)
        self.unet = make_unet(self.sizes)
        self.text = make_text_encoder(self.sizes, self.tokenizer)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
        params = list(self.unet.parameters()) + list(self.text.parameters())
        self.opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        self.ema = [p.detach().clone() for p in params]
        self.state: dict[str, Any] = {"phase": "vae", "step": 0, "losses": {}, "scaling_factor": None}
        self.rng = np.random.default_rng(args.seed)
        self.last_save = time.time()

    # -- bookkeeping ---------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.used_before + time.time() - self.started

    def out_of_time(self) -> bool:
        return time.time() - self.started > self.args.minutes * 60

    def save(self) -> None:
        self.state["wall_seconds"] = self.elapsed()
        blob = {
            "state": self.state,
            "vae": self.vae.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "unet": self.unet.state_dict(),
            "text": self.text.state_dict(),
            "opt": self.opt.state_dict(),
            "ema": self.ema,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": self.rng.bit_generator.state,
                "python": random.getstate(),
            },
        }
        self.ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(self.ckpt)  # replaced, never accumulated
        self.last_save = time.time()
        log(f"checkpoint {self.ckpt} ({self.state['phase']} step {self.state['step']})")

    def maybe_save(self) -> None:
        if time.time() - self.last_save > self.args.checkpoint_minutes * 60:
            self.save()

    def load(self) -> None:
        blob = torch.load(self.ckpt, weights_only=False)
        self.state = blob["state"]
        self.vae.load_state_dict(blob["vae"])
        self.vae_opt.load_state_dict(blob["vae_opt"])
        self.unet.load_state_dict(blob["unet"])
        self.text.load_state_dict(blob["text"])
        self.opt.load_state_dict(blob["opt"])
        self.ema = blob["ema"]
        torch.set_rng_state(blob["rng"]["torch"])
        self.rng.bit_generator.state = blob["rng"]["numpy"]
        random.setstate(blob["rng"]["python"])
        self.used_before = float(self.state.get("wall_seconds", 0.0))
        log(
            f"resumed from {self.ckpt}: {self.state['phase']} step {self.state['step']}, "
            f"{self.used_before / 60:.1f} min used before"
        )

    # -- data ------------------------------------------------------------------------------------------
    def samples(self) -> list[Sample]:
        path = self.work / "samples.pt"
        if path.is_file():
            return torch.load(path, weights_only=False)
        log("extracting frames and styles from the four clips")
        samples = training_samples()
        torch.save(samples, path)
        log(f"{len(samples)} training images")
        return samples

    @staticmethod
    def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def random_crops(self, samples: list[Sample], batch: int, size: int) -> torch.Tensor:
        crops = []
        for i in self.rng.integers(0, len(samples), batch):
            image = samples[int(i)].image
            h, w = image.shape[:2]
            y = int(self.rng.integers(0, h - size + 1))
            x = int(self.rng.integers(0, w - size + 1))
            crop = image[y : y + size, x : x + size]
            crops.append(crop[:, ::-1] if self.rng.random() < 0.5 else crop)
        return self.to_tensor([np.ascontiguousarray(c) for c in crops])

    # -- phase 1: VAE ----------------------------------------------------------------------------------
    def train_vae(self, samples: list[Sample]) -> None:
        a = self.args
        self.vae.train()
        t0, s0 = time.time(), self.state["step"]
        while self.state["step"] < a.vae_steps and not self.out_of_time():
            step = self.state["step"]
            lr = a.vae_lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / a.vae_steps))
            for group in self.vae_opt.param_groups:
                group["lr"] = lr
            x = self.random_crops(samples, a.vae_batch, a.vae_crop)
            posterior = self.vae.encode(x).latent_dist
            y = self.vae.decode(posterior.sample()).sample
            rec = F.l1_loss(y, x) + F.mse_loss(y, x)
            loss = rec + a.kl_weight * posterior.kl().mean()
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
            self.vae_opt.step()
            mse = F.mse_loss(y.detach().clamp(-1, 1), x).item() / 4  # in [0, 1] units
            self.state["losses"]["vae"] = float(loss.item())
            self.state["losses"]["vae_psnr"] = float(10 * math.log10(1 / max(mse, 1e-10)))
            self.state["step"] = step + 1
            progress(
                "vae",
                step + 1,
                a.vae_steps,
                t0,
                s0,
                f"loss {loss.item():.4f} psnr {self.state['losses']['vae_psnr']:.2f} dB",
            )
            self.maybe_save()
        if self.state["step"] >= a.vae_steps:
            self.state.update(phase="latents", step=0)
            self.save()

    # -- latents of every training image with the frozen VAE ---------------------------------------------
    @torch.no_grad()
    def encode_all(self, samples: list[Sample]) -> dict[str, Any]:
        path = self.work / "latents.pt"
        if path.is_file() and self.state["phase"] == "unet":
            data = torch.load(path, weights_only=False)
            if data.get("vae_fingerprint") == self.vae_fingerprint():
                return data
        log("encoding every training image with the trained VAE")
        self.vae.eval()
        means: list[torch.Tensor] = [torch.empty(0)] * len(samples)
        stds: list[torch.Tensor] = [torch.empty(0)] * len(samples)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, sample in enumerate(samples):
            by_shape.setdefault(sample.image.shape, []).append(i)
        done = 0
        for indices in by_shape.values():
            for start in range(0, len(indices), 16):
                chunk = indices[start : start + 16]
                dist = self.vae.encode(self.to_tensor([samples[i].image for i in chunk])).latent_dist
                for j, i in enumerate(chunk):
                    means[i], stds[i] = dist.mean[j].clone(), dist.std[j].clone()
                done += len(chunk)
                if done % 512 < 16:
                    log(f"encoded {done}/{len(samples)}")
        std = float(torch.cat([m.flatten() for m in means]).std())
        self.state["scaling_factor"] = 1.0 / std
        self.vae.register_to_config(scaling_factor=1.0 / std)
        names = sorted(set(captions()))
        data = {
            "means": means,
            "stds": stds,
            "captions": [names.index(s.caption) for s in samples],
            "names": names,
            "vae_fingerprint": self.vae_fingerprint(),
        }
        torch.save(data, path)
        log(f"latent std {std:.4f}: scaling_factor {1 / std:.4f}")
        if self.state["phase"] == "latents":  # a resumed UNet phase keeps its step
            self.state.update(phase="unet", step=0)
            self.save()
        return data

    def vae_fingerprint(self) -> float:
        return float(sum(p.double().sum() for p in self.vae.parameters()))

    # -- phase 2: text encoder + UNet --------------------------------------------------------------------
    def latent_batch(self, data: dict[str, Any], batch: int, size: int) -> tuple[torch.Tensor, list[int]]:
        out, caps = [], []
        scale = self.state["scaling_factor"]
        for i in self.rng.integers(0, len(data["means"]), batch):
            mean, std = data["means"][int(i)], data["stds"][int(i)]
            _, h, w = mean.shape
            y = int(self.rng.integers(0, h - size + 1))
            x = int(self.rng.integers(0, w - size + 1))
            z = mean[:, y : y + size, x : x + size] + std[:, y : y + size, x : x + size] * torch.randn(
                4, size, size
            )
            out.append(z.flip(-1) if self.rng.random() < 0.5 else z)
            caps.append(int(data["captions"][int(i)]))
        return torch.stack(out) * scale, caps

    def train_unet(self, data: dict[str, Any]) -> None:
        a = self.args
        sched = make_scheduler()
        alphas = sched.alphas_cumprod
        names = ["", *data["names"]]  # index 0: the empty prompt (caption dropout, the negative prompt)
        ids = self.tokenizer(
            names, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        params = list(self.unet.parameters()) + list(self.text.parameters())
        self.unet.train()
        self.text.train()
        t0, s0 = time.time(), self.state["step"]
        while self.state["step"] < a.unet_steps and not self.out_of_time():
            step = self.state["step"]
            lr = a.lr * min(1.0, (step + 1) / 100) * (0.55 + 0.45 * math.cos(math.pi * step / a.unet_steps))
            for group in self.opt.param_groups:
                group["lr"] = lr
            z0, caps = self.latent_batch(data, a.batch, a.latent_crop)
            caps = [0 if self.rng.random() < a.uncond else c + 1 for c in caps]
            used = sorted(set(caps))
            emb = self.text(ids[used])[0]
            emb = emb[[used.index(c) for c in caps]]
            t = torch.randint(0, 1000, (len(caps),))
            noise = torch.randn_like(z0)
            ab = alphas[t].view(-1, 1, 1, 1)
            zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
            pred = self.unet(zt, t, emb).sample
            snr = alphas[t] / (1 - alphas[t])
            weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 weighting for epsilon prediction
            loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
            weighted = (loss * weight).mean()
            self.opt.zero_grad(set_to_none=True)
            weighted.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.opt.step()
            decay = min(a.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in params], 1 - decay)
            prev = self.state["losses"].get("unet_avg", float(loss.mean()))
            self.state["losses"]["unet_avg"] = 0.98 * prev + 0.02 * float(loss.mean())
            self.state["step"] = step + 1
            progress(
                "unet",
                step + 1,
                a.unet_steps,
                t0,
                s0,
                f"loss {float(loss.mean()):.4f} (avg {self.state['losses']['unet_avg']:.4f})",
            )
            self.maybe_save()
        if self.state["step"] >= a.unet_steps:
            self.state["phase"] = "done"

    def init_from(self, folder: Path) -> None:
        """Continue from a committed model folder when no checkpoint survived (a checkpoint with the
        optimizer is ~100 MB, too big to commit): weights from the folder's EMA, a fresh optimizer."""
        import json

        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        self.vae.load_state_dict(AutoencoderKL.from_pretrained(folder / "vae").state_dict())
        self.unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder / "unet").state_dict())
        self.text.load_state_dict(CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict())
        info = json.loads((folder / "training.json").read_text())
        params = list(self.unet.parameters()) + list(self.text.parameters())
        self.ema = [p.detach().clone() for p in params]
        self.used_before = float(info["wall_seconds"])
        self.args.vae_steps = int(info["args"]["vae_steps"])  # the VAE is the folder's, not retrained
        self.state.update(
            phase="unet",
            step=int(info["unet_steps"]),
            losses=info["losses"],
            scaling_factor=info["scaling_factor"],
        )
        log(f"initialised from {folder}: UNet step {self.state['step']}, fresh optimizer")

    # -- the diffusers folder ------------------------------------------------------------------------------
    def export(self, out: Path) -> None:
        """Write a complete SD folder with the EMA weights of the UNet and text encoder."""
        from diffusers import StableDiffusionPipeline

        unet, text = make_unet(self.sizes), make_text_encoder(self.sizes, self.tokenizer)
        unet.load_state_dict(self.unet.state_dict())
        text.load_state_dict(self.text.state_dict())
        with torch.no_grad():
            for p, e in zip(list(unet.parameters()) + list(text.parameters()), self.ema, strict=True):
                p.copy_(e)
        if self.state["scaling_factor"]:
            self.vae.register_to_config(scaling_factor=self.state["scaling_factor"])
        pipe = StableDiffusionPipeline(
            vae=self.vae.eval(),
            text_encoder=text.eval(),
            tokenizer=self.tokenizer,
            unet=unet.eval(),
            scheduler=make_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(out, safe_serialization=True)
        info = {
            "phase": self.state["phase"],
            "unet_steps": self.state["step"] if self.state["phase"] != "vae" else 0,
            "args": {k: v for k, v in vars(self.args).items()},
            "losses": self.state["losses"],
            "wall_seconds": self.elapsed(),
            "scaling_factor": self.state["scaling_factor"],
            "parameters": {"unet": count(unet), "text_encoder": count(text), "vae": count(self.vae)},
        }
        self.state.setdefault("history", {})
        (out / "training.json").write_text(__import__("json").dumps(info, indent=1, default=str))
        log(f"wrote {out}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="models/microsd")
    p.add_argument("--work", default="training/work", help="frame/latent caches (git-ignored)")
    p.add_argument("--checkpoint", default="models/microsd-checkpoint/state.pt")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init-from", default="", help="continue from a model folder (no checkpoint at hand)")
    p.add_argument("--minutes", type=float, default=70.0, help="wall-clock budget of this run")
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    p.add_argument("--vae-steps", type=int, default=450)
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-crop", type=int, default=64)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--unet-steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--latent-crop", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--uncond", type=float, default=0.1, help="caption dropout to the empty prompt")
    p.add_argument("--ema", type=float, default=0.995)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    trainer = Trainer(args)
    if args.resume and trainer.ckpt.is_file():
        trainer.load()
    elif args.init_from:
        trainer.init_from(Path(args.init_from))
    if trainer.state["phase"] == "done" and trainer.state["step"] < args.unet_steps:
        # more training asked for: continue the UNet phase (the cosine schedule stretches to the new end)
        trainer.state["phase"] = "unet"
    log(
        f"parameters: unet {count(trainer.unet):,}, text encoder {count(trainer.text):,}, "
        f"vae {count(trainer.vae):,}"
    )
    samples = trainer.samples()
    if trainer.state["phase"] == "vae":
        trainer.train_vae(samples)
    if trainer.state["phase"] in ("latents", "unet") and not trainer.out_of_time():
        data = trainer.encode_all(samples)
        trainer.train_unet(data)
    trainer.save()
    trainer.export(Path(args.out))
    log(f"phase {trainer.state['phase']}, {trainer.elapsed() / 60:.1f} min of training wall time in total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
