"""A tiny random-weight Stable Diffusion (diffusers folder) for offline tests, demos and benchmarks.

It keeps SD's block layout (four UNet levels, cross-attention at three of them, three resnets per up
block) with small widths, so the layer names TokenFlow injects into exist as in SD 1.x / 2.x.
Its output is noise-like: it proves shapes, plumbing and the method's invariants, not image quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Widths for the built-in sizes: "tiny" for tests, "mid" for benchmarks, "sd15" as SD 1.5's UNet.
SIZES: dict[str, dict[str, object]] = {
    "tiny": {"blocks": (32, 32, 64, 64), "heads": 2, "text": 32, "vae": (32, 32, 32, 32)},
    "mid": {"blocks": (64, 128, 192, 192), "heads": 4, "text": 128, "vae": (32, 64, 64, 64)},
    "sd15": {"blocks": (320, 640, 1280, 1280), "heads": 8, "text": 768, "vae": (128, 256, 512, 512)},
}


def _byte_chars() -> list[str]:
    """GPT-2 / CLIP's printable stand-in for each of the 256 bytes (byte-level BPE's alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = (b for b in range(256) if b not in printable)
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return [table[b] for b in range(256)]


def _tokenizer_files(folder: Path) -> None:
    """A byte-level CLIP BPE vocabulary: every byte, as a word piece and as a word end, no merges."""
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "pad_token": "<|endoftext|>"})
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


def make_tiny_model(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight SD model folder that `StableDiffusionPipeline.from_pretrained` loads."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = SIZES[size]
    folder = Path(folder)
    torch.manual_seed(seed)
    blocks = tuple(spec["blocks"])  # type: ignore[arg-type]
    text_dim = int(spec["text"])  # type: ignore[arg-type]
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=blocks,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_dim,
        attention_head_dim=spec["heads"],
        norm_num_groups=min(32, blocks[0] // 2),
    )
    vae_blocks = tuple(spec["vae"])  # type: ignore[arg-type]
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
        up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
        block_out_channels=vae_blocks,
        latent_channels=4,
        layers_per_block=1 if size != "sd15" else 2,
        norm_num_groups=min(32, vae_blocks[0]),
        sample_size=512,
    )
    _tokenizer_files(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_dim,
            intermediate_size=text_dim * 2,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
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
