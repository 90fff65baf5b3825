"""A strip's time settings by one set of names, in every Blender the suite runs in.

The names for trims, content offsets and position differ (5.1+'s `left_handle_offset`,
`content_trim_start`, `content_start`, `left_handle`; the older `frame_offset_start`,
`animation_offset_start`, `frame_start`, `frame_final_start`, which 5.1+ still reads but warns that
6.0 removes): these take the older names and use whichever the running Blender offers.
"""

from __future__ import annotations

from typing import Any

# Older name -> 5.1+'s name for the same setting.
NEWER = {
    "frame_start": "content_start",
    "frame_offset_start": "left_handle_offset",
    "frame_offset_end": "right_handle_offset",
    "animation_offset_start": "content_trim_start",
    "animation_offset_end": "content_trim_end",
    "frame_final_start": "left_handle",
    "frame_final_end": "right_handle",
}


def set_time(strip: Any, **settings: float) -> None:
    """Set trims, content offsets and position by their older names, in the order given, through
    the name this Blender offers (5.1+'s where it has one)."""
    for name, value in settings.items():
        newer = NEWER.get(name)
        setattr(strip, newer if newer and hasattr(strip, newer) else name, value)


def get_time(strip: Any, name: str) -> Any:
    """Read a time setting by its older name, through 5.1+'s name where this Blender has one."""
    newer = NEWER.get(name)
    return getattr(strip, newer if newer and hasattr(strip, newer) else name)


def span(strip: Any) -> tuple[int, int]:
    """The strip's handles `[first, end)` as Blender reports them."""
    return int(get_time(strip, "frame_final_start")), int(get_time(strip, "frame_final_end"))


def set_length(strip: Any, count: int) -> None:
    """Move the right handle so that the strip shows `count` frames from its left handle."""
    set_time(strip, frame_final_end=span(strip)[0] + count)
