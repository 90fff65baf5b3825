"""The source copy runs only in the steps that read it (injection, field searches), and leaving it out
changes nothing in the edit."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.method import attention
from engine.method.attention import TokenFlowState
from engine.method.editing import Editor
from engine.method.keyframes import FrameSource
from tests.engine.conftest import run_in_process

STEPS = 10  # injection: int(10 * 0.8) = 8 steps of residuals; reuse 0.2: steps 8 and 9 reuse fields
LATE = (8, 9)


def _batches(model, city16, out: Path, **fields) -> tuple[dict[int, list[int]], list[np.ndarray]]:
    """UNet batch sizes per denoising step (by timestep, in call order) and the written frames."""
    seen: dict[int, list[int]] = defaultdict(list)

    def record(module, args, kwargs):
        processors = module.attn_processors.values()
        if any(isinstance(p, attention.TokenFlowAttnProcessor) for p in processors):  # an edit's call
            seen[int(args[1])].append(int(args[0].shape[0]))

    handle = model.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        code, events = run_in_process(
            model,
            frames=[str(p) for p in city16[:8]],
            output=str(out),
            cache_dir=str(out.parent / "cache"),
            prompt="a watercolor painting",
            steps=STEPS,
            match_reuse=0.2,
            **fields,
        )
    finally:
        handle.remove()
    assert code == 0, events.getvalue()[-2000:]
    images = [cv2.imread(f) for f in events.events("done")[0]["files"]]
    return seen, images


def _edit_steps(seen: dict[int, list[int]]) -> list[list[int]]:
    assert len(seen) == STEPS
    return [seen[t] for t in sorted(seen, reverse=True)]  # the edit's steps, in order


@pytest.mark.parametrize(
    ("fields", "late_copies"),
    [
        ({"keyframe_mode": "fixed", "stage": "propagate"}, 2),
        ({"keyframe_mode": "resample", "stage": "propagate"}, 3),  # new keyframes: fields searched
        ({"keyframe_mode": "resample", "stage": "preview"}, 2),
        ({"method": "per-frame", "stage": "propagate"}, 2),
    ],
)
def test_source_copy_runs_only_where_it_is_read(model, city16, tmp_path, fields, late_copies):
    seen, _ = _batches(model, city16, tmp_path / "out", **fields)
    steps = _edit_steps(seen)
    early = steps[0]
    assert all(size % 3 == 0 for size in early)  # injection steps: source, negative, prompt
    for step, sizes in enumerate(steps):
        copies = late_copies if step in LATE else 3
        assert sizes == [size // 3 * copies for size in early], (step, sizes)


@pytest.mark.parametrize("fields", [{"keyframe_mode": "fixed"}, {"method": "per-frame"}])
def test_leaving_the_source_copy_out_changes_nothing(model, city16, tmp_path, monkeypatch, fields):
    _, two = _batches(model, city16, tmp_path / "two", **fields)
    monkeypatch.setattr(Editor, "copies", lambda self, step, preview: attention.COPIES)
    seen, three = _batches(model, city16, tmp_path / "three", **fields)
    assert all(size % 3 == 0 for sizes in _edit_steps(seen) for size in sizes)  # the old way ran
    for a, b in zip(two, three, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_a_step_without_the_source_copy_never_injects_or_searches():
    state = TokenFlowState(reuse_from=1)
    with pytest.raises(ValueError, match="injection"):
        state.begin_step(0, True, False, copies=attention.EDIT_COPIES)
    tokens = torch.nn.functional.normalize(torch.randn(2, 6, 4), dim=-1)
    state.begin_step(0, False, False, n_keyframes=2, keyframes=[0, 4])
    state.begin_chunk([1], [FrameSource(0, 1, 0.5)])
    field = state.nearest("level", 0, 0, lambda: tokens[1], tokens)
    state.begin_step(1, False, False, n_keyframes=2, keyframes=[0, 4], copies=attention.EDIT_COPIES)
    state.begin_chunk([1], [FrameSource(0, 1, 0.5)])
    assert torch.equal(state.nearest("level", 0, 0, lambda: tokens[1], None), field)  # reused
    state.begin_chunk([2], [FrameSource(0, 1, 0.5)])  # a frame with no field from the step before
    with pytest.raises(RuntimeError, match="without the source copy"):
        state.nearest("level", 0, 0, lambda: tokens[1], None)
