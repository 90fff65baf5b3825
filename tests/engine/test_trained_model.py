"""Method tests that need a model that has learned something: the committed micro SD (models/microsd).

With random weights every output is noise, so a wrong latent scale, a wrong timestep pairing in the
inversion or injection into the wrong copy went unnoticed. The trained model reconstructs frames it never
saw (the held-out last quarter of carphone_pristine.mp4) and knows a few styles whose ground truth is
an OpenCV filter, so these assertions fail when the method is broken. Small sizes keep them cheap.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.engine.conftest import run_in_process

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "microsd"
CLIP = "carphone_pristine.mp4"
CAPTION = "a man in a suit talking in a car"
SIZE = 128  # carphone at working size 128: 128x128 frames, 16x16 latents
STEPS = 10


@pytest.fixture(scope="module")
def trained():
    from engine.model import devices, loading

    return loading.load(str(MODEL), devices.choose("cpu"))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 held-out frames at the working size, and their pencil-sketch ground truth beside them."""
    import cv2

    from training.data import read_clip, resize_to_working, split
    from training.styles import STYLES

    folder = tmp_path_factory.mktemp("carphone_held_out")
    frames = read_clip(CLIP)
    for i in split(len(frames))[1][:8]:
        image = resize_to_working(frames[i], SIZE)
        for name, picture in (("source", image), ("pencil", STYLES["pencil"].apply(image))):
            (folder / name).mkdir(exist_ok=True)
            cv2.imwrite(str(folder / name / f"frame_{i:04d}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return folder


def read(folder: Path) -> list[np.ndarray]:
    import cv2

    return [cv2.imread(str(p)).astype(np.float32) / 255 for p in sorted(folder.glob("*.png"))]


def psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    mse = float(np.mean([np.mean((x - y) ** 2) for x, y in zip(a, b, strict=True)]))
    return 10 * math.log10(1 / mse)


def run(trained, frames: Path, out: Path, count: int, **fields) -> list[np.ndarray]:
    files = [str(p) for p in sorted(frames.glob("*.png"))[:count]]
    fields = {"source_prompt": CAPTION, "negative_prompt": "", "steps": STEPS, "size": SIZE, **fields}
    code, stream = run_in_process(trained, frames=files, output=str(out), **fields)
    assert code == 0, stream.events("error")
    return read(out)


def vae_round_trip(trained, images: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    from engine.method.editing import decode_chunks
    from engine.method.inversion import encode

    rgb = np.stack([im[..., ::-1] for im in images])
    latents = encode(trained, torch.from_numpy(rgb.copy()).permute(0, 3, 1, 2) * 2 - 1)
    return [im.permute(1, 2, 0).numpy()[..., ::-1] for im in decode_chunks(trained, latents)]


def test_inversion_then_denoising_reconstructs_unseen_frames(trained, held_out, tmp_path):
    """Invert, then denoise with the source prompt at guidance 1 (no edit): the frames come back as
    nearly as the VAE alone returns them (a wrong latent scale or timestep pairing loses many dB)."""
    source = read(held_out / "source")[:4]
    vae = psnr(vae_round_trip(trained, source), source)
    rec = psnr(run(trained, held_out / "source", tmp_path / "rec", 4, prompt=CAPTION, guidance=1.0,
                   method="per-frame"), source)  # fmt: skip
    assert vae > 18.0
    assert rec > vae - 3.0, (rec, vae)


def test_pencil_sketch_edit_moves_toward_its_ground_truth(trained, held_out, tmp_path):
    source, truth = read(held_out / "source")[:4], read(held_out / "pencil")[:4]
    edited = run(trained, held_out / "source", tmp_path / "pencil", 4, prompt=f"a pencil sketch of {CAPTION}",
                 method="tokenflow", keyframe_stride=2)  # fmt: skip
    assert psnr(edited, truth) > psnr(source, truth) + 0.5


def test_tokenflow_is_steadier_than_per_frame_editing(trained, held_out, tmp_path):
    from engine.quality.evaluate import evaluate_folders

    prompt = f"a watercolor painting of {CAPTION}"
    warp = {}
    for method in ("per-frame", "tokenflow"):
        out = tmp_path / method
        run(trained, held_out / "source", out, 8, prompt=prompt, method=method, keyframe_stride=4)
        warp[method] = evaluate_folders(held_out / "source", out)["summary"]["warp_error"]
    assert warp["tokenflow"] < warp["per-frame"], warp
