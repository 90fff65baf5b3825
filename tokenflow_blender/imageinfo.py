"""Image headers read with the standard library: size, bit depth and float-ness of frame files.

Blender's `StripElement.orig_width` stays 0 until a frame has been drawn, and loading every frame
through `bpy.data.images` would decode pixels; a header is a few hundred bytes. The checks here
run before a job starts, so that a bad shot is refused with a clear message and nothing launches.
No bpy, no numpy: plain Python that tests drive directly.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# What the engine decodes (engine/frames.py SUPPORTED); the engine checks again on arrival.
SUPPORTED = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
FLOAT_FORMATS = (".exr", ".hdr", ".dpx", ".cin")
MOVIE_FORMATS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".m4v", ".ogv", ".flv", ".wmv")

HOW_TO_CONVERT = (
    "render the shot to 8- or 16-bit sRGB PNG frames (Output Properties: File Format PNG, "
    "Render > Render Animation) and add them as an image strip"
)


class FrameError(ValueError):
    """A frame that the engine cannot use; the message says which file and what to do."""


@dataclass(frozen=True)
class ImageInfo:
    """What a header says: format, pixel size, bits per channel, float samples."""

    format: str
    width: int
    height: int
    bit_depth: int
    is_float: bool = False


def read_info(path: str) -> ImageInfo:
    """Parse the header of a PNG, JPEG, TIFF, EXR or Radiance file; raise FrameError otherwise."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    except FileNotFoundError as exc:
        raise FrameError(f"frame file {path} does not exist") from exc
    except OSError as exc:
        raise FrameError(f"frame file {path} cannot be read: {exc.strerror}") from exc
    name = os.path.basename(path)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(head, name)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(path, name)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(path, name)
    if head.startswith(b"\x76\x2f\x31\x01"):
        return ImageInfo("exr", 0, 0, 32, is_float=True)
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return ImageInfo("hdr", 0, 0, 32, is_float=True)
    raise FrameError(f"{name} is not a PNG, JPEG or TIFF image; {HOW_TO_CONVERT}")


def _png(head: bytes, name: str) -> ImageInfo:
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise FrameError(f"{name} is a damaged PNG (no IHDR header)")
    width, height, depth = struct.unpack(">IIB", head[16:25])
    return ImageInfo("png", width, height, depth)


def _jpeg(path: str, name: str) -> ImageInfo:
    """Walk the JPEG markers to the first start-of-frame segment."""
    with open(path, "rb") as fh:
        fh.read(2)
        while True:
            byte = fh.read(1)
            while byte and byte != b"\xff":
                byte = fh.read(1)
            while byte == b"\xff":
                byte = fh.read(1)
            if not byte:
                break
            marker = byte[0]
            if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
                continue
            raw = fh.read(2)
            if len(raw) < 2:
                break
            (length,) = struct.unpack(">H", raw)
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                data = fh.read(5)
                if len(data) < 5:
                    break
                precision, height, width = struct.unpack(">BHH", data)
                return ImageInfo("jpeg", width, height, precision)
            if marker == 0xDA:  # start of scan before any frame header
                break
            fh.seek(length - 2, os.SEEK_CUR)
    raise FrameError(f"{name} is a damaged JPEG (no frame header)")


def _tiff(path: str, name: str) -> ImageInfo:
    """The first image file directory's width, height, bits per sample and sample format."""
    with open(path, "rb") as fh:
        data = fh.read()
    order = "<" if data[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[offset : offset + 2])
        tags: dict[int, int] = {}
        for i in range(count):
            entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
            tag, kind, n = struct.unpack(order + "HHI", entry[:8])
            if kind == 3:  # SHORT
                value = struct.unpack(order + "H", entry[8:10])[0]
                if n > 2:  # values stored elsewhere: read the first
                    (ptr,) = struct.unpack(order + "I", entry[8:12])
                    value = struct.unpack(order + "H", data[ptr : ptr + 2])[0]
            elif kind == 4:  # LONG
                value = struct.unpack(order + "I", entry[8:12])[0]
            else:
                continue
            tags[tag] = value
    except (struct.error, IndexError) as exc:
        raise FrameError(f"{name} is a damaged TIFF") from exc
    if 256 not in tags or 257 not in tags:
        raise FrameError(f"{name} is a damaged TIFF (no size)")
    depth = tags.get(258, 1)
    return ImageInfo("tiff", tags[256], tags[257], depth, is_float=tags.get(339, 1) == 3)


def check_frames(paths: Sequence[str]) -> ImageInfo:
    """Refuse a shot the engine could not edit; return the first frame's header.

    Every file must exist, be an 8/16-bit PNG, JPEG or TIFF, share one size, and have its own
    file name (results are written under the source names).
    """
    if not paths:
        raise FrameError("the strip shows no frames")
    stems: dict[str, str] = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            if stems[stem] == path:
                raise FrameError(
                    f"the strip shows {os.path.basename(path)} on more than one frame (a still or held "
                    "frames); TokenFlow edits a moving shot with one file per frame"
                )
            raise FrameError(
                f"two frames share the file name {stem!r}; results are written by name, rename them"
            )
        stems[stem] = path
    first: ImageInfo | None = None
    first_name = ""
    for path in paths:
        ext = os.path.splitext(path)[1].lower()
        name = os.path.basename(path)
        if ext in FLOAT_FORMATS:
            raise FrameError(
                f"{name} is float / linear data ({ext}), which the model cannot take; {HOW_TO_CONVERT}"
            )
        if not os.path.isfile(path):
            raise FrameError(f"frame file {path} is missing; the strip refers to a file that is not there")
        info = read_info(path)
        if info.is_float or info.bit_depth > 16:
            raise FrameError(f"{name} holds float / linear pixels; {HOW_TO_CONVERT}")
        if ext not in SUPPORTED:
            raise FrameError(f"{name} is not PNG, JPEG or TIFF; {HOW_TO_CONVERT}")
        if first is None:
            first, first_name = info, name
        elif (info.width, info.height) != (first.width, first.height):
            raise FrameError(
                f"frames differ in size: {first_name} is {first.width}x{first.height} but {name} is "
                f"{info.width}x{info.height}; all frames of a shot must share one size"
            )
    assert first is not None
    return first
