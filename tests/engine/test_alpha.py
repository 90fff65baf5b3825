"""A PNG source's alpha comes back in its result, value for value; the model only edits colour."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.images import frames as frames_mod
from tests.engine.test_matte import watercolor, write_mattes


def rgba_frames(city16: list[Path], folder: Path, depth: int) -> list[str]:
    """Four clip frames with an alpha that differs per pixel and per frame (a soft, moving key)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, p in enumerate(city16[:4]):
        bgr = cv2.imread(str(p))
        h, w = bgr.shape[:2]
        ramp = (np.arange(w)[None, :] * 3 + np.arange(h)[:, None] * 2 + 17 * i) % 256
        alpha = ramp.astype(np.uint8)
        if depth == 16:
            bgr = bgr.astype(np.uint16) * 257
            alpha = alpha.astype(np.uint16) * 257 + 3  # values an 8-bit alpha cannot hold
        path = folder / p.name
        assert cv2.imwrite(str(path), np.dstack([bgr, alpha]))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize(("depth", "matte"), [(8, False), (16, True)])
def test_png_alpha_comes_back_bit_for_bit(model, city16, tmp_path, depth, matte):
    sources = rgba_frames(city16, tmp_path / "frames", depth)
    written = watercolor(model, sources, tmp_path, write_mattes(tmp_path / "matte", 4) if matte else [])
    for source, result in zip(sources, written, strict=True):
        src = cv2.imread(source, cv2.IMREAD_UNCHANGED)
        out = cv2.imread(result, cv2.IMREAD_UNCHANGED)
        assert out.shape == src.shape and out.dtype == src.dtype  # RGBA at the source's depth
        assert np.array_equal(out[..., 3], src[..., 3])
        scale = 255.0 if depth == 8 else 65535.0
        assert np.abs(out[..., :3].astype(float) - src[..., :3]).mean() / scale > 0.01  # colour edited


def test_only_png_alpha_is_carried(city16, tmp_path):
    """Opaque sources get no alpha invented; a TIFF's alpha is not carried (OpenCV hands its colour
    multiplied by the alpha, so the colour over black is what the model edits and the result holds)."""
    rgb = np.asarray(Image.open(city16[0]).convert("RGB"))
    h, w = rgb.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "t.tif")
    shot = frames_mod.read_shot([city16[0], tmp_path / "a.png", tmp_path / "grey.png", tmp_path / "t.tif"])
    assert [f.alpha for f in shot.frames] == [False, True, True, False]
    assert shot.frames[0].load_alpha() is None
    assert np.array_equal(shot.frames[1].load_alpha(), alpha)
    assert np.array_equal(shot.frames[2].load_alpha(), alpha)


def test_alpha_of_another_size_or_depth_is_refused(tmp_path):
    image = np.zeros((4, 6, 3), np.float32)
    with pytest.raises(ValueError, match="alpha"):
        frames_mod.write_png(tmp_path / "x.png", image, 8, np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        frames_mod.write_png(tmp_path / "x.png", image, 16, np.zeros((4, 6), np.uint8))
    assert not (tmp_path / "x.png").exists()
