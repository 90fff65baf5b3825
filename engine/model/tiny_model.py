"""A tiny random-weight Stable Diffusion (diffusers folder) for offline tests, demos and benchmarks.

It keeps SD's block layout (four UNet levels, cross-attention at three of them, three resnets per up
block) with small widths, so the layer names TokenFlow injects into exist as in SD 1.x / 2.x.
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


def sd_unet(blocks: Sequence[int], heads: int, text_dim: int, groups: int, sample_size: int = 64):  # noqa: ANN201
    """SD 1.x's UNet layout (four levels, cross-attention at the first three down and last three up
    blocks: the PnP layers up_blocks.1-3 exist) at the given widths."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
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


def sd_vae(blocks: Sequence[int], groups: int, layers: int = 1, sample_size: int = 512):  # noqa: ANN201
    """SD's VAE layout (8x down-sampling with four blocks, 4 latent channels) at the given widths."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
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


def clip_text_encoder(tokenizer: Any, dim: int, intermediate: int, layers: int, heads: int):  # noqa: ANN201
    """A CLIP text encoder sized for `tokenizer`'s vocabulary and special tokens."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
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


def make_tiny_model(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight SD model folder that `StableDiffusionPipeline.from_pretrained` loads."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    spec = SIZES[size]
    folder = Path(folder)
    torch.manual_seed(seed)
    blocks = tuple(spec["blocks"])  # type: ignore[arg-type]
    text_dim = int(spec["text"])  # type: ignore[arg-type]
    unet = sd_unet(blocks, int(spec["heads"]), text_dim, groups=min(32, blocks[0] // 2))  # type: ignore[arg-type]
    vae_blocks = tuple(spec["vae"])  # type: ignore[arg-type]
    vae = sd_vae(vae_blocks, groups=min(32, vae_blocks[0]), layers=1 if size != "sd15" else 2)
    write_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = clip_text_encoder(tokenizer, text_dim, text_dim * 2, layers=2, heads=4)
    scheduler = DDIMScheduler(**SD_SCHEDULER)
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
