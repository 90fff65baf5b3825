"""The engine at the reference-reproducing setting against the reference code's own output.

`data/reference_edit.safetensors` holds the edited latents the reference implementation
(omerbt/TokenFlow 5dd6a69) computed for 8 real frames of bikes.mp4 at 128x64 on a tiny random model, 10 steps,
stride 4 (two keyframe blocks: the blend of two keyframes and the keyframes' re-run both occur),
made by bench/reference_parity.py (the command is in the file's metadata). The reference itself is
not needed here. The engine's edit must match it to 8-bit rounding (55 dB on every frame, decoded
by the same VAE); planted breaks of the propagation rule must not.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from engine import protocol
from engine.method import editing, keyframes
from engine.model import devices
from engine.model.loading import load
from engine.model.tiny_model import make_tiny_model

from .conftest import run_in_process

FIXTURE = Path(__file__).parent / "data" / "reference_edit.safetensors"
HEIGHT = 64
PARITY_DB = 55.0  # the bar: 8-bit rounding apart, on every frame


def fixture() -> tuple[torch.Tensor, dict[str, str]]:
    with safe_open(str(FIXTURE), framework="pt") as f:
        return f.get_tensor("latents"), dict(f.metadata())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    from bench.reference_parity import folder_digest, frames_digest, prepare_frames

    latents, meta = fixture()
    remake = f"remake it with `.venvs/engine/bin/python {meta['command']}`"
    work = tmp_path_factory.mktemp("parity")
    folder = make_tiny_model(work / "model", size="tiny", seed=int(meta["model_seed"]))
    assert folder_digest(folder) == meta["model_digest"], (
        f"the tiny model (seed {meta['model_seed']}) is not the one the fixture was made with; {remake}"
    )
    args = argparse.Namespace(
        frames="",
        n_frames=int(meta["n_frames"]),
        size=int(meta["size"]),
        height=HEIGHT,
        clip=meta["clip"],
        start=int(meta["start"]),
    )
    frames = prepare_frames(args, work / "frames")
    assert frames_digest(frames) == meta["frames_sha256"], f"the frames differ from the fixture's; {remake}"
    model = load(str(folder), devices.choose("cpu"))
    return model, frames, latents, meta, work


def edit_psnr(setup, name: str) -> list[float]:
    """Per-frame PSNR (dB, 8 bits) of the engine's edit at the reference setting to the fixture's."""
    import cv2

    model, frames, latents, meta, work = setup
    code, events = run_in_process(
        model,
        frames=[str(p) for p in frames],
        output=str(work / name),
        cache_dir=str(work / "cache"),
        prompt=meta["prompt"],
        negative_prompt=protocol.DEFAULT_NEGATIVE,
        source_prompt="",
        steps=int(meta["steps"]),
        inversion_steps=int(meta["inversion_steps"]),
        guidance=float(meta["guidance"]),
        seed=int(meta["seed"]),
        size=int(meta["size"]),
        keyframe_stride=int(meta["stride"]),
        chunk_size=int(meta["stride"]),
        keyframe_mode="resample",
        propagation="reference",
    )
    assert code == 0, events.events("error")
    done = events.events("done")[-1]
    reference = [
        np.round(image.permute(1, 2, 0).numpy() * 255) for image in editing.decode_chunks(model, latents)
    ]
    out = []
    for name_, ref in zip(done["files"], reference, strict=True):
        ours = cv2.cvtColor(cv2.imread(str(work / name / name_)), cv2.COLOR_BGR2RGB).astype(np.float64)
        mse = float(np.mean((ours - ref) ** 2))
        out.append(10 * math.log10(255**2 / mse) if mse else math.inf)
    return out


def test_the_fixture_is_small_and_says_how_it_was_made() -> None:
    latents, meta = fixture()
    assert FIXTURE.stat().st_size < 20_000
    assert latents.shape == (int(meta["n_frames"]), 4, HEIGHT // 8, int(meta["size"]) // 8)
    assert meta["command"].startswith("bench/reference_parity.py") and "--fixture" in meta["command"]
    assert meta["stride"] == "4" and int(meta["n_frames"]) == 8  # two blocks: blend and re-run occur


def test_the_engine_reproduces_the_reference_on_every_frame(setup) -> None:
    psnr = edit_psnr(setup, "exact")
    assert min(psnr) >= PARITY_DB, [round(p, 1) for p in psnr]


def _paper_weights(frames, keys, stride):
    return keyframes.sources(frames, keys)


def _next_block(frames, keys, stride):
    out = []
    for f in frames:
        block = f // stride
        other = min(block + 1, len(keys) - 1)
        out.append(keyframes.FrameSource(block, other, 0.6))
    return out


def _no_rerun(self, carried, keys):
    return [f for f in carried if f not in set(keys)]


@pytest.mark.parametrize(
    ("target", "name", "planted"),
    [
        (keyframes, "reference_sources", _paper_weights),  # the paper's pairing and linear weights
        (keyframes, "reference_sources", _next_block),  # the next block's keyframe, not the previous
        (editing.Editor, "propagated", _no_rerun),  # the keyframes keep the keyframe pass's step
    ],
    ids=["paper-weights", "next-block", "no-keyframe-rerun"],
)
def test_a_planted_break_of_propagation_is_caught(setup, monkeypatch, target, name, planted) -> None:
    monkeypatch.setattr(target, name, planted)
    psnr = edit_psnr(setup, f"planted-{planted.__name__}")
    assert min(psnr) < PARITY_DB - 10, [round(p, 1) for p in psnr]


def test_the_reference_pairing_blends_a_block_with_the_previous_one() -> None:
    got = keyframes.reference_sources(list(range(8)), [1, 6], stride=4)
    assert [(s.a, s.b, s.exact) for s in got[:4]] == [(0, 0, False)] * 4  # the first block: its keyframe
    assert [(s.a, s.b) for s in got[4:]] == [(1, 0)] * 4  # never the next block's keyframe
    sigmoid = [
        1 / (1 + math.exp(-x)) for x in (2 / 4, 3 / 4, 4 / 4, 5 / 6)
    ]  # d2 / (d1 + d2), middles 6 and 2
    assert [s.weight_a for s in got[4:]] == pytest.approx(sigmoid)
    with pytest.raises(ValueError, match="block 2"):
        keyframes.reference_sources([8], [1, 6], stride=4)


def test_reference_propagation_asks_for_resampled_keyframes() -> None:
    job = protocol.Job(frames=["a.png"], output="out", prompt="p", propagation="reference")
    with pytest.raises(protocol.JobError, match="keyframe_mode.*resample"):
        job.validate()
    protocol.Job(
        frames=["a.png"], output="out", prompt="p", propagation="reference", keyframe_mode="resample"
    ).validate()
