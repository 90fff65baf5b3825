"""The working size keeps the source's aspect ratio exactly: scale, pad to 64s, crop back."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.images import frames
from tests.engine.conftest import run_in_process


@pytest.mark.parametrize(
    ("source", "long_side", "scaled", "padded", "padding"),
    [
        ((500, 300), 256, (256, 154), (256, 192), (19, 19, 0, 0)),
        ((97, 61), 64, (64, 40), (64, 64), (12, 12, 0, 0)),
        ((640, 272), 512, (512, 218), (512, 256), (19, 19, 0, 0)),
        ((61, 97), 128, (80, 128), (128, 128), (0, 0, 24, 24)),
        ((512, 256), 512, (512, 256), (512, 256), (0, 0, 0, 0)),
    ],
)
def test_geometry_keeps_the_aspect_and_pads_to_64(source, long_side, scaled, padded, padding):
    geom = frames.geometry(*source, long_side)
    assert geom.scaled == scaled and geom.padded == padded and geom.padding == padding
    assert all(side % 64 == 0 for side in geom.padded) and max(geom.padded) == long_side
    # the picture's aspect is the source's, to the rounding of one pixel
    w, h = geom.scaled
    assert abs(w / h - source[0] / source[1]) <= source[0] / source[1] * (1 / min(w, h))
    assert frames.working_size(*source, long_side) == padded


def _pattern(width: int, height: int) -> np.ndarray:
    """A filled disc on a gradient: its shape shows any stretching, its place any shift."""
    image = np.zeros((height, width, 3), np.float32)
    image[..., 0] = np.linspace(0, 1, width)[None, :]
    image[..., 1] = np.linspace(0, 1, height)[:, None]
    r = min(width, height) // 3
    cv2.circle(image, (width // 3, height // 2), r, (1.0, 1.0, 1.0), -1)
    return image


def _disc_box(image: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(image.min(axis=2) > 0.9)
    return xs.min(), xs.max(), ys.min(), ys.max()


@pytest.mark.parametrize(("source", "long_side"), [((500, 300), 256), ((97, 61), 64), ((640, 272), 512)])
def test_to_working_then_to_source_restores_the_geometry(source, long_side):
    geom = frames.geometry(*source, long_side)
    image = _pattern(*source)
    canvas = frames.to_working(image, geom)
    assert canvas.shape == (geom.padded[1], geom.padded[0], 3)
    # On the canvas the disc is round (no stretch); the picture sits between the paddings.
    top, bottom, left, right = geom.padding
    picture = canvas[top : geom.padded[1] - bottom, left : geom.padded[0] - right]
    assert picture.shape[:2] == (geom.scaled[1], geom.scaled[0])
    x0, x1, y0, y1 = _disc_box(picture)
    assert abs((x1 - x0) - (y1 - y0)) <= 2, (x0, x1, y0, y1)
    # The padding reflects the picture (no hard edge for the model to see).
    if top:
        np.testing.assert_allclose(canvas[top - 1], canvas[top + 1])
        np.testing.assert_allclose(canvas[-bottom], canvas[-bottom - 2])
    back = frames.to_source(canvas, geom)
    assert back.shape == image.shape
    sx0, sx1, sy0, sy1 = _disc_box(image)
    bx0, bx1, by0, by1 = _disc_box(back)
    tol = max(2, round(max(source) / long_side) + 1)  # one canvas pixel, at the source scale
    assert max(abs(bx0 - sx0), abs(bx1 - sx1), abs(by0 - sy0), abs(by1 - sy1)) <= tol
    assert np.abs(back - image).mean() < 0.03


def test_odd_sized_frames_come_back_at_their_source_size(model, city16, tmp_path):
    shot = tmp_path / "shot"
    shot.mkdir()
    for p in city16[:3]:
        cv2.imwrite(str(shot / p.name), cv2.resize(cv2.imread(str(p)), (97, 61)))
    out = tmp_path / "out"
    code, events = run_in_process(
        model,
        frames=sorted(str(p) for p in shot.iterdir()),
        output=str(out),
        prompt="a red car",
        cache_dir=str(tmp_path / "cache"),
        size=64,
        steps=2,
    )
    assert code == 0, events.getvalue()
    (started,) = events.events("started")
    assert (started["width"], started["height"], started["padding"]) == (64, 64, [12, 12, 0, 0])
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == [Path(p).name for p in sorted(shot.iterdir())]
    assert all(cv2.imread(str(p)).shape == (61, 97, 3) for p in written)
