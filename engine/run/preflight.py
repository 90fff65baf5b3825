"""Everything a job can be refused for without a model, checked before torch and diffusers load.

Frame files (there, not empty, an image header of a size the engine can decode, one size for the
shot), the output folder (claimed: new, writable, no other run's; see engine.outputs) and the
inversion cache folder. Standard library and Pillow's lazy header reading only, so that a bad
path or file is refused in well under a second instead of after the ML stack's ~10 s import.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from .. import protocol
from ..errors import BadInput
from .outputs import Destination, storage_error

log = logging.getLogger(__name__)

SUPPORTED = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr")  # EXR plates: engine/images/plates.py
# The largest frame the engine decodes: 8192 x 8192 pixels (a frame is held as float32 RGB while it
# is inverted, 12 bytes a pixel: 0.8 GB at this limit). The working size is at most 4096 anyway.
MAX_PIXELS = 8192 * 8192


def default_cache_dir() -> Path:
    env = os.environ.get("TOKENFLOW_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tokenflow"


@dataclass
class Ready:
    """What the checks found: the shot's source size, the claimed output, the cache folder."""

    size: tuple[int, int]
    destinations: list[Destination]  # the job's output; one per variation; none for `invert`
    cache_dir: Path
    cache_problem: str = ""  # why the cache folder cannot be written (warned once here), or ""

    @property
    def destination(self) -> Destination | None:
        return self.destinations[0] if self.destinations else None

    def release(self) -> None:
        for destination in self.destinations:
            destination.release()


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    return None


EXR_MAGIC = b"\x76\x2f\x31\x01"
EXR_HEADER_BYTES = 1 << 16  # a longer header (much metadata) is left to OpenImageIO


def _exr_windows(head: bytes) -> dict[str, tuple[int, int]] | None:
    """The (w, h) of an OpenEXR file's `displayWindow` and `dataWindow` from its (first part's)
    header: name, type, size, value attributes up to an empty name. None if not understood."""
    if head[:4] != EXR_MAGIC:
        return None
    pos, windows = 8, {}
    while True:
        end = head.find(b"\0", pos)
        if end < 0:
            return None
        if end == pos:  # the empty name that ends the header
            break
        kind_end = head.find(b"\0", end + 1)
        if kind_end < 0 or kind_end + 5 > len(head):
            return None
        (size,) = struct.unpack("<i", head[kind_end + 1 : kind_end + 5])
        value = head[kind_end + 5 : kind_end + 5 + size]
        if size < 0 or len(value) < size:
            return None
        name = head[pos:end]
        if name in (b"displayWindow", b"dataWindow") and size == 16:
            x0, y0, x1, y1 = struct.unpack("<iiii", value)
            windows[name.decode()] = (x1 - x0 + 1, y1 - y0 + 1)
        pos = kind_end + 5 + size
    return windows if len(windows) == 2 else None


def _exr_size(path: Path, head: bytes) -> tuple[int, int] | None:
    """An EXR plate's display size, refusing windows too large to decode before anything is allocated
    (the data window is what a reader allocates, the display window what is edited)."""
    windows = _exr_windows(head)
    if windows is None:
        return None
    for name, (w, h) in windows.items():
        if w <= 0 or h <= 0:
            raise BadInput(f"frame file {path} has an empty {name} ({w}x{h}); re-export it")
        if w * h > MAX_PIXELS:
            raise BadInput(_too_large(path, f"its {name} is {w}x{h}"))
    return windows["displayWindow"]


def frame_size(path: Path) -> tuple[int, int] | None:
    """(w, h) from the file's header without decoding it; None if the header is not understood
    (OpenCV, which decodes the frame later, then decides)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(EXR_HEADER_BYTES if path.suffix.lower() == ".exr" else 32)
    except OSError as exc:
        raise BadInput(f"frame file {path} cannot be read: {exc.strerror}; check its permissions") from exc
    if not head:
        raise BadInput(f"frame file {path} is empty (0 bytes); render or export that frame again")
    size = _png_size(head) or _exr_size(path, head)
    if size is not None:
        return size
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:  # lazy: reads the header only
                return image.size
        except Image.DecompressionBombError as exc:
            raise BadInput(_too_large(path, str(exc))) from exc
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None


def _too_large(path: Path, size: str) -> str:
    return (
        f"frame file {path} is too large to decode ({size}); the engine reads frames of at most "
        f"{MAX_PIXELS:,} pixels (8192 x 8192). Scale the shot down first (the edit works at most at "
        "4096 px anyway), e.g. render it at half resolution"
    )


def frame_file(name: str | os.PathLike[str]) -> Path:
    """The frame's path, if it names an existing file of a type the engine reads."""
    path = Path(name)
    if not path.is_file():
        raise BadInput(f"frame file {path} does not exist (or is not a file); check the frame list")
    if path.suffix.lower() not in SUPPORTED:
        raise BadInput(
            f"{path.name} is not a supported image ({', '.join(SUPPORTED)}); convert the shot to PNG"
        )
    return path


def check_frames(paths: list[str]) -> tuple[int, int]:
    """Every frame is a non-empty image file of a decodable size, all one size; returns (w, h)."""
    if not paths:
        raise BadInput("no frames: give at least one image file")
    first: tuple[Path, tuple[int, int]] | None = None
    for name in paths:
        path = frame_file(name)
        size = frame_size(path)
        if size is None:
            continue
        w, h = size
        if w * h > MAX_PIXELS:
            raise BadInput(_too_large(path, f"{w}x{h}"))
        if first is None:
            first = (path, size)
        elif size != first[1]:
            (w0, h0) = first[1]
            raise BadInput(
                f"frames differ in size: {first[0].name} is {w0}x{h0} but {path.name} is {w}x{h}; "
                "all frames of a shot must share one size"
            )
    return first[1] if first else (0, 0)


def check_cache(job: protocol.Job) -> tuple[Path, str]:
    """The inversion cache folder is usable. An edit can run without it (a warning, no caching);
    the `invert` stage exists to fill it, so there it is an error."""
    folder = Path(job.cache_dir).expanduser() if job.cache_dir else default_cache_dir()
    if os.path.islink(folder) and not os.path.exists(folder):
        raise BadInput(
            f"the cache folder {folder} is a symbolic link to {os.readlink(folder)}, which does not "
            "exist; fix the link or choose another cache folder"
        )
    if os.path.lexists(folder) and not folder.is_dir():
        raise BadInput(f"the cache folder {folder} is a file, not a folder; choose another cache folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"tokenflow")
            probe.flush()
    except OSError as exc:
        error = storage_error(exc, folder, "write to the cache folder")
        if job.stage == protocol.STAGE_INVERT:
            raise error from exc
        log.warning("%s; this run goes on without caching its inversions", error.message)
        return folder, error.message
    return folder, ""


def check(job: protocol.Job) -> Ready:
    """All checks, cheapest first; nothing is created for a job refused before its output is claimed."""
    job.validate()
    size = check_frames(job.frames)
    if job.stage == protocol.STAGE_INVERT:
        outputs = []
    elif job.variations:
        outputs = [protocol.variation_output(job.output, i) for i in range(len(job.variations))]
    else:
        outputs = [job.output]
    ready = Ready(size, [], Path())
    try:
        for output in outputs:
            ready.destinations.append(Destination(output).claim())
        ready.cache_dir, ready.cache_problem = check_cache(job)
    except BaseException:
        ready.release()
        raise
    return ready
