"""The frames the model sees and the frames the run writes, for colour-managed plates and mattes.

In: a frame in its colour space -> the working sRGB (colour.py) -> clipped to [0, 1] for the model.
Out: the decoded edit at the source size -> plus the source's out-of-range excess -> back to the
source's colour space -> composited over the source with the feathered matte -> written in the
source's format family (EXR plates as EXR with their header and channels, others as PNG at their
bit depth). Where the feathered matte is 0 the written values are the source's own decoded values,
never resampled, so those pixels are bit-identical to the source. A job without a colour space,
matte or EXR frames takes the plain path of frames.py, unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import BadInput
from . import colour as colours
from . import frames, plates
from .matte import Matte
from .matte import from_job as matte_from_job


class Delivery:
    """How one run reads frames for the model and writes its results."""

    def __init__(self, colour: colours.Colour | None, matte: Matte | None) -> None:
        self.colour = colour
        self.matte = matte

    @property
    def plain(self) -> bool:
        return self.matte is None and (self.colour is None or self.colour.identity)

    def check(self, shot: frames.Shot, evaluate: bool) -> None:
        """Refusals that need the frames: EXR without a colour space, mattes that do not fit."""
        exr = [f.path.name for f in shot.frames if plates.is_plate(f.path)]
        if exr and self.colour is None:
            raise BadInput(
                f"{exr[0]} is an EXR plate (scene-linear float): name its colour space ('colorspace', "
                "--colorspace, e.g. ACEScg or Linear Rec.709) and the OCIO config that defines it"
            )
        if exr and evaluate:
            raise BadInput("'evaluate' measures 8/16-bit sRGB frames; turn it off for EXR plates")
        if self.matte is not None:
            self.matte.check(shot.size, len(shot))
        if self.colour is not None and not self.colour.identity:
            for frame in shot.frames:
                frame.colour_key = self.colour.key  # the model sees converted pixels

    def model_input(self, frame: frames.Frame) -> np.ndarray:
        """The frame as the model sees it: working sRGB in [0, 1] (H x W x 3 float32)."""
        image = frame.load()
        if self.colour is None:
            return image
        return colours.model_input(self.colour.to_working(image))

    def latent_matte(self, count: int, size: frames.Geometry, factor: int) -> torch.Tensor | None:
        """The mattes on the latent grid of the working geometry (see matte.Matte.latents), or None."""
        if self.matte is None:
            return None
        grid = (size.padded[0] // factor, size.padded[1] // factor)
        return self.matte.latents(count, lambda image: frames.to_working(image, size), grid)

    def write(
        self, folder: Path, frame: frames.Frame, index: int, edit: np.ndarray, size: frames.Geometry
    ) -> str:
        """Write the decoded edit (H x W x 3 in [0, 1] on the working canvas) of shot frame `index`."""
        name = frames.result_name(frame.path)
        rgb = frames.to_source(edit, size)
        if self.plain and not plates.is_plate(frame.path):
            frames.write_png(folder / name, rgb, frame.bit_depth, frame.load_alpha())
            return name
        source, alpha = frame.load_with_alpha()  # the source's own decoded values, in its colour space
        out = rgb
        if self.colour is not None:
            out = self.colour.from_working(colours.reapply_excess(rgb, self.colour.to_working(source)))
        if self.matte is not None:
            out = composite(out, source, self.matte.full(index))
        if plates.is_plate(frame.path):
            plate = plates.read(frame.path)
            plates.write(folder / name, plate, out, self.colour.colorspace if self.colour else "")
        else:
            frames.write_png(folder / name, out, frame.bit_depth, alpha)
        return name

    def describe(self) -> dict[str, object]:
        """What the manifest records about colour and matte."""
        return {
            "colour": self.colour.describe() if self.colour else None,
            "matte": None
            if self.matte is None
            else {
                "files": [str(p) for p in self.matte.paths],
                "channel": self.matte.channel,
                "invert": self.matte.invert,
                "feather": self.matte.feather,
            },
        }


def composite(edit: np.ndarray, source: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """matte * edit + (1 - matte) * source, with the source's exact values where the matte is 0."""
    m = matte[..., None]
    return np.where(m > 0.0, m * edit + (1.0 - m) * source, source).astype(np.float32)


def from_job(job) -> Delivery:
    """The run's colour and matte (a colour space the config lacks is refused here, before any work)."""
    colour = colours.from_job(job.colorspace, job.ocio_config)
    return Delivery(colour, matte_from_job(job.matte, job.matte_channel, job.matte_invert, job.matte_feather))
