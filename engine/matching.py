"""Nearest-neighbour token matching between a frame and a keyframe, in bounded memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Among keys as similar as the best to within this, the one at the query's own position wins:
# flat regions (black letterboxing, sky) hold many identical tokens, and a frame that equals its
# keyframe should map onto itself, not onto the first of many equal tokens.
SAME_POSITION_BONUS = 1e-5


def unit(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens scaled to unit length (float32), so that dot products are cosine similarities."""
    return F.normalize(tokens.float(), dim=-1)


@torch.no_grad()
def nearest_tokens(
    queries: torch.Tensor, keys: torch.Tensor, block: int = 1024, normalized: bool = False
) -> torch.Tensor:
    """Index of the most cosine-similar key token for every query token.

    queries: (S, D), keys: (T, D) -> (S,) long. Queries go in blocks of `block`, so at most a
    block x T similarity matrix exists at once (never S x T for a whole shot). With
    `normalized`, both are already :func:`unit` (keyframe tokens are normalised once per step).
    """
    if not normalized:
        queries, keys = unit(queries), unit(keys)
    out = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    same_grid = queries.shape[0] == keys.shape[0]
    for start in range(0, queries.shape[0], block):
        sim = queries[start : start + block] @ keys.T
        if same_grid:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] += SAME_POSITION_BONUS
        out[start : start + block] = sim.argmax(dim=-1)
    return out
