"""Mattes that limit the edit: one image per frame, white where the edit applies.

A matte is read through OpenImageIO (PNG, JPEG, TIFF at 8/16 bits, EXR), from its alpha channel or
its luminance, optionally inverted, and feathered: a Gaussian blur with sigma = feather / 3, cut off
at `feather` pixels, so the soft edge reaches `feather` source pixels beyond the drawn matte and
every pixel farther away keeps exactly 0 (and its source values). The edit follows it twice: the
latents outside it follow the source's inverted trajectory at every step (editing.py), and the
decoded edit is composited over the source frame with it at full resolution (delivery.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import OpenImageIO as oiio
import torch

from ..errors import BadInput

LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec.709 weights, on the file's values


class Matte:
    """The mattes of a shot: checked at once, decoded again when a frame needs its matte."""

    def __init__(self, paths: list[str], channel: str, invert: bool, feather: float) -> None:
        self.paths = [Path(p) for p in paths]
        self.channel = channel
        self.invert = invert
        self.feather = float(feather)

    def raw(self, index: int) -> np.ndarray:
        """The matte of frame `index` before feathering: H x W float32 in [0, 1]."""
        path = self.paths[index]
        hints = oiio.ImageSpec()
        hints.attribute("oiio:UnassociatedAlpha", 1)  # colour as stored, not multiplied by alpha
        buf = oiio.ImageBuf(str(path), 0, 0, hints)
        pixels = None if buf.has_error else buf.get_pixels(oiio.FLOAT, buf.roi_full)  # display window
        if pixels is None or buf.has_error:
            raise BadInput(f"matte {path} could not be read ({buf.geterror()}); export it as PNG or EXR")
        spec = buf.spec()
        alpha = spec.alpha_channel
        pixels = np.asarray(pixels, np.float32).reshape(spec.full_height, spec.full_width, spec.nchannels)
        use_alpha = self.channel == "alpha" or (self.channel == "auto" and alpha >= 0)
        if use_alpha:
            if alpha < 0:
                raise BadInput(
                    f"matte {path.name} has no alpha channel; set the matte channel to luminance (or auto)"
                )
            value = pixels[..., alpha]
        elif spec.nchannels >= 3:
            colour = [c for c in range(spec.nchannels) if c != alpha][:3]
            value = pixels[..., colour] @ LUMA
        else:
            value = pixels[..., 0]
        value = np.clip(value, 0.0, 1.0)
        return 1.0 - value if self.invert else value

    def full(self, index: int) -> np.ndarray:
        """The feathered matte of frame `index` at the source size (H x W float32 in [0, 1])."""
        return feathered(self.raw(index), self.feather)

    def check(self, size: tuple[int, int], count: int) -> None:
        """Refuse mattes of another count or size, or a matte that is black in every frame."""
        if len(self.paths) != count:
            raise BadInput(
                f"the matte has {len(self.paths)} frames but the shot has {count}; give one matte per frame"
            )
        empty = True
        for i, path in enumerate(self.paths):
            if not path.is_file():
                raise BadInput(f"matte file {path} does not exist (or is not a file); check the matte list")
            value = self.raw(i)
            h, w = value.shape
            if (w, h) != size:
                raise BadInput(
                    f"matte {path.name} is {w}x{h} but the frames are {size[0]}x{size[1]}; "
                    "render the matte at the frames' size"
                )
            empty = empty and not bool(value.max() > 0.0)
        if empty:
            hint = "turn invert off" if self.invert else "check the matte channel or invert it"
            raise BadInput(
                f"the matte is empty (black in every frame{', after invert' if self.invert else ''}): "
                f"nothing would be edited; {hint}, or clear the matte to edit the whole frame"
            )

    def latents(self, count: int, working, grid: tuple[int, int]) -> torch.Tensor:
        """(count, 1, h, w) mattes on the latent grid: feathered, brought to the working size as the
        frames are (`working(image)`), then area-averaged onto the grid (w, h)."""
        out = torch.zeros(count, 1, grid[1], grid[0])
        for i in range(count):
            image = working(np.repeat(self.full(i)[..., None], 3, axis=2))[..., 0]
            small = cv2.resize(np.clip(image, 0.0, 1.0), grid, interpolation=cv2.INTER_AREA)
            out[i, 0] = torch.from_numpy(np.clip(small, 0.0, 1.0))
        return out


def feathered(value: np.ndarray, feather: float) -> np.ndarray:
    """Gaussian feather (sigma = feather / 3, cut off at `feather` pixels); 0 leaves the matte as is."""
    if feather <= 0:
        return value.astype(np.float32, copy=False)
    radius = max(1, math.ceil(feather))
    size = 2 * radius + 1
    blurred = cv2.GaussianBlur(
        value.astype(np.float32), (size, size), feather / 3.0, borderType=cv2.BORDER_REPLICATE
    )
    return np.clip(blurred, 0.0, 1.0)


def limit(x: torch.Tensor, source: torch.Tensor, matte: torch.Tensor) -> torch.Tensor:
    """Latents inside the matte, the source's (same timestep) outside: m * x + (1 - m) * source."""
    return matte * x + (1.0 - matte) * source


def from_job(paths: list[str], channel: str, invert: bool, feather: float) -> Matte | None:
    return Matte(paths, channel, invert, feather) if paths else None
