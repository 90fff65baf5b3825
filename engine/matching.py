"""Nearest-neighbour token matching between a frame and a keyframe, in bounded memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def nearest_tokens(queries: torch.Tensor, keys: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Index of the most cosine-similar key token for every query token.

    queries: (S, D), keys: (T, D) -> (S,) long. Queries go in blocks of `block`, so at most a
    block x T similarity matrix exists at once (never S x T for a whole shot).
    """
    keys = F.normalize(keys.float(), dim=-1)
    out = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    for start in range(0, queries.shape[0], block):
        q = F.normalize(queries[start : start + block].float(), dim=-1)
        out[start : start + block] = (q @ keys.T).argmax(dim=-1)
    return out
