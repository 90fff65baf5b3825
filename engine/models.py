"""Loading a Stable Diffusion 1.x / 2.x model: a hub id, a local diffusers folder or one .safetensors file.

Only the components TokenFlow needs are kept (UNet, VAE, text encoder, tokenizer, scheduler config);
the pipeline object and its safety checker are not used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .devices import Placement
from .errors import ModelError
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
    identity: str  # a fingerprint of the weights and configs: part of the inversion cache key
    # The warm engine sets a bounded cache of text embeddings per prompt (engine/memo.py); None: none.
    prompt_cache: Any = None

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


def _fingerprint(unet: Any, vae: Any, text_encoder: Any, source: str) -> str:
    """Hash configs and a few weight tensors: two models saved at one path still differ."""
    digest = hashlib.sha256()
    for component in (unet, vae, text_encoder):
        config = component.config
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        config.pop("_name_or_path", None)
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    tensors = (
        unet.conv_in.weight,
        unet.conv_out.weight,
        vae.encoder.conv_in.weight,
        text_encoder.get_input_embeddings().weight[:64],
    )
    for tensor in tensors:
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    log.debug("model %s fingerprint %s", source, digest.hexdigest()[:16])
    return digest.hexdigest()


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
    identity = _fingerprint(unet, vae, text_encoder, model)
    tokenizer = pipe.tokenizer
    if tokenizer.model_max_length > 1024:  # bare vocab files: CLIP's length, or the pipeline overflows
        tokenizer.model_max_length = 77
    return Model(unet, vae, text_encoder, tokenizer, dict(pipe.scheduler.config), placement, identity)
