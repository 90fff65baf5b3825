"""Reading a shot's frames, sizing them for the model, and writing results back at the source size.

OpenCV decodes PNG, JPEG and TIFF at 8 and 16 bits; frames go to the model as sRGB in [-1, 1] at a
working size that keeps their aspect ratio (long side `size`, padded to multiples of 64, see
:class:`Geometry`), and come back as PNG at the source size and bit depth. The model sees no alpha;
a PNG with an alpha channel (a keyed element, a render with holdouts) gets its own alpha back in its
result, value for value, so the edit still comps where the source did.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import BadInput
from ..run.preflight import frame_file
from . import plates

# OpenCV's own thread pool fights torch's OpenMP threads for the cores (spinning waits can make a
# step ten times slower on a small machine); the image work here is light, so keep it on one thread.
cv2.setNumThreads(1)

MULTIPLE = 64


@dataclass
class Frame:
    """One source frame, without its pixels: a shot of 1080p frames would otherwise hold 25 MB of
    float32 per frame in memory for the whole run. :meth:`load` decodes it when it is needed."""

    path: Path
    digest: str  # sha256 of the file's bytes: the inversion cache key
    bit_depth: int  # 8 or 16 (EXR plates: 16 for half, 32 for float)
    width: int
    height: int
    colour_key: str = ""  # set when the model sees colour-converted pixels (delivery.py)
    alpha: bool = False  # a PNG with alpha: its results carry that alpha (EXR: plates.py)

    @property
    def cache_key(self) -> str:
        """The inversion cache key: the file's bytes, and the colour conversion the model sees."""
        if not self.colour_key:
            return self.digest
        return hashlib.sha256(f"{self.digest}|{self.colour_key}".encode()).hexdigest()

    def load(self) -> np.ndarray:
        """The frame as H x W x 3 RGB float32 in [0, 1] (EXR plates: their values, unclipped),
        checked against the bytes read at the start."""
        return decode_image(self.path, self._bytes())[0]

    def load_alpha(self) -> np.ndarray | None:
        """The alpha channel as stored (H x W, uint8 or uint16), or None without one."""
        return self.load_with_alpha()[1] if self.alpha else None

    def load_with_alpha(self) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`load` and :meth:`load_alpha` from one read and one decode of the file."""
        rgb, _depth, alpha = _decode(self.path, self._bytes())
        return rgb, alpha

    def _bytes(self) -> bytes:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise BadInput(f"frame file {self.path} cannot be read any more: {exc.strerror}") from exc
        if hashlib.sha256(data).hexdigest() != self.digest:
            raise BadInput(
                f"frame file {self.path} changed while the job ran; run the job again on the final frames"
            )
        return data


@dataclass
class Shot:
    frames: list[Frame]

    @property
    def size(self) -> tuple[int, int]:
        """Source (width, height)."""
        return self.frames[0].width, self.frames[0].height

    def __len__(self) -> int:
        return len(self.frames)


def decode_image(path: Path, data: bytes) -> tuple[np.ndarray, int]:
    """(H x W x 3 RGB float32, bit depth) of an image file's bytes."""
    rgb, depth, _alpha = _decode(path, data)
    return rgb, depth


def _decode(path: Path, data: bytes) -> tuple[np.ndarray, int, np.ndarray | None]:
    """decode_image's RGB and depth, and a PNG's alpha channel as stored (or None)."""
    if plates.is_plate(path):
        plate = plates.read(path)
        return plate.display_rgb(), plate.bit_depth, None  # plates.write carries every channel
    if not data:
        raise BadInput(f"frame file {path} is empty (0 bytes); render or export that frame again")
    try:
        raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV's own size limit, or a header it cannot take
        raw = None
    if raw is None:
        raise BadInput(f"{path} could not be decoded as an image; re-export it as PNG, JPEG or TIFF")
    if raw.dtype == np.uint8:
        depth, scale = 8, 255.0
    elif raw.dtype == np.uint16:
        depth, scale = 16, 65535.0
    else:
        raise BadInput(
            f"{path} holds {raw.dtype} pixels (float / linear data); write float frames as OpenEXR "
            "(with their colour space), or convert them to 8- or 16-bit sRGB PNG"
        )
    alpha = None
    if raw.ndim == 2:
        raw = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR)
    elif raw.shape[2] == 4:
        # The model has no alpha. A PNG's (straight alpha, grey + alpha included) goes back into its
        # result; OpenCV hands a TIFF's colour already multiplied by its alpha (colour over black),
        # which is what the model edits and the result holds, without the alpha.
        if path.suffix.lower() == ".png":
            alpha = np.ascontiguousarray(raw[..., 3])
        raw = cv2.cvtColor(raw, cv2.COLOR_BGRA2BGR)
    rgb = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    return rgb.astype(np.float32) / scale, depth, alpha


def read_shot(paths: Sequence[str | os.PathLike[str]]) -> Shot:
    """Read and check every frame: all exist, decode, and share one size. Nothing is written."""
    if not paths:
        raise BadInput("no frames: give at least one image file")
    frames: list[Frame] = []
    for name in paths:
        path = frame_file(name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadInput(
                f"frame file {path} cannot be read: {exc.strerror}; check its permissions"
            ) from exc
        image, depth, alpha = _decode(path, data)  # decoded once to check it; the pixels are dropped
        h, w = image.shape[:2]
        frames.append(Frame(path, hashlib.sha256(data).hexdigest(), depth, w, h, alpha=alpha is not None))
    first = frames[0]
    for frame in frames[1:]:
        if (frame.width, frame.height) != (first.width, first.height):
            w0, h0, w, h = first.width, first.height, frame.width, frame.height
            raise BadInput(
                f"frames differ in size: {first.path.name} is {w0}x{h0} but {frame.path.name} is {w}x{h}; "
                "all frames of a shot must share one size"
            )
    stems = [f.path.stem for f in frames]
    if len(set(stems)) != len(stems):
        raise BadInput("two frames share one file name (stem); results are written by name, so rename them")
    return Shot(frames)


@dataclass(frozen=True)
class Geometry:
    """How a source frame maps onto the model's canvas, keeping the aspect ratio exactly.

    The frame is scaled so that its long side is the working size, then padded (reflected, so the
    model sees no hard edge) up to multiples of 64; after decoding the padding is cropped off and
    the frame is scaled back to the source size. Stretching to 64-multiples instead distorted
    odd sizes (500x300 was edited at 256x128, 2:1 instead of 1.67:1).
    """

    source: tuple[int, int]  # (w, h) of the source frames
    scaled: tuple[int, int]  # (w, h) of the picture on the canvas (the source aspect, rounded)
    padded: tuple[int, int]  # (w, h) of the canvas: multiples of 64, what the model sees
    offset: tuple[int, int]  # (left, top) of the picture on the canvas

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) pixels of padding around the picture."""
        (left, top), (w, h), (pw, ph) = self.offset, self.scaled, self.padded
        return top, ph - h - top, left, pw - w - left


def geometry(width: int, height: int, long_side: int) -> Geometry:
    """The working geometry of a (width, height) source: long side `long_side`, padded to 64s."""
    scale = long_side / max(width, height)
    w = max(1, min(long_side, round(width * scale)))
    h = max(1, min(long_side, round(height * scale)))
    pw = -(-w // MULTIPLE) * MULTIPLE
    ph = -(-h // MULTIPLE) * MULTIPLE
    return Geometry((width, height), (w, h), (pw, ph), ((pw - w) // 2, (ph - h) // 2))


def working_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) of the model's canvas for a source of this size: multiples of 64 (see :func:`geometry`)."""
    return geometry(width, height, long_side).padded


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if image.shape[1] == w and image.shape[0] == h:
        return image
    shrinking = w < image.shape[1] or h < image.shape[0]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def to_working(image: np.ndarray, size: Geometry | tuple[int, int]) -> np.ndarray:
    """One RGB [0, 1] frame on the model's canvas: scaled (area filter when shrinking) and padded.

    A plain (w, h) size resizes to exactly that size (no padding)."""
    if not isinstance(size, Geometry):
        return _resize(image, size)
    top, bottom, left, right = size.padding
    scaled = _resize(image, size.scaled)
    return cv2.copyMakeBorder(scaled, top, bottom, left, right, cv2.BORDER_REFLECT_101)


def to_source(image: np.ndarray, size: Geometry | tuple[int, int]) -> np.ndarray:
    """A result back at the source (w, h), clipped to [0, 1]: the padding cropped off, then scaled."""
    if isinstance(size, Geometry):
        (left, top), (w, h) = size.offset, size.scaled
        image = image[top : top + h, left : left + w]
        size = size.source
    return np.clip(_resize(image, size), 0.0, 1.0)


def result_name(source: Path) -> str:
    """Results keep the source's file name, as PNG (EXR plates as EXR)."""
    return source.stem + (".exr" if plates.is_plate(source) else ".png")


def write_png(path: Path, image: np.ndarray, bit_depth: int, alpha: np.ndarray | None = None) -> None:
    """Write an RGB [0, 1] image as an 8- or 16-bit PNG; `alpha` (H x W, as stored in an 8/16-bit
    source) is written as it is, as PNG's straight alpha."""
    scale, dtype = (65535.0, np.uint16) if bit_depth == 16 else (255.0, np.uint8)
    pixels = cv2.cvtColor(np.round(np.clip(image, 0.0, 1.0) * scale).astype(dtype), cv2.COLOR_RGB2BGR)
    if alpha is not None:
        if alpha.shape != pixels.shape[:2] or alpha.dtype != dtype:
            raise ValueError(
                f"a {alpha.dtype} alpha of {alpha.shape} for a {dtype.__name__} image of {pixels.shape[:2]}"
            )
        pixels = np.dstack([pixels, alpha])
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    path.write_bytes(encoded.tobytes())
