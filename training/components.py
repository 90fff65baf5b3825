"""The micro SD's components: SD's layouts (8x VAE with 4 latent channels; a four-level UNet with
cross-attention at three levels and the PnP layers up_blocks.1-3; a CLIP text encoder) at tiny widths,
sized by measured step times on 2 CPU cores so that training fits in about an hour."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.model.tiny_model import SD_SCHEDULER, clip_text_encoder, sd_unet, sd_vae


@dataclass(frozen=True)
class Sizes:
    vae_blocks: tuple[int, ...] = (16, 32, 64, 64)
    unet_blocks: tuple[int, ...] = (32, 32, 64, 64)
    unet_heads: int = 2  # diffusers' `attention_head_dim` of SD 1.x: the number of heads
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    groups: int = 8


def make_vae(sizes: Sizes):  # noqa: ANN201 - diffusers AutoencoderKL
    return sd_vae(sizes.vae_blocks, groups=sizes.groups, layers=1, sample_size=256)


def make_unet(sizes: Sizes):  # noqa: ANN201 - diffusers UNet2DConditionModel
    return sd_unet(sizes.unet_blocks, sizes.unet_heads, sizes.text_dim, groups=sizes.groups, sample_size=32)


def make_text_encoder(sizes: Sizes, tokenizer):  # noqa: ANN001, ANN201 - transformers classes
    return clip_text_encoder(
        tokenizer, sizes.text_dim, sizes.text_dim * 4, layers=sizes.text_layers, heads=sizes.text_heads
    )


def make_scheduler():  # noqa: ANN201 - diffusers DDIMScheduler
    """SD's scaled-linear schedule, saved as the DDIM config SD ships."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_SCHEDULER)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
