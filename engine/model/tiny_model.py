"""A tiny random-weight Stable Diffusion (diffusers folder) for offline tests, demos and benchmarks.

It keeps SD's block layout (four UNet levels, cross-attention at three of them, three resnets per up
block) with small widths, so the layer names TokenFlow injects into exist as in SD 1.x / 2.x.
`family="sd2-v"` is SD 2.x's 768 layout (linear projections, v-prediction, sample size 96);
`family="sdxl"` is SDXL's (three levels, none at the first, more transformer layers lower down, two
text encoders, the pooled embedding and size conditioning).
Its output is noise-like: it proves shapes, plumbing and the method's invariants, not image quality.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# Widths for the built-in sizes: "tiny" for tests, "mid" for benchmarks, "sd15" as SD 1.5's UNet.
SIZES: dict[str, dict[str, object]] = {
    "tiny": {"blocks": (32, 32, 64, 64), "heads": 2, "text": 32, "vae": (32, 32, 32, 32)},
    "mid": {"blocks": (64, 128, 192, 192), "heads": 4, "text": 128, "vae": (32, 64, 64, 64)},
    "sd15": {"blocks": (320, 640, 1280, 1280), "heads": 8, "text": 768, "vae": (128, 256, 512, 512)},
}


# SD's DDIM configuration (scaled-linear betas), as SD 1.x / 2.x ship it.
SD_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def clip_byte_chars() -> list[str]:
    """CLIP's printable stand-ins for the 256 bytes, in its vocabulary's order (the printable bytes
    first, then the others), as byte-level BPE writes them."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def write_clip_tokenizer(folder: Path, merges: Sequence[tuple[str, ...]] = ()) -> None:
    """A CLIP tokenizer folder: every byte as a word piece and as a word end, then `merges` (CLIP's
    own list gives OpenAI's ids; none gives a byte-level vocabulary), then the two special tokens.

    Written as files and loaded with `from_pretrained` because transformers 5.x builds a useless
    tokenizer from `vocab_file=` paths (shared/reference/environment.md)."""
    chars = clip_byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in merges))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": 77,
                "tokenizer_class": "CLIPTokenizer",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        )
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )


def sd_unet(  # noqa: ANN201
    blocks: Sequence[int],
    heads: int,
    text_dim: int,
    groups: int,
    sample_size: int = 64,
    linear_projection: bool = False,
):
    """SD 1.x's UNet layout (four levels, cross-attention at the first three down and last three up
    blocks: the PnP layers up_blocks.1-3 exist) at the given widths; SD 2.x's with linear projections."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        use_linear_projection=linear_projection,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=tuple(blocks),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_dim,
        attention_head_dim=heads,
        norm_num_groups=groups,
    )


def sd_vae(  # noqa: ANN201
    blocks: Sequence[int],
    groups: int,
    layers: int = 1,
    sample_size: int = 512,
    scaling_factor: float = 0.18215,
):
    """SD's VAE layout (8x down-sampling with four blocks, 4 latent channels) at the given widths."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        scaling_factor=scaling_factor,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=tuple(blocks),
        latent_channels=4,
        layers_per_block=layers,
        norm_num_groups=groups,
        sample_size=sample_size,
    )


def clip_text_encoder(  # noqa: ANN201
    tokenizer: Any, dim: int, intermediate: int, layers: int, heads: int, projection: int = 0
):
    """A CLIP text encoder sized for `tokenizer`'s vocabulary and special tokens; with `projection`,
    one with a projection of its pooled output (SDXL's second encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(
        CLIPTextConfig(
            projection_dim=projection or 512,
            vocab_size=len(tokenizer),
            hidden_size=dim,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


FAMILIES = ("sd1", "sd2-v", "sdxl")


def make_tiny_model(folder: str | Path, size: str = "tiny", seed: int = 0, family: str = "sd1") -> Path:
    """Write a random-weight SD model folder that diffusers' pipelines load (`family`: FAMILIES)."""
    if family == "sdxl":
        return _make_tiny_sdxl(Path(folder), size, seed)
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {', '.join(FAMILIES)}")
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    spec = SIZES[size]
    folder = Path(folder)
    torch.manual_seed(seed)
    blocks = tuple(spec["blocks"])  # type: ignore[arg-type]
    text_dim = int(spec["text"])  # type: ignore[arg-type]
    v = family == "sd2-v"
    unet = sd_unet(
        blocks,
        int(spec["heads"]),  # type: ignore[arg-type]
        text_dim,
        groups=min(32, blocks[0] // 2),
        sample_size=96 if v else 64,
        linear_projection=v,
    )
    vae_blocks = tuple(spec["vae"])  # type: ignore[arg-type]
    vae = sd_vae(vae_blocks, groups=min(32, vae_blocks[0]), layers=1 if size != "sd15" else 2)
    write_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = clip_text_encoder(tokenizer, text_dim, text_dim * 2, layers=2, heads=4)
    scheduler = DDIMScheduler(**{**SD_SCHEDULER, "prediction_type": "v_prediction" if v else "epsilon"})
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


# SDXL base's scheduler (Euler, as it ships; the engine takes its betas and spacing for DDIM).
SDXL_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
SDXL_TIME_DIM = 8  # addition_time_embed_dim (SDXL: 256): six size/crop numbers, each embedded


def _make_tiny_sdxl(folder: Path, size: str, seed: int) -> Path:
    """SDXL's layout: levels (320, 640, 1280) with no attention at the first and 2 / 10 transformer
    layers at the others (here 1 / 2), two CLIP encoders whose penultimate states are joined, the second's
    projected pooled output, and `add_time_ids` of SDXL's (original size, crop, target size)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTokenizer

    if size != "tiny":
        raise ValueError("the tiny SDXL model comes in one size: 'tiny'")
    torch.manual_seed(seed)
    write_clip_tokenizer(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer_2")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
    # the two encoders' widths (unequal, as SDXL's 768 and 1280: diffusers' single-file loader tells
    # them apart by width); the UNet's cross-attention sees both joined
    dims = (32, 48)
    pooled = 48
    unet = UNet2DConditionModel(
        sample_size=32,  # 256 pixels: the tiny SDXL works at 256 by default (SDXL: 128, 1024)
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 2, 4),
        use_linear_projection=True,
        cross_attention_dim=sum(dims),
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_DIM,
        projection_class_embeddings_input_dim=pooled + 6 * SDXL_TIME_DIM,
        norm_num_groups=16,
    )
    vae_blocks = (32, 32, 32, 32)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=vae_blocks,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.13025,  # SDXL's
        force_upcast=True,
    )
    text_encoder = clip_text_encoder(tokenizer, dims[0], dims[0] * 2, layers=2, heads=4)
    text_encoder_2 = clip_text_encoder(
        tokenizer_2, dims[1], dims[1] * 2, layers=2, heads=4, projection=pooled
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(folder)
    return folder
