"""The edit metrics on cases whose answer is known, with real frames from shipped clips."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.quality import metrics
from tests.clips import extract_frames

PAN = 3  # pixels per frame


def _rgb(paths: list[Path]) -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def _means(figures: metrics.ShotFigures) -> dict[str, float | None]:
    return {key: metrics.shot_mean(values) for key, values in asdict(figures).items()}


@pytest.fixture(scope="module")
def bikes(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """8 consecutive frames of bikes.mp4 inside one shot (its cuts are at 30, 76, 137, ...), 256 px."""
    return _rgb(extract_frames("bikes.mp4", tmp_path_factory.mktemp("bikes"), 8, start=80, width=256))


@pytest.fixture(scope="module")
def bikes_self(bikes: list[np.ndarray]) -> dict[str, float | None]:
    return _means(metrics.measure_shot(bikes, bikes))


@pytest.fixture(scope="module")
def pan(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """A pure camera pan: 192x144 windows of one real frame, moved right by PAN whole pixels a frame."""
    (path,) = extract_frames("bigbuckbunny.mp4", tmp_path_factory.mktemp("bbb"), 1, start=0, width=640)
    image = _rgb([path])[0]
    return [image[100:244, 200 + k * PAN : 392 + k * PAN] for k in range(6)]


def test_shot_against_itself_is_at_the_floor(bikes: list[np.ndarray], bikes_self: dict) -> None:
    assert bikes_self["warp_error"] == bikes_self["warp_error_source"]
    assert bikes_self["motion_error"] == 0.0
    assert bikes_self["flicker"] == bikes_self["flicker_source"]
    assert bikes_self["flicker_excess"] == 0.0
    assert bikes_self["structure_ssim"] == pytest.approx(1.0)
    # the floor is the flow's own residual: small on a 0-255 scale, and well below doing no warping
    unwarped = np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(bikes, bikes[1:], strict=False)])
    assert 0.3 < bikes_self["warp_error_source"] < 6.0
    assert bikes_self["warp_error_source"] < unwarped / 1.5


def test_shuffled_frames_break_every_temporal_figure(bikes: list[np.ndarray], bikes_self: dict) -> None:
    order = [3, 0, 6, 1, 7, 2, 5, 4]
    shuffled = _means(metrics.measure_shot(bikes, [bikes[i] for i in order]))
    assert shuffled["warp_error"] > 3 * bikes_self["warp_error_source"]
    assert shuffled["warp_error_source"] == bikes_self["warp_error_source"]  # the source is untouched
    assert shuffled["motion_error"] > 2.0
    assert shuffled["flicker"] > shuffled["flicker_source"]
    assert shuffled["structure_ssim"] < 0.8


def test_one_noise_frame_spikes_its_two_steps_only(bikes: list[np.ndarray]) -> None:
    noisy = list(bikes)
    noisy[4] = np.random.default_rng(0).integers(0, 256, bikes[0].shape, dtype=np.uint8)
    figures = metrics.measure_shot(bikes, noisy)
    source = metrics.measure_shot(bikes, bikes)
    for step, (edit, floor) in enumerate(zip(figures.warp_error, source.warp_error, strict=True)):
        if step in (3, 4):  # 3 -> 4 and 4 -> 5 touch the noise frame
            assert edit > 40.0, step
        else:
            assert edit == pytest.approx(floor, abs=1e-6), step
    assert figures.structure_ssim[4] < 0.2
    assert all(v == pytest.approx(1.0) for i, v in enumerate(figures.structure_ssim) if i != 4)
    means = _means(figures)
    assert means["warp_error"] > 4 * means["warp_error_source"]
    assert means["flicker_excess"] > 2.0


def test_alternating_brightness_is_flicker_not_structure(bikes: list[np.ndarray]) -> None:
    lifted = [np.clip(f.astype(int) + 20 * (i % 2), 0, 255).astype(np.uint8) for i, f in enumerate(bikes)]
    means = _means(metrics.measure_shot(bikes, lifted))
    assert means["flicker_excess"] == pytest.approx(20.0, abs=1.5)  # a little is lost to clipping at 255
    assert means["warp_error"] == pytest.approx(20.0, abs=2.0)
    assert means["structure_ssim"] > 0.98
    assert means["motion_error"] < 1.0


def test_structure_ignores_colour_but_sees_shapes(bikes: list[np.ndarray]) -> None:
    frame = bikes[0]
    inverted = 255 - frame  # every colour changes, every edge stays
    assert metrics.structure_ssim(frame, inverted) == pytest.approx(1.0, abs=1e-3)
    assert metrics.structure_ssim(frame, frame[:, ::-1]) < 0.5  # mirrored: the shapes moved
    blurred = cv2.GaussianBlur(frame, (0, 0), 3)
    assert 0.2 < metrics.structure_ssim(frame, blurred) < 0.8


def test_pure_pan_flow_is_the_pan(pan: list[np.ndarray]) -> None:
    forward = metrics.dis_flow(pan[0], pan[1])
    backward = metrics.dis_flow(pan[1], pan[0])
    # window k+1 shows window k's content moved left by PAN pixels
    np.testing.assert_allclose(np.median(forward.reshape(-1, 2), axis=0), [-PAN, 0], atol=0.05)
    np.testing.assert_allclose(np.median(backward.reshape(-1, 2), axis=0), [PAN, 0], atol=0.05)
    mask = metrics.source_motion(pan[0], pan[1]).mask
    width = mask.shape[1]
    assert not mask[:, width - PAN + 1 :].any()  # these pixels come from outside the previous frame
    assert mask.mean() > 0.9 * (width - PAN) / width


def test_pure_pan_motion_error_counts_pixels(pan: list[np.ndarray]) -> None:
    same = _means(metrics.measure_shot(pan, pan))
    still = _means(metrics.measure_shot(pan, [pan[0]] * len(pan)))
    backwards = _means(metrics.measure_shot(pan, pan[::-1]))
    assert same["warp_error_source"] < 1.0  # a whole-pixel shift warps back almost exactly
    assert same["motion_error"] == 0.0
    assert still["motion_error"] == pytest.approx(PAN, abs=0.2)
    assert backwards["motion_error"] == pytest.approx(2 * PAN, abs=0.3)
    assert same["warp_error"] < still["warp_error"] < backwards["warp_error"]
    assert still["warp_error"] > 10 * same["warp_error"]


def test_float_frames_measure_like_uint8(pan: list[np.ndarray]) -> None:
    as_float = [f.astype(np.float32) / 255.0 for f in pan]
    a = _means(metrics.measure_shot(pan, pan[::-1]))
    b = _means(metrics.measure_shot(as_float, as_float[::-1]))
    for key, value in a.items():
        assert b[key] == pytest.approx(value, rel=1e-3, abs=1e-3), key


def test_pieces_on_simple_inputs() -> None:
    grey = np.full((8, 8, 3), 100, np.uint8)
    assert metrics.colour_change(grey, grey + 10) == pytest.approx(10.0, abs=1e-3)
    assert metrics.structure_ssim(grey, grey) == pytest.approx(1.0)
    nothing = np.zeros((8, 8), bool)
    assert np.isnan(metrics.masked_abs_error(grey, grey + 10, nothing))
    assert metrics.masked_abs_error(grey, grey + 10, ~nothing) == pytest.approx(10.0, abs=1e-3)
    assert metrics.shot_mean([float("nan"), 2.0, 4.0]) == 3.0
    assert metrics.shot_mean([]) is None
    flow = np.zeros((8, 8, 2), np.float32)
    assert metrics.endpoint_error(flow, flow + [3.0, 4.0]) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.structure_ssim(grey, grey[:4])
    with pytest.raises(ValueError):
        metrics.measure_shot([grey, grey], [grey])  # frame counts must agree


def make_tiny_clip(folder: Path) -> Path:
    """A random-weight CLIP with a letter vocabulary, saved like a real one (nothing downloaded)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor  # no torchvision here
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as ImageProcessor

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {**layers, "vocab_size": len(vocab), "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = {**layers, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    images = ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_clip_scores_from_a_local_folder(tiny_clip: Path, pan: list[np.ndarray]) -> None:
    scores = metrics.clip_scores(pan[:3], "a rabbit in a meadow", tiny_clip)
    again = metrics.clip_scores(iter(pan[:3]), "a rabbit in a meadow", tiny_clip)
    assert len(scores) == 3 and scores == pytest.approx(again)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    other = metrics.clip_scores(pan[:3], "zzzz qqqq", tiny_clip)
    assert other != pytest.approx(scores)  # the prompt is really used


def test_clip_refuses_a_folder_without_a_model(tmp_path: Path, pan: list[np.ndarray]) -> None:
    with pytest.raises(FileNotFoundError, match="not a CLIP model folder"):
        metrics.clip_scores(pan[:1], "a cat", tmp_path)
