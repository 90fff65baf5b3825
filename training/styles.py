"""Picture styles made by OpenCV filters: each is a caption and a filter, so every styled edit has a
ground truth (the same filter on the source frame). Shared by training and the edit benchmark."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np


def _pencil(rgb: np.ndarray) -> np.ndarray:
    gray, _ = cv2.pencilSketch(
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), sigma_s=40, sigma_r=0.07, shade_factor=0.05
    )
    return np.repeat(gray[..., None], 3, axis=2)


def _watercolor(rgb: np.ndarray) -> np.ndarray:
    bgr = cv2.stylization(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), sigma_s=40, sigma_r=0.45)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _gray(rgb: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[..., None], 3, axis=2)


_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)


def _sepia(rgb: np.ndarray) -> np.ndarray:
    out = rgb.astype(np.float32) @ _SEPIA.T
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Style:
    name: str
    template: str  # "{}" is the clip's caption
    apply: Callable[[np.ndarray], np.ndarray]  # RGB uint8 (H, W, 3) -> RGB uint8 (H, W, 3)

    def caption(self, subject: str) -> str:
        return self.template.format(subject)


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style("pencil", "a pencil sketch of {}", _pencil),
        Style("watercolor", "a watercolor painting of {}", _watercolor),
        Style("bw", "a black and white photo of {}", _gray),
        Style("sepia", "an old sepia photo of {}", _sepia),
    )
}
