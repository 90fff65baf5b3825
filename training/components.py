"""The micro SD's components: SD's layouts (8x VAE with 4 latent channels; a four-level UNet with
cross-attention at three levels and the PnP layers up_blocks.1-3; a CLIP text encoder) at tiny widths,
sized by measured step times on 2 CPU cores so that training fits in about an hour."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    from diffusers import AutoencoderKL

    blocks = sizes.vae_blocks
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=sizes.groups,
        sample_size=256,
    )


def make_unet(sizes: Sizes):  # noqa: ANN201 - diffusers UNet2DConditionModel
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=sizes.unet_blocks,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=sizes.text_dim,
        attention_head_dim=sizes.unet_heads,
        norm_num_groups=sizes.groups,
    )


def make_text_encoder(sizes: Sizes, tokenizer):  # noqa: ANN001, ANN201 - transformers classes
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=sizes.text_dim,
            intermediate_size=sizes.text_dim * 4,
            num_hidden_layers=sizes.text_layers,
            num_attention_heads=sizes.text_heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def make_scheduler():  # noqa: ANN201 - diffusers DDIMScheduler
    """SD's scaled-linear schedule, saved as the DDIM config SD ships."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
