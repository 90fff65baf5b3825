"""Loading a Stable Diffusion 1.x / 2.x model: a hub id, a local diffusers folder or one .safetensors file.

Only the components TokenFlow needs are kept (UNet, VAE, text encoder, tokenizer, scheduler config);
the pipeline object and its safety checker are not used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from .devices import Placement
from .fingerprint import DigestIndex, files_digest, folder_files
from .speedups import prepare_unet

log = logging.getLogger(__name__)


@dataclass
class Model:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]
    placement: Placement
    # (name, file) of every weight and config file the model was loaded from; None for a model built
    # in memory, whose identity then hashes every tensor it holds.
    files: list[tuple[str, Path]] | None = None
    _identity: str = field(default="", repr=False)

    def fingerprint(self, index: DigestIndex | None = None) -> str:
        """The weights' and configs' identity (part of the inversion cache key), computed once.

        `index` remembers file digests between runs (a 5 GB checkpoint is read once, not per run).
        """
        if not self._identity:
            self._identity = _identify(self, index or DigestIndex(None))
            log.debug("model fingerprint %s", self._identity[:16])
        return self._identity

    # The warm engine sets a bounded cache of text embeddings per prompt (engine/cache/memo.py); None: none.
    prompt_cache: Any = None

    @property
    def identity(self) -> str:
        return self.fingerprint()

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """CLIP text embeddings (1, 77, dim) for one prompt, on the device in the UNet's dtype."""
        if self.prompt_cache is not None:
            cached = self.prompt_cache.get(text)
            if cached is not None:
                return cached
        ids = self.tokenizer(
            text,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.placement.device)
        embeds = self.text_encoder(ids)[0].to(self.placement.dtype)
        if self.prompt_cache is not None:
            self.prompt_cache.put(text, embeds)
        return embeds


def _how_to_provide(model: str) -> str:
    return (
        f"Provide model '{model}' in one of these ways: a local diffusers folder (model_index.json, unet/, "
        "vae/, text_encoder/, tokenizer/, scheduler/), a single-file checkpoint ending in .safetensors, or a "
        "hub id with network access once so that it is cached (HF_HOME sets the cache folder)."
    )


COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")  # what the engine loads


def _configs(model: Model) -> dict[str, Any]:
    """The components' configs as loaded (a single file without --model-config infers them)."""
    found: dict[str, Any] = {"scheduler": model.scheduler_config}
    for name in ("unet", "vae", "text_encoder"):
        config = getattr(model, name).config
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        config.pop("_name_or_path", None)
        found[name] = config
    return found


def _identify(model: Model, index: DigestIndex) -> str:
    if model.files is not None:
        try:
            return files_digest(model.files, index, extra=_configs(model))
        except OSError as exc:  # a file gone or unreadable since the load: the tensors still say it all
            log.warning("hashing the loaded weights, not the model's files (%s)", exc)
    digest = hashlib.sha256(json.dumps(_configs(model), sort_keys=True, default=str).encode())
    for name in ("unet", "vae", "text_encoder"):
        for key, tensor in sorted(getattr(model, name).state_dict().items()):
            digest.update(f"{name}.{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def diffusers_files(folder: Path) -> list[tuple[str, Path]]:
    """model_index.json and every file of the components the engine loads (not the safety checker)."""
    files = [("model_index.json", folder / "model_index.json")]
    for component in COMPONENTS:
        if (folder / component).is_dir():
            files += folder_files(folder / component, prefix=f"{component}/")
    return files


def model_files(model: str, model_config: str = "", hub_cache: str | None = None) -> list[tuple[str, Path]]:
    """The files a model is read from: a .safetensors file (+ its config folder), a diffusers folder, or
    a hub id's local snapshot folder (resolved offline by huggingface_hub, as diffusers resolves it)."""
    path = Path(model).expanduser()
    if path.suffix == ".safetensors":
        configs = folder_files(Path(model_config).expanduser(), prefix="config/") if model_config else []
        return [("checkpoint.safetensors", path), *configs]
    if path.is_dir():
        return diffusers_files(path)
    from huggingface_hub import snapshot_download

    return diffusers_files(Path(snapshot_download(model, local_files_only=True, cache_dir=hub_cache)))


def load(model: str, placement: Placement, model_config: str = "") -> Model:
    """Load the model's components onto the placement's device; raise ModelError with the fixes."""
    from diffusers import StableDiffusionPipeline

    path = Path(model).expanduser()
    kwargs: dict[str, Any] = {
        "safety_checker": None,
        "requires_safety_checker": False,
        "dtype": placement.dtype,
    }
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        if path.suffix in (".safetensors", ".ckpt"):
            if not path.is_file():
                raise ModelError(f"the checkpoint file {path} does not exist. " + _how_to_provide(model))
            if path.suffix == ".ckpt":
                raise ModelError(
                    f"{path.name} is a pickle checkpoint (.ckpt), which can run code when loaded; "
                    "convert it to .safetensors or use a diffusers folder"
                )
            if model_config:
                kwargs["config"] = model_config
            pipe = StableDiffusionPipeline.from_single_file(str(path), local_files_only=offline, **kwargs)
        elif path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelError(
                    f"{path} is a folder but not a diffusers model (no model_index.json). "
                    + _how_to_provide(model)
                )
            pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, **kwargs)
        elif model.startswith(("/", ".", "~")) or os.sep in model.strip("/").replace("/", "", 1):
            raise ModelError(f"no model at {path}. " + _how_to_provide(model))
        else:
            pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=offline, **kwargs)
    except ModelError:
        raise
    except Exception as exc:  # diffusers/hub raise OSError, ValueError, HTTP errors...
        text = str(exc).strip()
        if "cached" in text or "offline" in text.lower() or "connect" in text.lower():
            reason = "it is not cached on this machine and the model hub cannot be reached (offline)"
        else:
            reason = text.splitlines()[0] if text else type(exc).__name__
        raise ModelError(f"could not load model '{model}': {reason}. " + _how_to_provide(model)) from exc

    device = placement.device
    unet = prepare_unet(pipe.unet.to(device).eval(), placement)  # channels-last on CUDA
    text_encoder = pipe.text_encoder.to(device).eval()
    vae = pipe.vae.to(device, placement.vae_dtype).eval()
    tokenizer = pipe.tokenizer
    if tokenizer.model_max_length > 1024:  # bare vocab files: CLIP's length, or the pipeline overflows
        tokenizer.model_max_length = 77
    try:
        files: list[tuple[str, Path]] | None = model_files(model, model_config)
    except Exception as exc:  # loaded but not found again (a hub layout we do not know): hash tensors
        log.warning("hashing the loaded weights of %s, not its files (%s)", model, exc)
        files = None
    return Model(unet, vae, text_encoder, tokenizer, dict(pipe.scheduler.config), placement, files)
