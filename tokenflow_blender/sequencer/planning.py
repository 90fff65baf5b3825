"""Decisions about where results go, as plain functions of plain values (no bpy).

Channels, names, output folders and the preview strip's layout are computed here so that tests
check them without a timeline, and the Blender glue in :mod:`.strips` only applies them.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_CHANNEL = 128  # Blender's sequencer has channels 1..128


@dataclass(frozen=True)
class Span:
    """A strip's place on the timeline: channel and the frames [start, end)."""

    channel: int
    start: int
    end: int


def overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def free_channel(occupied: Iterable[Span], start: int, end: int, above: int) -> int:
    """The first channel above `above` with nothing in [start, end); raise when all are taken."""
    taken = {s.channel for s in occupied if overlaps(s.start, s.end, start, end)}
    for channel in range(above + 1, MAX_CHANNEL + 1):
        if channel not in taken:
            return channel
    raise ValueError(f"no free channel above {above} for frames {start}-{end - 1}; free one up")


def slug(text: str, limit: int = 32) -> str:
    """A file-name-safe short form of a prompt or strip name."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return cleaned[:limit].rstrip("-") or "edit"


def result_name(source: str, prompt: str, preview: bool, limit: int = 61) -> str:
    """A strip name that says what it is: 'TF <source>: <prompt>' (strip names hold 61 bytes)."""
    prefix = "TF preview" if preview else "TF"
    name = f"{prefix} {source}: {prompt.strip()}"
    encoded = name.encode("utf-8")
    if len(encoded) <= limit:
        return name
    return encoded[: limit - 3].decode("utf-8", "ignore").rstrip() + "..."


def output_folder(parent: str, source: str, prompt: str, stage: str, now: float | None = None) -> str:
    """A new folder under `parent` for one run; never an existing one (results never overwrite)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = os.path.join(parent, f"{slug(source, 24)}-{stage}-{slug(prompt)}-{stamp}")
    candidate, n = base, 1
    while os.path.exists(candidate) or _temp_exists(candidate):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _temp_exists(path: str) -> bool:
    """The engine writes into `.NAME.tmp-PID` beside its destination; keep clear of one in flight."""
    parent, name = os.path.split(path)
    try:
        return any(entry.startswith(f".{name}.tmp-") for entry in os.listdir(parent))
    except OSError:
        return False


def temp_folders(output: str) -> list[str]:
    """Leftover temporary folders of an engine run that wrote (or was writing) to `output`."""
    parent, name = os.path.split(output)
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    return [os.path.join(parent, e) for e in entries if e.startswith(f".{name}.tmp-")]


def preview_elements(files: Sequence[str], indices: Sequence[int], count: int) -> tuple[int, list[str]]:
    """The preview strip as (first index, file per frame): each keyframe held until the next.

    An image strip shows its elements on consecutive frames, so the keyframes become one strip
    that starts at the first keyframe and shows each keyframe at its own timeline frame; the frames
    between keyframes hold the last keyframe (a preview, named as such).
    """
    if not files or len(files) != len(indices):
        raise ValueError("the preview has no keyframe files (or files and indices differ in number)")
    pairs = sorted(zip(indices, files, strict=True))
    first = pairs[0][0]
    elements: list[str] = []
    k = 0
    for i in range(first, count):
        while k + 1 < len(pairs) and pairs[k + 1][0] <= i:
            k += 1
        elements.append(os.path.basename(pairs[k][1]))
    return first, elements


# Colour spaces whose file values are scene-linear, log or data: Stable Diffusion was trained on
# display-referred (sRGB-like) images, so such frames would be edited as if they were sRGB.
_NOT_DISPLAY = ("linear", "non-color", "raw", "xyz", "log", "acescg", "acescc", "aces2065", "pq", "hlg")


def is_display_referred(colorspace: str) -> bool:
    """True for sRGB-like encodings the model can take as they are (sRGB, Rec.1886, AgX Base sRGB)."""
    name = colorspace.lower()
    return not any(hint in name for hint in _NOT_DISPLAY)


def format_eta(seconds: float | None) -> str:
    """'1:05 left' style text for the progress bar."""
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d} left" if h else f"{m}:{s:02d} left"
