"""EXR plates made from real frames, as a VFX pipeline would deliver them (for the engine tests).

Frames of a test clip (sRGB PNGs) are linearised into a scene-linear colour space through an OCIO
config with OpenImageIO's own colour conversion (independent of the engine's OpenColorIO path) and
written as half-float OpenEXR, optionally with highlights above 1.0, an alpha channel and a data
window smaller than the display window.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import OpenImageIO as oiio

CONFIG = "ocio://studio-config-latest"  # OCIO's built-in ACES studio config: no file, no bpy needed
SRGB = "sRGB Encoded Rec.709 (sRGB)"


def linearise(rgb: np.ndarray, colorspace: str, config: str = CONFIG) -> np.ndarray:
    """sRGB [0, 1] (H x W x 3) -> `colorspace` through OIIO's colour conversion."""
    buf = oiio.ImageBuf(np.ascontiguousarray(rgb, np.float32))
    out = oiio.ImageBufAlgo.colorconvert(buf, SRGB, colorspace, False, colorconfig=config, nthreads=1)
    if out.has_error:
        raise RuntimeError(out.geterror())
    return out.get_pixels(oiio.FLOAT)


def make_plates(
    pngs: list[Path],
    out_dir: Path,
    colorspace: str = "ACEScg",
    alpha: bool = False,
    data_window: tuple[int, int, int, int] | None = None,
    highlight: float = 1.0,
) -> list[Path]:
    """Write one half-float EXR per PNG. `data_window` is (x, y, width, height) inside the display
    window; `highlight` multiplies the top-left quarter's linear values (above 1.0 for > ~1.5)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, png in enumerate(pngs):
        rgb = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        linear = linearise(rgb, colorspace)
        h, w = linear.shape[:2]
        linear[: h // 2, : w // 2] *= highlight
        channels = [linear]
        if alpha:
            ramp = np.linspace(0.2, 1.0, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 1), np.float32)
            channels.append(ramp + 0.01 * i)
        pixels = np.concatenate(channels, axis=2)
        x, y, dw, dh = data_window or (0, 0, w, h)
        spec = oiio.ImageSpec(dw, dh, pixels.shape[2], oiio.HALF)
        spec.x, spec.y = x, y
        spec.full_x, spec.full_y, spec.full_width, spec.full_height = 0, 0, w, h
        spec.attribute("compression", "zip")
        spec.attribute("oiio:ColorSpace", colorspace)
        path = out_dir / f"{png.stem}.exr"
        region = np.ascontiguousarray(pixels[y : y + dh, x : x + dw])
        if region.shape[:2] != (dh, dw):
            raise ValueError(f"data window {data_window} does not fit a {w}x{h} frame")
        out = oiio.ImageOutput.create(str(path))
        if not (out.open(str(path), spec) and out.write_image(region)):
            raise RuntimeError(f"cannot write {path}: {out.geterror()}")
        out.close()
        paths.append(path)
    return paths


def read(path: Path) -> tuple[oiio.ImageSpec, np.ndarray]:
    """(header, data-window pixels as float32) of an EXR file."""
    inp = oiio.ImageInput.open(str(path))
    spec = inp.spec()
    pixels = inp.read_image(0, 0, 0, spec.nchannels, oiio.FLOAT)
    inp.close()
    return spec, np.asarray(pixels, np.float32).reshape(spec.height, spec.width, spec.nchannels)


def make_multi_part(plate: Path, depth: float = 3.5) -> Path:
    """Rewrite `plate` as a two-part EXR, as a renderer writes one: its picture as part "rgba" and a
    float Z as part "depth"."""
    spec, pixels = read(plate)
    picture = oiio.ImageSpec(spec)
    picture.attribute("name", "rgba")
    z = oiio.ImageSpec(spec.width, spec.height, 1, oiio.FLOAT)
    z.channelnames = ("Z",)
    z.attribute("name", "depth")
    out = oiio.ImageOutput.create(str(plate))
    if not (out.open(str(plate), (picture, z)) and out.write_image(np.ascontiguousarray(pixels))):
        raise RuntimeError(f"cannot write {plate}: {out.geterror()}")
    if not (
        out.open(str(plate), z, "AppendSubimage")
        and out.write_image(np.full((spec.height, spec.width, 1), depth, np.float32))
    ):
        raise RuntimeError(f"cannot write {plate}: {out.geterror()}")
    out.close()
    return plate


def claim_size(plate: Path, width: int, height: int, window: str = "dataWindow") -> Path:
    """Rewrite the header's `window` (box2i) of `plate` to claim width x height pixels: a damaged or
    hostile header over a small file."""
    data = bytearray(plate.read_bytes())
    name = window.encode() + b"\0box2i\0" + (16).to_bytes(4, "little")
    at = data.index(name) + len(name)
    data[at : at + 16] = b"".join(v.to_bytes(4, "little", signed=True) for v in (0, 0, width - 1, height - 1))
    plate.write_bytes(bytes(data))
    return plate
