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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMInverseScheduler
from safetensors import safe_open
from safetensors.torch import save

from ..cache.atomic_write import write_atomic
from ..model.conditioning import TextConditioning
from ..model.finite import require_finite
from ..model.loading import Model
from . import schedulers

log = logging.getLogger(__name__)
CACHE_FORMAT = 2  # 2: entries carry a checksum of their latents (format-1 entries are not read)
ENTRY_KEYS = {"latents", "timesteps"}


@dataclass(frozen=True)
class InversionSettings:
    """Everything besides the frame's bytes that changes an inversion: the cache key."""

    model_identity: str
    dtype: str
    width: int
    height: int
    steps: int  # of the inversion
    prompt: str
    scheduler: str  # the noise schedule (betas, offset, spacing, prediction type) as JSON
    # The edit's step count when it has fewer steps than the inversion: the entry keeps the latents at
    # the edit's timesteps only. 0: the same count (and the key is what it was before this field).
    edit_steps: int = 0

    def key(self) -> str:
        items = {k: v for k, v in self.__dict__.items() if k != "edit_steps" or v}
        text = json.dumps({"format": CACHE_FORMAT, **items}, sort_keys=True)
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
    found = {k: config.get(k) for k in keys}
    if config.get("prediction_type") == "v_prediction":  # entries made before as_noise are not reused
        found["v_inversion"] = "noise at the UNet's timestep"
    return json.dumps(found, sort_keys=True, default=str)


def as_noise(prediction: str, output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The UNet's output as noise, read at the timestep the UNet was told (a v-prediction model's
    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 gives eps = sqrt(abar_t) v + sqrt(1 - abar_t) x).

    DDIM inversion evaluates the UNet at timestep t on a latent of the level below; diffusers'
    inverse scheduler reads v with the latent's level, which is not what the UNet meant: on a v twin
    of an epsilon model (same predictions, reparameterised) its inversion is 19-83% off the epsilon
    one, and the tiny v model reconstructs 6.6x worse (tests/engine/test_families.py, docs/engine.md)."""
    if prediction != "v_prediction":
        return output
    abar = abar.to(output.device, output.dtype)
    return abar.sqrt() * output + (1 - abar).sqrt() * x


def checksum(latents: torch.Tensor) -> str:
    """sha256 of the tensor's bytes: catches data damaged behind an intact safetensors header."""
    return hashlib.sha256(latents.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


class BadEntry(Exception):
    """A cache entry that must not be used: the reason says which check failed."""


class InversionCache:
    """A folder of `<settings key>/<frame sha256>.safetensors` files holding (T, 4, h, w) latents.

    Entries are checked on every read (keys, timesteps, shape, dtype, finite values, checksum); a bad
    entry is deleted and recomputed with a warning. A failed write (read-only or full disk) warns once
    and the run carries on without caching: the cache saves time, it must never cost the edit.
    """

    def __init__(self, root: str | os.PathLike[str] | None, memory: Any = None) -> None:
        self.root = Path(root) if root else None
        self.rejected = 0  # entries found bad, deleted and recomputed
        self.writes_failed = 0  # entries not written (after the first failure, none is tried)
        self.write_error = ""
        # The warm engine's bounded in-memory copy (engine/memo.Bounded): a cached inversion is read once.
        self.memory = memory

    def _path(self, settings: InversionSettings, digest: str) -> Path | None:
        return self.root / settings.key() / f"{digest}.safetensors" if self.root else None

    def get(
        self, settings: InversionSettings, digest: str, timesteps: Sequence[int], shape: Sequence[int]
    ) -> torch.Tensor | None:
        """The entry's latents if it is present and sound, else None (a bad entry is deleted)."""
        key = (settings.key(), digest, tuple(timesteps))
        if self.memory is not None:
            kept = self.memory.get(key)
            if kept is not None:
                return kept
        latents = self._read(settings, digest, timesteps, shape)
        if latents is not None and self.memory is not None:
            self.memory.put(key, latents)
        return latents

    def _read(
        self, settings: InversionSettings, digest: str, timesteps: Sequence[int], shape: Sequence[int]
    ) -> torch.Tensor | None:
        path = self._path(settings, digest)
        if path is None or not path.is_file():
            return None
        try:
            return _read_entry(path, list(timesteps), tuple(shape))
        except BadEntry as exc:
            reason = str(exc)
        except Exception as exc:  # torn, truncated, empty or foreign: safetensors raises several types
            reason = f"unreadable ({type(exc).__name__}: {exc})"
        self.rejected += 1
        log.warning("inversion cache entry %s is bad (%s); it is deleted and recomputed", path, reason)
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not delete the bad cache entry %s: %s", path, exc)
        return None

    def put(
        self, settings: InversionSettings, digest: str, timesteps: Sequence[int], latents: torch.Tensor
    ) -> None:
        if self.memory is not None:
            self.memory.put((settings.key(), digest, tuple(timesteps)), latents)
        path = self._path(settings, digest)
        if path is None:
            return
        if self.write_error:
            self.writes_failed += 1
            return
        latents = latents.detach().to("cpu", torch.float32).contiguous()
        if not bool(torch.isfinite(latents).all()):  # never reached: the inversion stops first
            raise ValueError("refusing to cache non-finite latents")
        data = save(
            {"latents": latents, "timesteps": torch.tensor(list(timesteps))},
            metadata={"settings": json.dumps(settings.__dict__), "checksum": checksum(latents)},
        )
        try:
            write_atomic(path, data)  # concurrent farm chunks never see half a file
        except OSError as exc:
            self.writes_failed += 1
            self.write_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "cannot write to the inversion cache %s (%s); carrying on without caching, so a re-edit "
                "will invert again. Free space or choose a writable cache folder.",
                self.root,
                self.write_error,
            )


def _read_entry(path: Path, timesteps: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Load one entry and check it; raise BadEntry naming the first check that fails."""
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if keys != ENTRY_KEYS:
            raise BadEntry(f"tensors {sorted(keys)}, expected {sorted(ENTRY_KEYS)}")
        stored_sum = (f.metadata() or {}).get("checksum")
        stored = f.get_tensor("timesteps").tolist()
        latents = f.get_tensor("latents")
    if stored != timesteps:
        raise BadEntry(f"timesteps {stored[:3]}..., expected {timesteps[:3]}...")
    if latents.dtype != torch.float32:
        raise BadEntry(f"dtype {latents.dtype}, expected torch.float32")
    if tuple(latents.shape) != shape:
        raise BadEntry(f"shape {tuple(latents.shape)}, expected {shape}")
    if not bool(torch.isfinite(latents).all()):
        raise BadEntry("non-finite values (NaN or infinity)")
    if stored_sum != checksum(latents):
        raise BadEntry("checksum mismatch: the data was damaged after it was written")
    return latents


@torch.no_grad()
def encode(model: Model, images: torch.Tensor) -> torch.Tensor:
    """VAE posterior mean, scaled: (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) float32."""
    dist = model.vae.encode(images.to(model.placement.device, model.placement.vae_dtype)).latent_dist
    latents = (dist.mean * model.latent_scale).float()
    require_finite(latents, "the VAE encoder (reading the source frames)", model.placement.vae_dtype)
    return latents


def _inverse_scheduler(model: Model, steps: int) -> DDIMInverseScheduler:
    """DDIM's inverse, reading the UNet's output as noise (see as_noise)."""
    scheduler = schedulers.ddim(
        DDIMInverseScheduler, model.scheduler_config, prediction_type="epsilon", clip_sample=False
    )
    scheduler.set_timesteps(steps)
    return scheduler


def inversion_timesteps(model: Model, steps: int) -> list[int]:
    """The ascending timesteps of a `steps`-step inversion (no UNet call): the edit's must be among them."""
    return [int(t) for t in _inverse_scheduler(model, steps).timesteps]


@torch.no_grad()
def invert(
    model: Model,
    latents: torch.Tensor,
    prompt_embeds: TextConditioning,
    steps: int,
    on_call: Callable[[], None] | None = None,
    keep: Sequence[int] | None = None,
) -> tuple[list[int], torch.Tensor]:
    """DDIM-invert clean latents (B, 4, h, w) with the source prompt (no guidance).

    Returns the ascending timesteps and the latents after each step, (T, B, 4, h, w) on the CPU:
    entry i is the noisy latent the edit starts its step at timestep[i] from. With `keep`, only the
    steps ending at those timesteps are returned (a finer inversion for a coarser edit).
    """
    scheduler = _inverse_scheduler(model, steps)
    prediction = str(model.scheduler_config.get("prediction_type", "epsilon"))
    device, dtype = model.placement.device, model.placement.dtype
    x = latents.to(device, torch.float32)
    embeds = prompt_embeds.expand(x.shape[0])
    wanted = None if keep is None else {int(t) for t in keep}
    timesteps, kept = [], []
    for t in scheduler.timesteps:
        if on_call:
            on_call()
        output = model.predict(x.to(dtype), t, embeds).float()
        eps = as_noise(prediction, output, x, scheduler.alphas_cumprod[int(t)])
        x = scheduler.step(eps, t, x).prev_sample
        require_finite(x, f"the UNet during the inversion (timestep {int(t)})", dtype)
        if wanted is None or int(t) in wanted:
            timesteps.append(int(t))
            kept.append(x.cpu())
    return timesteps, torch.stack(kept)
