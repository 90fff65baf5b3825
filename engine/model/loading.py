"""Loading a Stable Diffusion 1.x / 2.x or SDXL model: a hub id, a diffusers folder or one .safetensors file.

The family is read from the model before its weights load (engine/model/family.py), which picks
diffusers' pipeline class. Only the components TokenFlow needs are kept (UNet, VAE, text encoder(s),
tokenizer(s), scheduler config); the pipeline object and its safety checker are not used, except
SDXL's for `encode_prompt` (its two encoders and pooled embedding, as diffusers computes them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from . import family as families
from .conditioning import TextConditioning, unet_kwargs
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
    family: families.Family = families.Family(families.SD1)
    # SDXL: the second text encoder and tokenizer, and the pipeline whose encode_prompt joins them
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    pipeline: Any = field(default=None, repr=False)

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

    def predict(self, latents: torch.Tensor, t: Any, text: TextConditioning) -> torch.Tensor:
        """The UNet's output (noise, or v for a v-prediction model) for latents (B, 4, h, w)."""
        return self.unet(latents, t, **unet_kwargs(text, latents, self.vae_factor)).sample

    @torch.no_grad()
    def encode_prompt(self, text: str, negative: bool = False) -> TextConditioning:
        """A prompt's conditioning (1, 77, dim) on the device in the UNet's dtype; for SDXL with its
        pooled embedding. `negative`: the prompt is the guidance's negative one (an empty one is zeros
        for SDXL models that say so, as diffusers' pipeline does)."""
        key = ("negative", text) if negative else text
        if self.prompt_cache is not None:
            cached = self.prompt_cache.get(key)
            if cached is not None:
                return cached
        made = self._encode_sdxl(text, negative) if self.pipeline is not None else self._encode_clip(text)
        if self.prompt_cache is not None:
            self.prompt_cache.put(key, made)
        return made

    def _encode_clip(self, text: str) -> TextConditioning:
        ids = self.tokenizer(
            text,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.placement.device)
        return TextConditioning(self.text_encoder(ids)[0].to(self.placement.dtype))

    def _encode_sdxl(self, text: str, negative: bool) -> TextConditioning:
        dtype = self.placement.dtype
        if negative and not text and self.pipeline.config.get("force_zeros_for_empty_prompt", False):
            tokens, _, pooled, _ = self.pipeline.encode_prompt(
                "", device=self.placement.device, do_classifier_free_guidance=False
            )
            return TextConditioning(
                torch.zeros_like(tokens, dtype=dtype), torch.zeros_like(pooled, dtype=dtype)
            )
        tokens, _, pooled, _ = self.pipeline.encode_prompt(
            text, device=self.placement.device, do_classifier_free_guidance=False
        )
        return TextConditioning(tokens.to(dtype), pooled.to(dtype))


def _how_to_provide(model: str) -> str:
    return (
        f"Provide model '{model}' in one of these ways: a local diffusers folder (model_index.json, unet/, "
        "vae/, text_encoder/, tokenizer/, scheduler/), a single-file checkpoint ending in .safetensors, or a "
        "hub id with network access once so that it is cached (HF_HOME sets the cache folder)."
    )


# what the engine loads (SDXL: the second encoder and tokenizer too)
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
NETWORKS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _configs(model: Model) -> dict[str, Any]:
    """The components' configs as loaded (a single file without --model-config infers them)."""
    found: dict[str, Any] = {"scheduler": model.scheduler_config}
    for name in NETWORKS:
        if getattr(model, name) is None:
            continue
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
    for name in NETWORKS:
        if getattr(model, name) is None:
            continue
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


def detect_family(model: str, model_config: str = "") -> families.Family | None:
    """The model's family (engine/model/family.py), a hub id's three config files fetched first when
    online, so that what the engine cannot edit is refused before any weight is downloaded."""
    if families.is_hub_id(model):
        _fetch_configs(model)
    return families.detect(model, model_config)


def _fetch_configs(model: str) -> None:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return
    from huggingface_hub import hf_hub_download

    for name in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        try:
            hf_hub_download(model, name)
        except Exception:  # noqa: BLE001, S112 - unreachable, or no such file: the load says what is missing
            continue


def pipeline_class(family: families.Family | None) -> Any:
    """diffusers' pipeline class for a family (unknown, a hub id not on this machine: SD's, whose load
    then says how to provide the model)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return (
        StableDiffusionXLPipeline
        if family is not None and family.name == families.SDXL
        else StableDiffusionPipeline
    )


def vae_dtype(placement: Placement, vae_config: Any) -> torch.dtype:
    """fp32 unless the VAE says it is safe in the UNet's dtype (`force_upcast` false, as the fp16-fixed
    SDXL VAE ships): SD's and SDXL's own VAEs overflow to NaN in fp16 (black frames)."""
    if placement.device.type == "cuda" and getattr(vae_config, "force_upcast", True) is False:
        return placement.dtype
    return placement.vae_dtype


def load(model: str, placement: Placement, model_config: str = "") -> Model:
    """Load the model's components onto the placement's device; raise ModelError with the fixes.

    What the engine cannot edit is refused from its configs or file header, before a weight loads."""
    path = Path(model).expanduser()
    found = detect_family(model, model_config)
    pipeline = pipeline_class(found)
    kwargs: dict[str, Any] = {"dtype": placement.dtype}
    if pipeline.__name__ == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
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
            pipe = pipeline.from_single_file(str(path), local_files_only=offline, **kwargs)
        elif path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelError(
                    f"{path} is a folder but not a diffusers model (no model_index.json). "
                    + _how_to_provide(model)
                )
            pipe = pipeline.from_pretrained(str(path), local_files_only=True, **kwargs)
        elif model.startswith(("/", ".", "~")) or os.sep in model.strip("/").replace("/", "", 1):
            raise ModelError(f"no model at {path}. " + _how_to_provide(model))
        else:
            pipe = pipeline.from_pretrained(model, local_files_only=offline, **kwargs)
    except ModelError:
        raise
    except Exception as exc:  # diffusers/hub raise OSError, ValueError, HTTP errors...
        text = str(exc).strip()
        if "cached" in text or "offline" in text.lower() or "connect" in text.lower():
            reason = "it is not cached on this machine and the model hub cannot be reached (offline)"
        else:
            reason = text.splitlines()[0] if text else type(exc).__name__
        raise ModelError(f"could not load model '{model}': {reason}. " + _how_to_provide(model)) from exc

    unet_config = dict(pipe.unet.config)
    loaded = families.from_configs(model, {}, unet_config, dict(pipe.scheduler.config))
    if found is not None and found.name != loaded.name:  # a header that lied about its contents
        raise ModelError(f"'{model}' looked like an {found.label} model but loads as an {loaded.label} one")
    device = placement.device
    placement = dataclasses.replace(placement, vae_dtype=vae_dtype(placement, pipe.vae.config))
    unet = prepare_unet(pipe.unet.to(device).eval(), placement)  # channels-last on CUDA
    text_encoder = pipe.text_encoder.to(device).eval()
    vae = pipe.vae.to(device, placement.vae_dtype).eval()
    tokenizer = pipe.tokenizer
    xl = loaded.name == families.SDXL
    text_encoder_2 = pipe.text_encoder_2.to(device).eval() if xl else None
    for tok in (tokenizer, pipe.tokenizer_2 if xl else None):
        if (
            tok is not None and tok.model_max_length > 1024
        ):  # bare vocab files: CLIP's length, or it overflows
            tok.model_max_length = 77
    try:
        files: list[tuple[str, Path]] | None = model_files(model, model_config)
    except Exception as exc:  # loaded but not found again (a hub layout we do not know): hash tensors
        log.warning("hashing the loaded weights of %s, not its files (%s)", model, exc)
        files = None
    return Model(
        unet,
        vae,
        text_encoder,
        tokenizer,
        dict(pipe.scheduler.config),
        placement,
        files,
        family=loaded,
        text_encoder_2=text_encoder_2,
        tokenizer_2=pipe.tokenizer_2 if xl else None,
        pipeline=pipe if xl else None,
    )
