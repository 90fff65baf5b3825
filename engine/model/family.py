"""Which kind of model a path or hub id holds, read from its configs or its file's key names only.

Detection runs before any weight is loaded, so a model the engine cannot edit (SD3, Flux, a video
model, an inpainting UNet, the SDXL refiner alone) is refused by name in a fraction of a second,
never with an internal error half-way through a load. The family is read from the model (its
`model_index.json` and `unet/config.json`, or a single file's tensor names and shapes from the
safetensors header), never guessed from a name.

Standard library only: Blender's panel reads a model's family with it (a safetensors header is an
8-byte length and JSON; a hub id's configs are read from the hub cache's folders; the engine fetches
them first when online: engine/model/loading.py).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError

SD1, SD2, SDXL = "sd1", "sd2", "sdxl"
LABELS = {SD1: "SD 1.x", SD2: "SD 2.x", SDXL: "SDXL"}
ACCEPTED = (
    "the engine edits UNet Stable Diffusion models with 4 latent channels: SD 1.x, SD 2.x (epsilon or "
    "v-prediction) and SDXL base and its fine-tunes, as a diffusers folder, a hub id or one .safetensors file"
)


@dataclass(frozen=True)
class Family:
    """What the engine needs to know of a model before loading it."""

    name: str  # SD1, SD2 or SDXL
    sample_size: int = 0  # the UNet's latent size (SDXL 128, SD 2.x 768: 96); 0 when unknown
    prediction: str = ""  # the scheduler's prediction type when known ("epsilon", "v_prediction")

    @property
    def label(self) -> str:
        return LABELS[self.name]

    @property
    def native_size(self) -> int:
        """The working size the model was trained at (long side, pixels): 8x the UNet's sample size."""
        if self.sample_size:
            return int(self.sample_size) * 8
        return 1024 if self.name == SDXL else 512

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.name,
            "label": self.label,
            "native_size": self.native_size,
            "prediction": self.prediction,
        }


def refuse(model: str, what: str) -> ModelError:
    return ModelError(f"'{model}' is {what}, which TokenFlow cannot edit: {ACCEPTED}")


# What a diffusers folder's pipeline class says, for the models refused by name.
REFINER = "an SDXL refiner (it refines an SDXL base's output; use an SDXL base)"
REFUSED_PIPELINES = {
    "StableDiffusion3Pipeline": "a Stable Diffusion 3 model (a transformer, not a UNet)",
    "FluxPipeline": "a Flux model (a transformer, not a UNet)",
    "StableDiffusionXLImg2ImgPipeline": REFINER,
    "StableDiffusionXLInpaintPipeline": "an SDXL inpainting model (9 input channels)",
    "StableDiffusionInpaintPipeline": "an inpainting model (9 input channels)",
    "StableVideoDiffusionPipeline": "a video model (Stable Video Diffusion)",
    "AnimateDiffPipeline": "a video model (AnimateDiff)",
    "TextToVideoSDPipeline": "a video model",
    "StableDiffusionInstructPix2PixPipeline": "an InstructPix2Pix model (8 input channels)",
    "StableDiffusionDepth2ImgPipeline": "a depth-to-image model (5 input channels)",
    "StableDiffusionUpscalePipeline": "an upscaler",
    "PixArtAlphaPipeline": "a PixArt model (a transformer, not a UNet)",
    "PixArtSigmaPipeline": "a PixArt model (a transformer, not a UNet)",
}
UNET_IN_CHANNELS = {
    9: "an inpainting model (9 input channels)",
    8: "an InstructPix2Pix model (8 input channels)",
    5: "a depth-to-image model (5 input channels)",
    7: "an upscaler (7 input channels)",
}


def _read_json(path: Path, model: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"'{model}': could not read {path.name} ({exc}); the model folder is damaged"
        ) from exc
    if not isinstance(data, dict):
        raise ModelError(f"'{model}': {path.name} is not a JSON object; the model folder is damaged")
    return data


def from_configs(
    model: str, index: dict[str, Any], unet: dict[str, Any] | None, scheduler: dict[str, Any] | None = None
) -> Family:
    """The family of a diffusers layout from model_index.json, unet/config.json and the scheduler's."""
    pipeline = str(index.get("_class_name", ""))
    if pipeline in REFUSED_PIPELINES:
        raise refuse(model, REFUSED_PIPELINES[pipeline])
    if unet is None:
        what = "a transformer model" if "transformer" in index else f"a {pipeline or 'model'} without a UNet"
        raise refuse(model, what)
    unet_class = str(unet.get("_class_name", "UNet2DConditionModel"))
    if unet_class != "UNet2DConditionModel":
        raise refuse(model, f"a model whose UNet is a {unet_class} (a video or motion model)")
    channels = int(unet.get("in_channels", 4))
    if channels != 4:
        raise refuse(model, UNET_IN_CHANNELS.get(channels, f"a model with {channels} UNet input channels"))
    prediction = str((scheduler or {}).get("prediction_type", ""))
    sample = int(unet.get("sample_size") or 0)
    if unet.get("addition_embed_type") == "text_time":
        encoder = index.get("text_encoder") or [None]
        # the refiner has only the second (OpenCLIP bigG) encoder and aesthetic-score conditioning
        if index and (encoder[0] is None or index.get("requires_aesthetics_score")):
            raise refuse(model, REFINER)
        return Family(SDXL, sample, prediction)
    if unet.get("addition_embed_type"):
        raise refuse(
            model, f"a UNet with '{unet['addition_embed_type']}' conditioning (not Stable Diffusion)"
        )
    sd2 = unet.get("cross_attention_dim") == 1024 or bool(unet.get("use_linear_projection"))
    return Family(SD2 if sd2 else SD1, sample, prediction)


def from_folder(model: str, folder: Path) -> Family | None:
    index = _read_json(folder / "model_index.json", model)
    unet_config = folder / "unet" / "config.json"
    if not unet_config.is_file() and "unet" in index:
        return None  # a partial hub snapshot, or a damaged folder: the load says what is missing
    unet = _read_json(unet_config, model) if unet_config.is_file() else None
    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(scheduler_config, model) if scheduler_config.is_file() else None
    return from_configs(model, index, unet, scheduler)


# Tensor names of the original (LDM / SGM) single-file layouts, first match wins.
_SINGLE_FILE_REFUSED = (
    ("joint_blocks.0.", "a Stable Diffusion 3 model (a transformer, not a UNet)"),
    ("double_blocks.0.", "a Flux model (a transformer, not a UNet)"),
    ("time_stack", "a video model (Stable Video Diffusion)"),
    ("motion_modules", "a video model (AnimateDiff)"),
    ("temporal_transformer", "a video model"),
)
_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


def header(path: Path) -> dict[str, Any]:
    """A safetensors file's header: {tensor name: {"dtype", "shape", ...}}; no tensor is read."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        length = int.from_bytes(head, "little")
        if not 2 <= length <= 100 * 2**20 or length > os.fstat(f.fileno()).st_size - 8:
            raise ValueError(f"header length {length} does not fit the file")
        data = json.loads(f.read(length))
    if not isinstance(data, dict):
        raise ValueError("the header is not a JSON object")
    data.pop("__metadata__", None)
    return data


def from_single_file(model: str, path: Path, model_config: str = "") -> Family:
    """The family of an original-layout checkpoint, from its safetensors header (no tensor is read)."""
    try:
        tensors = header(path)
        keys = list(tensors)
        shape = list(tensors[_UNET_IN]["shape"]) if _UNET_IN in tensors else None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"{path.name} is not a readable .safetensors file ({reason}); "
            "the file is damaged or incomplete: download or copy it again"
        ) from exc
    for marker, what in _SINGLE_FILE_REFUSED:
        if any(marker in k for k in keys):
            raise refuse(model, what)
    if shape is None:
        if any(k.startswith(("lora_", "lora_unet", "unet.")) or ".lora_" in k for k in keys[:50]):
            raise refuse(model, "a LoRA file, not a model (give it as a LoRA, with a base model)")
        raise refuse(
            model, "a .safetensors file without a Stable Diffusion UNet (no model.diffusion_model.*)"
        )
    if shape[1] != 4:
        raise refuse(model, UNET_IN_CHANNELS.get(shape[1], f"a model with {shape[1]} UNet input channels"))
    config_family = None
    if model_config and Path(model_config, "model_index.json").is_file():
        config_family = from_folder(model_config, Path(model_config).expanduser())
    found: str
    has = set(k.split(".", 3)[2] if k.startswith("conditioner.embedders.") else "" for k in keys)
    if any(k.startswith("model.diffusion_model.label_emb.") for k in keys):
        if "1" not in has:  # SGM's refiner has one embedder (OpenCLIP bigG) and aesthetic-score conditioning
            raise refuse(model, REFINER)
        found = SDXL
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        found = SD2  # the OpenCLIP text encoder
    else:
        found = SD1
    if config_family is not None:
        if config_family.name != found:
            raise ModelError(
                f"{path.name} is an {LABELS[found]} checkpoint but the model_config folder {model_config} is "
                f"an {config_family.label} model's; give the configs of the checkpoint's own family"
            )
        return config_family
    if found == SD2:  # without configs diffusers reads an SD 2.x file as 2.1's 768 v-prediction model
        return Family(SD2, 96, "v_prediction")
    return Family(found)


def detect(model: str, model_config: str = "", hub_cache: str | None = None) -> Family | None:
    """The model's family, read from its configs or header; None for a hub id whose configs are not on
    this machine (loading.detect_family fetches them first when online: three small files)."""
    path = Path(model).expanduser()
    if path.suffix == ".safetensors":
        return from_single_file(model, path, model_config) if path.is_file() else None
    if path.is_dir():
        return from_folder(model, path) if (path / "model_index.json").is_file() else None
    if not is_hub_id(model):
        return None  # not a hub id: the load refuses it with its own message
    snapshot = hub_snapshot(model, hub_cache)
    return from_folder(model, snapshot) if snapshot is not None else None


def hub_cache_dir(hub_cache: str | None = None) -> Path:
    """huggingface_hub's cache folder, as it resolves it (HF_HUB_CACHE, then HF_HOME/hub)."""
    if hub_cache:
        return Path(hub_cache).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(model: str) -> bool:
    """owner/name as the hub spells it (a name may hold dots: stable-diffusion-xl-base-1.0), and
    neither a checkpoint file's name nor a path on this machine."""
    return (
        HUB_ID.fullmatch(model) is not None
        and not model.endswith((".safetensors", ".ckpt"))
        and not Path(model).expanduser().exists()
    )


def hub_snapshot(model: str, hub_cache: str | None = None) -> Path | None:
    """The cached snapshot folder of a hub id's main revision that holds model_index.json, if any."""
    repo = hub_cache_dir(hub_cache) / ("models--" + model.replace("/", "--"))
    try:
        revision = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / revision
    return snapshot if (snapshot / "model_index.json").is_file() else None
