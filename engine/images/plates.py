"""OpenEXR plates read and written through OpenImageIO, with everything but the picture kept.

A plate is edited on its display window (the frame the artist sees), and written back with the
source's data window, channel names, per-channel half/float formats, alpha and header attributes:
only the R, G and B values change. 8/16-bit PNG, JPEG and TIFF frames keep their OpenCV path in
frames.py (bit-exact with earlier versions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import OpenImageIO as oiio

from ..errors import BadInput

# As for OpenCV in frames.py: image work is light next to the model's, keep it off torch's cores.
oiio.attribute("threads", 1)

SUFFIXES = (".exr",)


def is_plate(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


@dataclass
class Plate:
    """One plate: its header and its pixels (data window, every channel, float32)."""

    path: Path
    spec: oiio.ImageSpec
    pixels: np.ndarray  # (data height, data width, channels) float32, as stored (half is exact)
    rgb: tuple[int, int, int]  # channel indices of R, G, B

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the display window."""
        return self.spec.full_width, self.spec.full_height

    @property
    def bit_depth(self) -> int:
        """16 when the colour channels are half, else 32."""
        formats = self.spec.channelformats or (self.spec.format,) * self.spec.nchannels
        return 16 if all(formats[c] == oiio.HALF for c in self.rgb) else 32

    def _window(self) -> tuple[slice, slice, slice, slice]:
        """Where the data window lies in the display window (and which part of it is inside)."""
        s = self.spec
        x0, y0 = s.x - s.full_x, s.y - s.full_y
        dx0, dy0 = max(0, -x0), max(0, -y0)
        dx1, dy1 = min(s.width, s.full_width - x0), min(s.height, s.full_height - y0)
        if dx1 <= dx0 or dy1 <= dy0:
            return slice(0, 0), slice(0, 0), slice(0, 0), slice(0, 0)
        return (
            slice(y0 + dy0, y0 + dy1),
            slice(x0 + dx0, x0 + dx1),
            slice(dy0, dy1),
            slice(dx0, dx1),
        )

    def display_rgb(self) -> np.ndarray:
        """R, G, B on the display window (H x W x 3 float32); outside the data window they are 0."""
        w, h = self.size
        out = np.zeros((h, w, 3), np.float32)
        ys, xs, dys, dxs = self._window()
        out[ys, xs] = self.pixels[dys, dxs][..., list(self.rgb)]
        return out

    def with_display_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """The plate's pixels with R, G, B taken from a display-window image; the rest unchanged."""
        pixels = self.pixels.copy()
        ys, xs, dys, dxs = self._window()
        region = pixels[dys, dxs]
        region[..., list(self.rgb)] = rgb[ys, xs]
        pixels[dys, dxs] = region
        return pixels


def _rgb_channels(path: Path, names: list[str]) -> tuple[int, int, int]:
    """Indices of the R, G, B channels (the unnamed layer's, else the only layer's)."""
    for prefix in ("", *sorted({n.rsplit(".", 1)[0] + "." for n in names if "." in n})):
        wanted = [prefix + c for c in "RGB"]
        if all(w in names for w in wanted):
            return tuple(names.index(w) for w in wanted)  # type: ignore[return-value]
    raise BadInput(
        f"{path.name} has no R, G, B channels (it has {', '.join(names)}); write the plate with RGB "
        "(or RGBA) channels"
    )


def _parts(inp: oiio.ImageInput) -> list[str]:
    """The names of a file's parts (subimages), in order; unnamed parts by their index."""
    names = []
    while inp.seek_subimage(len(names), 0):
        names.append(inp.spec().get_string_attribute("oiio:subimagename") or f"part {len(names)}")
    inp.seek_subimage(0, 0)
    return names


def read(path: Path) -> Plate:
    """Read a single-part EXR file; refuse multi-part files (their other parts would be lost in the
    result), deep data and files without RGB channels."""
    inp = oiio.ImageInput.open(str(path))
    if inp is None:
        raise BadInput(f"{path} could not be read as an EXR plate ({oiio.geterror()}); re-export it")
    try:
        parts = _parts(inp)
        if len(parts) > 1:
            raise BadInput(
                f"{path.name} is a multi-part EXR ({len(parts)} parts: {', '.join(parts)}); the engine edits "
                "single-part plates, and the result would lose the other parts. Write the plate as one "
                "part: its other layers (a Z or a matte) as channels of that part reach the result unchanged"
            )
        spec = inp.spec()
        if spec.deep:
            raise BadInput(f"{path.name} holds deep data; render a flat (non-deep) EXR")
        rgb = _rgb_channels(path, list(spec.channelnames))
        pixels = inp.read_image(0, 0, 0, spec.nchannels, oiio.FLOAT)
        if pixels is None:
            raise BadInput(f"{path} could not be decoded ({inp.geterror()}); re-export it")
    finally:
        inp.close()
    pixels = np.asarray(pixels, np.float32).reshape(spec.height, spec.width, spec.nchannels)
    return Plate(path, spec, pixels, rgb)


def write(path: Path, plate: Plate, rgb: np.ndarray, colorspace: str) -> None:
    """Write `rgb` (display window, the plate's colour space) with the plate's header and channels;
    a header that names no colour space gets the job's."""
    spec = oiio.ImageSpec(plate.spec)  # the source's header, as it was
    if colorspace and not spec.get_string_attribute("oiio:ColorSpace"):
        spec.attribute("oiio:ColorSpace", colorspace)
    out = oiio.ImageOutput.create(str(path))
    if out is None:
        raise OSError(f"cannot write {path}: {oiio.geterror()}")
    try:
        if not out.open(str(path), spec):
            raise OSError(f"cannot write {path}: {out.geterror()}")
        if not out.write_image(np.ascontiguousarray(plate.with_display_rgb(rgb))):
            raise OSError(f"cannot write {path}: {out.geterror()}")
    finally:
        out.close()
