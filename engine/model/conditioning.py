"""A prompt's conditioning as the UNet takes it: token embeddings, and SDXL's pooled embedding.

SD 1.x / 2.x condition on one CLIP encoder's token embeddings (`encoder_hidden_states`). SDXL joins
the penultimate states of two encoders for cross-attention and adds, through `added_cond_kwargs`, the
second encoder's pooled projection (`text_embeds`) and six size numbers (`time_ids`: original size,
crop corner, target size). The size numbers are the working canvas's, so they are made from the
latents at each call, never stored with a prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TextConditioning:
    """One or more prompts' conditioning, batch-first: tokens (B, 77, D); pooled (B, P) for SDXL."""

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:  # the warm engine's prompt memory is bounded in bytes (engine/cache/memo.py)
        return int(self.tokens.nbytes + (self.pooled.nbytes if self.pooled is not None else 0))

    def expand(self, n: int) -> TextConditioning:
        """The same prompt for n frames (views, no copies)."""
        pooled = None if self.pooled is None else self.pooled.expand(n, -1)
        return TextConditioning(self.tokens.expand(n, -1, -1), pooled)

    @staticmethod
    def cat(parts: Sequence[TextConditioning]) -> TextConditioning:
        """Batches joined in order (the copies of one UNet call)."""
        pooled = [p.pooled for p in parts]
        joined = None
        if any(p is not None for p in pooled):
            if not all(p is not None for p in pooled):
                raise ValueError(
                    "cannot join SDXL conditioning with conditioning that has no pooled embedding"
                )
            joined = torch.cat(pooled)  # type: ignore[arg-type]
        return TextConditioning(torch.cat([p.tokens for p in parts]), joined)


def size_ids(height: int, width: int, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """SDXL's `add_time_ids` for a canvas: (original h, w), crop (0, 0), (target h, w), as diffusers'
    pipeline makes them when neither size is given (both the generated image's)."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
    return ids.expand(batch, -1)


def unet_kwargs(text: TextConditioning, latents: torch.Tensor, vae_factor: int) -> dict[str, Any]:
    """The UNet's conditioning arguments for a batch of latents (B, 4, h, w)."""
    kwargs: dict[str, Any] = {"encoder_hidden_states": text.tokens}
    if text.pooled is not None:
        h, w = latents.shape[-2] * vae_factor, latents.shape[-1] * vae_factor
        ids = size_ids(h, w, latents.shape[0], text.pooled.dtype, text.pooled.device)
        kwargs["added_cond_kwargs"] = {"text_embeds": text.pooled, "time_ids": ids}
    return kwargs
