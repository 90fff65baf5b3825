"""Image headers read with the standard library: size, bit depth, float-ness and channels of frames.

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

# What the engine decodes (engine/run/preflight.py SUPPORTED, plus OpenEXR through the colour path);
# the engine checks again on arrival.
SUPPORTED = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr")
FLOAT_FORMATS = (".hdr", ".dpx", ".cin")  # float / log files the engine does not read
MOVIE_FORMATS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".m4v", ".ogv", ".flv", ".wmv")

HOW_TO_CONVERT = (
    "write the shot as OpenEXR (half or float) or as 8- or 16-bit PNG frames (Output Properties: File "
    "Format, Render > Render Animation) and add them as an image strip"
)

# OpenEXR version flags (the 4 bytes after the magic number)
_EXR_DEEP, _EXR_MULTIPART = 0x800, 0x1000


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
    channels: tuple[str, ...] = ()  # EXR channel names, e.g. ('A', 'B', 'G', 'R')


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
        return _exr(head, name)
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return ImageInfo("hdr", 0, 0, 32, is_float=True)
    raise FrameError(f"{name} is not a PNG, JPEG, TIFF or OpenEXR image; {HOW_TO_CONVERT}")


def _png(head: bytes, name: str) -> ImageInfo:
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise FrameError(f"{name} is a damaged PNG (no IHDR header)")
    width, height, depth = struct.unpack(">IIB", head[16:25])
    return ImageInfo("png", width, height, depth)


def _exr(head: bytes, name: str) -> ImageInfo:
    """The header attributes `channels` and `dataWindow` of a single-part scanline/tiled EXR; the
    size is the data window's (what Blender shows), the depth 16 for half and 32 for float."""
    (flags,) = struct.unpack("<I", head[4:8])
    if flags & (_EXR_DEEP | _EXR_MULTIPART):
        kind = "deep" if flags & _EXR_DEEP else "multi-part"
        raise FrameError(f"{name} is a {kind} OpenEXR file; write the plate as a single-part EXR")
    attrs: dict[str, bytes] = {}
    pos = 8
    try:
        while head[pos] != 0:
            end = head.index(b"\0", pos)
            attr = head[pos:end].decode("latin-1")
            type_end = head.index(b"\0", end + 1)
            (size,) = struct.unpack("<i", head[type_end + 1 : type_end + 5])
            attrs[attr] = head[type_end + 5 : type_end + 5 + size]
            pos = type_end + 5 + size
        xmin, ymin, xmax, ymax = struct.unpack("<4i", attrs["dataWindow"][:16])
        channels: list[tuple[str, int]] = []
        raw, i = attrs["channels"], 0
        while raw[i] != 0:
            end = raw.index(b"\0", i)
            (pixel_type,) = struct.unpack("<i", raw[end + 1 : end + 5])
            channels.append((raw[i:end].decode("latin-1"), pixel_type))
            i = end + 17
    except (ValueError, IndexError, KeyError, struct.error) as exc:
        raise FrameError(f"{name} is a damaged OpenEXR file (unreadable header)") from exc
    if not channels:
        raise FrameError(f"{name} is an OpenEXR file without channels")
    depth = 16 if all(t == 1 for _, t in channels) else 32  # 0 uint, 1 half, 2 float
    names = tuple(c for c, _ in channels)
    return ImageInfo("exr", xmax - xmin + 1, ymax - ymin + 1, depth, is_float=True, channels=names)


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

    Every file must exist, be an 8/16-bit PNG, JPEG or TIFF or an OpenEXR file (all frames of one
    kind), share one size, and have its own file name (results are written under the source names).
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
                f"{name} is a float / log file ({ext}) the engine cannot read; press Convert to Image "
                f"Sequence in the TokenFlow panel (Blender renders the strip as OpenEXR), or {HOW_TO_CONVERT}"
            )
        if not os.path.isfile(path):
            raise FrameError(f"frame file {path} is missing; the strip refers to a file that is not there")
        info = read_info(path)
        if info.format != "exr" and (info.is_float or info.bit_depth > 16):
            raise FrameError(f"{name} holds float pixels in a {info.format.upper()} file; {HOW_TO_CONVERT}")
        if ext not in SUPPORTED or (info.format == "exr") != (ext == ".exr"):
            raise FrameError(f"{name} is not PNG, JPEG, TIFF or OpenEXR; {HOW_TO_CONVERT}")
        if first is not None and (info.format == "exr") != (first.format == "exr"):
            raise FrameError(
                f"{first_name} and {name} differ in kind (OpenEXR and 8/16-bit); a shot's frames are "
                "all OpenEXR or all 8/16-bit images"
            )
        if first is None:
            first, first_name = info, name
        elif (info.width, info.height) != (first.width, first.height):
            raise FrameError(
                f"frames differ in size: {first_name} is {first.width}x{first.height} but {name} is "
                f"{info.width}x{info.height}; all frames of a shot must share one size"
            )
    assert first is not None
    return first
