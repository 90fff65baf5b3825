"""Cheaper propagation (engine/matching.MatchOptions): a field shared per resolution level, fields
reused in the last steps, a search in fewer dimensions; each changes only the propagated frames and
only by the searches it saves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import protocol
from engine.method.attention import TokenFlowState
from engine.method.keyframes import FrameSource
from engine.method.matching import MatchOptions, nearest_tokens, reduce, unit
from tests.engine.conftest import run_in_process

STEPS = 3
KEYS = [0, 3, 6, 9]  # keyframes.fixed(10, 4)


def _run(model, city16, tmp_path, name: str, **fields) -> dict:
    common = dict(
        frames=[str(f) for f in city16[:10]],
        prompt="a snowy street at night",
        keyframe_stride=4,
        steps=STEPS,
        cache_dir=str(tmp_path / "cache"),
    )
    code, events = run_in_process(model, output=str(tmp_path / name), **{**common, **fields})
    assert code == 0, events.getvalue()
    (done,) = events.events("done")
    return done


def _attention_layers(model) -> int:
    """The number of self-attention layers of the model's UNet (16 in SD's layout)."""
    return sum(name.endswith("attn1.processor") for name in model.unet.attn_processors)


def _pixels(path: str) -> np.ndarray:
    import cv2

    return cv2.imread(path, cv2.IMREAD_UNCHANGED).astype(np.int32)


def test_level_scope_searches_once_per_resolution_and_keeps_the_keyframes(model, city16, tmp_path):
    layer = _run(model, city16, tmp_path, "layer", match_scope="layer", match_reuse=0.0, match_dims=0)
    level = _run(model, city16, tmp_path, "level", match_scope="level", match_reuse=0.0, match_dims=0)
    n_layers = _attention_layers(model)
    # 6 propagated frames x 3 steps, each between two keyframes: 2 searches per layer, or per level
    assert layer["stats"]["match_searches"] == STEPS * 6 * 2 * n_layers
    # SD's layout: the down path's levels 0-2, the mid block, the up path's levels 2-0: 4 resolutions
    assert level["stats"]["match_searches"] == STEPS * 6 * 2 * 4
    for i in KEYS:  # keyframes do not propagate: the option cannot touch them
        assert np.array_equal(_pixels(layer["files"][i]), _pixels(level["files"][i]))
    others = [i for i in range(10) if i not in KEYS]
    diffs = [np.abs(_pixels(layer["files"][i]) - _pixels(level["files"][i])).mean() for i in others]
    assert max(diffs) > 0  # the shared field is another field, not the same computation renamed


def test_reuse_skips_the_last_steps_searches(model, city16, tmp_path):
    # int(3 * 0.34) = 1: the last step reuses the fields of the one before
    done = _run(model, city16, tmp_path, "reuse", match_scope="layer", match_reuse=0.34)
    n_layers = _attention_layers(model)
    assert done["stats"]["match_searches"] == (STEPS - 1) * 6 * 2 * n_layers
    # asking to reuse in every step still searches in the first one
    done = _run(model, city16, tmp_path, "reuse-all", match_scope="layer", match_reuse=1.0)
    assert done["stats"]["match_searches"] == 1 * 6 * 2 * n_layers


def test_a_reused_field_is_never_another_keyframes():
    """Resampled keyframes change between steps: a field is remembered per (frame, keyframe)."""
    torch.manual_seed(0)
    state = TokenFlowState(reuse_from=1)
    tokens = unit(torch.randn(3, 20, 8))  # three keyframes' tokens
    frame = unit(torch.randn(20, 8))
    plan = [FrameSource(0, 0, 1.0)]
    state.begin_step(0, False, False, n_keyframes=3, keyframes=[2, 5, 9])
    state.begin_chunk([4], plan)
    first = state.nearest("level", 0, 0, lambda: frame, tokens)  # frame 4 onto keyframe 2
    assert state.searches == 1
    state.begin_step(1, False, False, n_keyframes=3, keyframes=[2, 5, 9])
    state.begin_chunk([4], plan)
    assert torch.equal(state.nearest("level", 0, 0, lambda: frame, tokens), first)
    assert state.searches == 1  # reused
    state.begin_step(2, False, False, n_keyframes=3, keyframes=[1, 5, 9])  # position 0 is frame 1 now
    state.begin_chunk([4], plan)
    again = state.nearest("level", 0, 0, lambda: frame, tokens)
    assert state.searches == 2
    assert torch.equal(again, nearest_tokens(frame, tokens[0], normalized=True))


def test_without_reuse_fields_live_one_chunk():
    state = TokenFlowState()
    tokens = unit(torch.randn(2, 6, 4))
    state.begin_step(0, False, False, n_keyframes=2, keyframes=[0, 4])
    state.begin_chunk([1], [FrameSource(0, 1, 0.5)])
    state.nearest("layer-a", 0, 0, lambda: tokens[1], tokens)
    state.nearest("layer-a", 0, 0, lambda: tokens[1], tokens)
    assert state.searches == 1 and len(state.fields) == 1  # shared inside the call
    state.begin_chunk([2], [FrameSource(0, 1, 0.5)])
    assert not state.fields  # memory stays one chunk's fields


def test_a_projected_search_still_finds_a_known_shift():
    torch.manual_seed(0)
    h, w, d, shift = 12, 16, 64, 3
    grid = unit(torch.randn(h, w + shift, d))
    key = grid[:, :w].reshape(-1, d)
    frame = grid[:, shift:].reshape(-1, d)
    idx = nearest_tokens(reduce(frame, 16), reduce(key, 16), normalized=True)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    visible = cols + shift < w
    assert torch.equal(idx.view(h, w)[visible], (rows * w + cols + shift)[visible])
    assert reduce(frame, 16).shape == (h * w, 16)
    assert reduce(frame, 0) is frame and reduce(frame, 64) is frame  # 0 or too wide: unchanged


def test_keyframe_tokens_are_projected_once_when_kept():
    """With `dims`, keep() stores the keyframes' projected tokens; a search projects only the frame's,
    and finds what projecting both at search time finds."""
    torch.manual_seed(0)
    state = TokenFlowState(match=MatchOptions(dims=8))
    state.begin_step(0, False, False, n_keyframes=2, keyframes=[0, 4])
    state.set_keyframe_batch([(0, 0), (1, 1)])
    raw = torch.randn(2, 30, 32)
    state.keep("layer-a", raw, torch.randn(3, 2, 30, 32))
    kept = state.keyframe_tokens["layer-a"]
    assert kept.shape == (2, 30, 8) and torch.allclose(kept, reduce(unit(raw), 8))
    state.begin_chunk([2], [FrameSource(0, 1, 0.5)])
    frame = unit(torch.randn(30, 32))
    idx = state.nearest("layer-a", 0, 1, lambda: frame, kept)
    assert torch.equal(idx, nearest_tokens(reduce(frame, 8), reduce(unit(raw[1]), 8), normalized=True))


def test_dims_option_runs_and_counts_its_searches(model, city16, tmp_path):
    done = _run(model, city16, tmp_path, "dims", match_dims=16, match_scope="level", match_reuse=0.0)
    assert done["stats"]["match_searches"] == STEPS * 6 * 2 * 4


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("match_scope", "global", "choose one of: layer, level"),
        ("match_dims", -1, "match_dims"),
        ("match_reuse", 1.5, "match_reuse"),
    ],
)
def test_bad_match_options_are_refused(field, value, words):
    job = protocol.Job(frames=["a.png"], output="out", prompt="x", **{field: value})
    with pytest.raises(protocol.JobError, match=words):
        job.validate()


def test_match_options_reject_nonsense_in_python_too():
    with pytest.raises(ValueError, match="unknown match scope"):
        MatchOptions(scope="global")
    with pytest.raises(ValueError, match="fraction"):
        MatchOptions(reuse=1.5)
