"""The windowed search that bench/search_bench.py times against the exact one finds what it claims."""

from __future__ import annotations

import pytest
import torch

from bench.search_bench import window_nearest
from engine.method.matching import nearest_tokens, unit


@pytest.mark.parametrize(("h", "w", "radius"), [(6, 9, 1), (5, 4, 2), (8, 8, 3)])
def test_window_search_is_the_exact_search_within_the_window(h: int, w: int, radius: int) -> None:
    torch.manual_seed(h * w + radius)
    q, k = unit(torch.randn(h * w, 8)), unit(torch.randn(h * w, 8))
    found = window_nearest(q, k, (h, w), radius)
    y, x = torch.arange(h * w) // w, torch.arange(h * w) % w
    near = ((y[:, None] - y[None, :]).abs() <= radius) & ((x[:, None] - x[None, :]).abs() <= radius)
    assert torch.equal(found, (q @ k.T).masked_fill(~near, -2).argmax(-1))  # never outside the grid
    assert not torch.equal(found, nearest_tokens(q, k, normalized=True))  # the window does restrict


def test_window_covering_the_grid_is_the_full_search() -> None:
    torch.manual_seed(0)
    q, k = unit(torch.randn(54, 8)), unit(torch.randn(54, 8))
    assert torch.equal(window_nearest(q, k, (6, 9), 9), nearest_tokens(q, k, normalized=True))
