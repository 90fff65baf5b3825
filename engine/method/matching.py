"""Nearest-neighbour token matching between a frame and a keyframe, in bounded memory."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..protocol import MATCH_SCOPES

# Among keys as similar as the best to within this, the one at the query's own position wins:
# flat regions (black letterboxing, sky) hold many identical tokens, and a frame that equals its
# keyframe should map onto itself, not onto the first of many equal tokens.
SAME_POSITION_BONUS = 1e-5


def unit(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens scaled to unit length (float32), so that dot products are cosine similarities."""
    return F.normalize(tokens.float(), dim=-1)


@torch.no_grad()
def nearest_tokens(
    queries: torch.Tensor,
    keys: torch.Tensor,
    block: int = 1024,
    normalized: bool = False,
    same_position: bool = True,
) -> torch.Tensor:
    """Index of the most cosine-similar key token for every query token.

    queries: (S, D), keys: (T, D) -> (S,) long. Queries go in blocks of `block`, so at most a
    block x T similarity matrix exists at once (never S x T for a whole shot). With
    `normalized`, both are already :func:`unit` (keyframe tokens are normalised once per step).
    Without `same_position`, near-ties go to the first best key, as the reference code's argmax.
    """
    if not normalized:
        queries, keys = unit(queries), unit(keys)
    out = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    same_grid = queries.shape[0] == keys.shape[0]
    for start in range(0, queries.shape[0], block):
        sim = queries[start : start + block] @ keys.T
        if same_grid and same_position:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] += SAME_POSITION_BONUS
        out[start : start + block] = sim.argmax(dim=-1)
    return out


# -- cheaper matching (bench/engine_bench.py measures each; bench/edit_bench.py decides defaults) --


@dataclass(frozen=True)
class MatchOptions:
    """How propagation finds its nearest-neighbour fields.

    - `scope`: ``layer`` searches at every self-attention layer with that layer's tokens (the
      reference); ``level`` searches once per resolution level and UNet call, at the level's first
      layer, and every later layer of that resolution (down and up path) reuses the field.
    - `reuse`: the last int(T * reuse) of the T denoising steps reuse the fields of the step before
      them (the source features barely change at the end of the schedule); 0 searches at every step.
    - `dims`: search in a fixed random orthonormal projection to this many dimensions (0: the
      tokens' own width), which cuts the search's multiply-adds by width / dims.
    - `same_position`: among near-equal best keys, take the one at the query's own position
      (:data:`SAME_POSITION_BONUS`); off, the first, as the reference code does.
    """

    scope: str = "level"  # the engine's defaults (engine/protocol.Job); ("layer", 0.0, 0) is exact
    reuse: float = 0.2
    dims: int = 0
    same_position: bool = True

    def __post_init__(self) -> None:
        if self.scope not in MATCH_SCOPES:
            raise ValueError(f"unknown match scope {self.scope!r}: one of {', '.join(MATCH_SCOPES)}")
        if not 0 <= self.reuse <= 1 or self.dims < 0:
            raise ValueError("match reuse must be a fraction (0 to 1) and dims 0 or more")


# The reference code's search: every layer, every step, full width, plain argmax (propagation "reference").
REFERENCE_SEARCH = MatchOptions("layer", 0.0, 0, same_position=False)


@lru_cache(maxsize=32)
def projection(width: int, dims: int, device: torch.device) -> torch.Tensor:
    """A (width, dims) matrix with orthonormal columns, the same for every process and layer of
    that width (seeded by the width), so keyframe tokens and queries are projected alike."""
    generator = torch.Generator().manual_seed(width)
    q, _ = torch.linalg.qr(torch.randn(width, dims, generator=generator))
    return q.to(device)


def reduce(tokens: torch.Tensor, dims: int) -> torch.Tensor:
    """Unit tokens (..., width) -> unit tokens (..., dims); unchanged when dims is 0 or too wide."""
    width = tokens.shape[-1]
    if not dims or dims >= width:
        return tokens
    return F.normalize(tokens @ projection(width, dims, tokens.device), dim=-1)
