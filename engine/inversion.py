"""DDIM inversion of each frame, cached on disk per frame in safetensors (never pickle).

Each frame is inverted on its own (no frame depends on another), so the cache is per frame:
an edit with a new prompt inverts nothing, a changed frame re-inverts only itself, and farm chunks
invert only the frames they touch. Only the latents at the timesteps the edit visits are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMInverseScheduler
from safetensors.torch import load_file, save_file

from .models import Model

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


@dataclass(frozen=True)
class InversionSettings:
    """Everything besides the frame's bytes that changes an inversion: the cache key."""

    model_identity: str
    dtype: str
    width: int
    height: int
    steps: int
    prompt: str
    scheduler: str  # the noise schedule (betas, offset, spacing, prediction type) as JSON

    def key(self) -> str:
        text = json.dumps({"format": CACHE_FORMAT, **self.__dict__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def schedule_fingerprint(config: dict) -> str:
    keys = (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "steps_offset",
        "timestep_spacing",
        "prediction_type",
        "set_alpha_to_one",
        "trained_betas",
    )
    return json.dumps({k: config.get(k) for k in keys}, sort_keys=True, default=str)


class InversionCache:
    """A folder of `<settings key>/<frame sha256>.safetensors` files holding (T, 4, h, w) latents."""

    def __init__(self, root: str | os.PathLike[str] | None, memory: Any = None) -> None:
        self.root = Path(root) if root else None
        # The warm engine's bounded in-memory copy (engine/memo.Bounded): a cached inversion is read once.
        self.memory = memory

    def _path(self, settings: InversionSettings, digest: str) -> Path | None:
        return self.root / settings.key() / f"{digest}.safetensors" if self.root else None

    def get(self, settings: InversionSettings, digest: str, timesteps: Sequence[int]) -> torch.Tensor | None:
        if self.memory is not None:
            kept = self.memory.get((settings.key(), digest, tuple(timesteps)))
            if kept is not None:
                return kept
        latents = self._read(settings, digest, timesteps)
        if latents is not None and self.memory is not None:
            self.memory.put((settings.key(), digest, tuple(timesteps)), latents)
        return latents

    def _read(
        self, settings: InversionSettings, digest: str, timesteps: Sequence[int]
    ) -> torch.Tensor | None:
        path = self._path(settings, digest)
        if path is None or not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            stored = tensors["timesteps"].tolist()
            latents = tensors["latents"]
        except Exception as exc:  # a torn or foreign file: recompute rather than fail the job
            log.warning("ignoring unreadable cache file %s: %s", path, exc)
            return None
        if stored != list(timesteps):
            return None
        return latents

    def put(
        self, settings: InversionSettings, digest: str, timesteps: Sequence[int], latents: torch.Tensor
    ) -> None:
        if self.memory is not None:
            self.memory.put((settings.key(), digest, tuple(timesteps)), latents)
        path = self._path(settings, digest)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file(
                {"latents": latents.contiguous().cpu(), "timesteps": torch.tensor(list(timesteps))},
                tmp,
                metadata={"settings": json.dumps(settings.__dict__)},
            )
            os.replace(tmp, path)  # atomic: concurrent farm chunks never see half a file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@torch.no_grad()
def encode(model: Model, images: torch.Tensor) -> torch.Tensor:
    """VAE posterior mean, scaled: (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) float32."""
    dist = model.vae.encode(images.to(model.placement.device, model.placement.vae_dtype)).latent_dist
    return (dist.mean * model.latent_scale).float()


@torch.no_grad()
def invert(
    model: Model,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    steps: int,
    on_call: Callable[[], None] | None = None,
) -> tuple[list[int], torch.Tensor]:
    """DDIM-invert clean latents (B, 4, h, w) with the source prompt (no guidance).

    Returns the ascending timesteps and the latents after each step, (T, B, 4, h, w) on the CPU:
    entry i is the noisy latent the edit starts its step at timestep[i] from.
    """
    scheduler = DDIMInverseScheduler.from_config(model.scheduler_config, clip_sample=False)
    scheduler.set_timesteps(steps)
    device, dtype = model.placement.device, model.placement.dtype
    x = latents.to(device, torch.float32)
    embeds = prompt_embeds.expand(x.shape[0], -1, -1)
    kept = []
    for t in scheduler.timesteps:
        if on_call:
            on_call()
        eps = model.unet(x.to(dtype), t, encoder_hidden_states=embeds).sample.float()
        x = scheduler.step(eps, t, x).prev_sample
        kept.append(x.cpu())
    return [int(t) for t in scheduler.timesteps], torch.stack(kept)
