"""The method's invariants on a tiny SD model and real frames (in-process, one loaded model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.method import keyframes
from engine.method.matching import nearest_tokens
from tests.engine.conftest import run_in_process


def read(path: str | Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.int32)


def outputs(events, kind: str = "done") -> list[np.ndarray]:
    (done,) = events.events(kind)
    return [read(f) for f in done["files"]]


@pytest.mark.parametrize("mode", ["fixed", "resample"])
def test_identical_frames_give_identical_output(model, city16, tmp_path, mode):
    same = tmp_path / "same"
    same.mkdir()
    frames = []
    for i in range(7):
        frames.append(same / f"f{i:02d}.png")
        shutil.copy(city16[3], frames[-1])
    code, events = run_in_process(
        model,
        frames=[str(f) for f in frames],
        output=str(tmp_path / "out"),
        prompt="a red car",
        keyframe_mode=mode,
        keyframe_stride=3,
        cache_dir=str(tmp_path / "cache"),
    )
    assert code == 0, events.getvalue()
    images = outputs(events)
    assert len(images) == 7
    # Equal up to 8-bit rounding: the UNet's float results depend slightly (1e-5) on batch
    # composition (chunks of different sizes), which can flip a rounding; nothing more.
    for image in images[1:]:
        diff = np.abs(image - images[0])
        assert diff.max() <= 1
        assert (diff > 0).mean() < 0.01


def test_fixed_preview_matches_propagated_keyframes(model, city16, tmp_path):
    common = dict(
        frames=[str(f) for f in city16[:10]],
        prompt="a snowy street at night",
        keyframe_mode="fixed",
        keyframe_stride=4,
        cache_dir=str(tmp_path / "cache"),
    )
    code, preview = run_in_process(model, output=str(tmp_path / "preview"), stage="preview", **common)
    assert code == 0, preview.getvalue()
    code, full = run_in_process(model, output=str(tmp_path / "full"), stage="propagate", **common)
    assert code == 0, full.getvalue()
    (p,) = preview.events("done")
    (f,) = full.events("done")
    assert p["keyframes"] == f["keyframes"] == keyframes.fixed(10, 4) == [0, 3, 6, 9]
    assert p["indices"] == p["keyframes"]
    assert len(f["files"]) == 10
    for index, preview_file in zip(p["indices"], p["files"], strict=True):
        diff = np.abs(read(preview_file) - read(f["files"][index])).max()
        assert diff <= 1, f"keyframe {index} differs by {diff}/255 between preview and propagation"
    # A preview costs the keyframes' UNet work only: K of N frames per step.
    assert p["stats"]["propagate_unet_frames"] == 0
    assert p["stats"]["keyframe_unet_frames"] == 3 * 4
    # Propagation steps the 6 other frames only: the keyframe pass already stepped the keyframes.
    assert f["stats"]["propagate_unet_frames"] == 3 * 6
    # Non-keyframes are not simply copies of a keyframe.
    assert np.abs(read(f["files"][1]) - read(f["files"][0])).max() > 0


def test_matching_recovers_a_known_shift():
    torch.manual_seed(0)
    h, w, d, shift = 12, 16, 24, 3
    grid = torch.randn(h, w + shift, d)
    key = grid[:, :w].reshape(-1, d)  # the keyframe
    frame = grid[:, shift:].reshape(-1, d)  # the same content moved `shift` tokens left
    idx = nearest_tokens(frame, key, block=17)  # odd block size: block edges must not matter
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    visible = cols + shift < w
    expected = rows * w + cols + shift
    assert torch.equal(idx.view(h, w)[visible], expected[visible])


def test_matching_prefers_the_same_position_among_equal_tokens():
    tokens = torch.ones(10, 4)  # a flat region: every token equal
    assert torch.equal(nearest_tokens(tokens, tokens.clone()), torch.arange(10))


def test_second_prompt_runs_no_inversion_and_changed_frame_misses(model, city16, tmp_path):
    shot = tmp_path / "shot"
    shutil.copytree(city16[0].parent, shot)
    frames = sorted(str(p) for p in shot.glob("*.png"))[:8]
    cache = str(tmp_path / "cache")
    code, first = run_in_process(
        model, frames=frames, output=str(tmp_path / "a"), prompt="a red car", cache_dir=cache
    )
    assert code == 0
    (done,) = first.events("done")
    assert done["stats"]["inversion_unet_frames"] == 8 * 3
    assert done["stats"]["cache_misses"] == 8

    code, second = run_in_process(
        model, frames=frames, output=str(tmp_path / "b"), prompt="a blue car", cache_dir=cache
    )
    (done,) = second.events("done")
    assert done["stats"]["inversion_unet_frames"] == 0
    assert done["stats"]["cache_hits"] == 8

    image = cv2.imread(frames[5])
    image[10:20, 10:20] = 255 - image[10:20, 10:20]
    cv2.imwrite(frames[5], image)
    code, third = run_in_process(
        model, frames=frames, output=str(tmp_path / "c"), prompt="a blue car", cache_dir=cache
    )
    (done,) = third.events("done")
    assert done["stats"]["cache_misses"] == 1
    assert done["stats"]["inversion_unet_frames"] == 3  # one frame, three steps

    # Another working size is another inversion.
    code, fourth = run_in_process(
        model, frames=frames, output=str(tmp_path / "d"), prompt="a blue car", cache_dir=cache, size=128
    )
    (done,) = fourth.events("done")
    assert done["stats"]["cache_misses"] == 8


@pytest.mark.parametrize(("steps", "f_t", "attn_t"), [(10, 0.8, 0.5), (7, 0.3, 1.0), (6, 0.0, 0.5)])
def test_injection_is_active_for_the_configured_fraction(model, city16, tmp_path, steps, f_t, attn_t):
    from engine.images.frames import read_shot, to_working
    from engine.method.editing import Editor, EditSettings, Prompts
    from engine.method.inversion import encode, invert
    from engine.run.runner import _to_tensor

    shot = read_shot(city16[:5])
    clean = encode(model, _to_tensor([to_working(f.load(), (64, 64)) for f in shot.frames]))
    empty = model.encode_prompt("")
    timesteps, latents = invert(model, clean, empty, steps)
    settings = EditSettings(steps=steps, pnp_f_t=f_t, pnp_attn_t=attn_t, keyframe_stride=2, chunk_size=3)
    index = {t: i for i, t in enumerate(timesteps)}
    editor = Editor(
        model, settings, lambda t: latents[index[t]], Prompts(empty, empty, model.encode_prompt("x"))
    )
    result = editor.run(preview=False)
    conv = sorted(s for s, kind in result.injections if kind == "conv")
    qk = sorted(s for s, kind in result.injections if kind == "qk")
    assert conv == list(range(int(steps * f_t)))
    assert qk == list(range(int(steps * attn_t)))


def test_sdedit_injects_nothing_and_skips_the_noisiest_steps(model, city16, tmp_path):
    code, events = run_in_process(
        model,
        frames=[str(f) for f in city16[:4]],
        output=str(tmp_path / "o"),
        prompt="a red car",
        edit_mode="sdedit",
        sdedit_strength=0.5,
        steps=6,
        cache_dir=str(tmp_path / "cache"),
    )
    assert code == 0, events.getvalue()
    (done,) = events.events("done")
    assert done["stats"]["injection_steps"] == {"residual": 0, "qk": 0}
    keyframe_calls = done["stats"]["keyframe_unet_frames"] // len(done["keyframes"])
    assert keyframe_calls == 3  # half of six steps


def test_seed_changes_resampled_keyframes_and_output(model, city16, tmp_path):
    common = dict(
        frames=[str(f) for f in city16[:8]],
        prompt="a red car",
        keyframe_mode="resample",
        keyframe_stride=4,
        cache_dir=str(tmp_path / "cache"),
        steps=4,
    )
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 11)):
        code, events = run_in_process(model, output=str(tmp_path / name), seed=seed, **common)
        assert code == 0
        runs[name] = events
    a, b, c = (outputs(runs[n]) for n in "abc")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_keyframe_choices():
    assert keyframes.fixed(1, 8) == [0]
    assert keyframes.fixed(40, 8) == [0, 8, 16, 23, 31, 39]
    assert max(np.diff(keyframes.fixed(100, 8))) <= 8
    draws = [keyframes.resample(20, 8, seed=1, step=s) for s in range(6)]
    for keys in draws:
        assert [k // 8 for k in keys] == [0, 1, 2]  # one inside each block
    assert len({tuple(k) for k in draws}) > 1  # re-drawn across steps
    assert keyframes.resample(20, 8, 1, 4) == keyframes.resample(20, 8, 1, 4)  # a pure function
    src = keyframes.sources([0, 2, 3, 9], [0, 3, 7])
    assert src[0].exact and src[2].exact
    assert (src[1].a, src[1].b) == (0, 1) and src[1].weight_a == pytest.approx(1 / 3)
    assert (src[3].a, src[3].b, src[3].weight_a) == (2, 2, 1.0)


def test_one_frame_is_valid_and_results_keep_source_size_and_depth(model, city16, tmp_path):
    image = cv2.imread(str(city16[0]))
    deep = tmp_path / "deep.tif"
    cv2.imwrite(str(deep), cv2.resize(image, (150, 61)).astype(np.uint16) * 257)
    code, events = run_in_process(
        model,
        frames=[str(deep)],
        output=str(tmp_path / "o"),
        prompt="a red car",
        cache_dir=str(tmp_path / "cache"),
        size=128,
    )
    assert code == 0, events.getvalue()
    (started,) = events.events("started")
    assert (started["width"], started["height"]) == (128, 64)
    (done,) = events.events("done")
    assert [Path(f).name for f in done["files"]] == ["deep.png"]
    out = cv2.imread(done["files"][0], cv2.IMREAD_UNCHANGED)
    assert out.shape == (61, 150, 3) and out.dtype == np.uint16


def test_keyframe_passes_cover_each_keyframe_once_and_stay_bounded():
    assert keyframes.passes(5, 8, 3) == [keyframes.KeyframePass([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])]
    for n in (9, 33, 200):
        batches = keyframes.passes(n, 8, 3)
        owned = [p for b in batches for p in b.owned]
        assert owned == list(range(n))
        assert max(len(b.members) for b in batches) <= 8 + 2 + 3
        for b in batches:  # neighbours across the group border are context
            if b.owned[0] > 0:
                assert b.owned[0] - 1 in b.members


def test_grouped_keyframe_pass_bounds_the_unet_batch(model, city16, tmp_path):
    sizes: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    common = dict(
        frames=[str(f) for f in city16[:12]],
        prompt="a red car",
        keyframe_stride=1,
        steps=2,
        cache_dir=str(tmp_path / "cache"),
        keyframe_batch=3,
        keyframe_anchors=1,
        chunk_size=4,
    )
    try:
        code, preview = run_in_process(model, output=str(tmp_path / "p"), stage="preview", **common)
        sizes.clear()
        code2, full = run_in_process(model, output=str(tmp_path / "f"), **common)
    finally:
        hook.remove()
    assert code == code2 == 0, full.getvalue()
    assert max(sizes) <= 3 * (3 + 2 + 1)  # 12 keyframes, never all 12 (36 frames) at once
    (p,) = preview.events("done")
    (f,) = full.events("done")
    assert p["keyframes"] == list(range(12))
    for a, b in zip(p["files"], f["files"], strict=True):
        assert np.abs(read(a) - read(b)).max() <= 2


@pytest.mark.parametrize("frame_range", [None, [4, 8]])
def test_evaluate_option_reports_metrics(model, city16, tmp_path, frame_range):
    code, events = run_in_process(
        model,
        frames=[str(f) for f in city16[:8]],
        output=str(tmp_path / "o"),
        prompt="a red car",
        cache_dir=str(tmp_path / "cache"),
        evaluate=True,
        frame_range=frame_range,
    )
    assert code == 0, events.getvalue()
    (done,) = events.events("done")
    summary = done["metrics"]["summary"]
    assert summary["warp_error"] > 0 and summary["warp_error_source"] > 0
    assert done["metrics"]["summary_line"].startswith("warp error")
    assert "evaluate" in {e["stage"] for e in events.events("progress")}
