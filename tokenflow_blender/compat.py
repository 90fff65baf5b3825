"""The Sequencer API differences between Blender 4.2 LTS, 4.5 LTS, 5.0, 5.1 and 5.2 LTS, in one place.

4.4 renamed `Sequence` to `Strip` and added `ed.strips`; 5.0 removed `ed.sequences`,
`context.active_sequence_strip` and added `context.sequencer_scene` (which may be None).
5.1 gave strips a time model of its own (5.2 keeps it): `left_handle` / `right_handle` are the
timeline frames where a strip starts and stops showing, and reading `frame_final_start`,
`frame_final_end`, `frame_final_duration`, `frame_start` or the offsets warns that 6.0 removes them.
Each function here asks for what a version offers (the newer name first), never for a version number.
"""

from __future__ import annotations

from typing import Any


def span(strip: Any) -> tuple[int, int]:
    """The timeline frames `[first, end)` where `strip` shows: its handles, after every trim.

    5.1+'s `left_handle` / `right_handle` where they exist (checked first: asking `hasattr` for
    the old names would itself warn), else `frame_final_start` / `frame_final_end`.
    """
    if hasattr(strip, "left_handle"):
        return int(strip.left_handle), int(strip.right_handle)
    return int(strip.frame_final_start), int(strip.frame_final_end)


def scene_of(context: Any) -> Any:
    """The scene the Sequencer shows: 5.0's sequencer scene, else the window's scene."""
    return getattr(context, "sequencer_scene", None) or context.scene


def strips(ed: Any) -> Any:
    """The top-level strip collection (`new_image`, `new_effect`, ...).

    Not `ed.strips or ed.sequences`: an empty collection is falsy and 5.0 has no `sequences`.
    """
    return ed.strips if hasattr(ed, "strips") else ed.sequences


def strips_all(ed: Any) -> Any:
    """Every strip, inside meta strips too."""
    return ed.strips_all if hasattr(ed, "strips_all") else ed.sequences_all


def active_strip(context: Any, scene: Any) -> Any:
    """The active strip of `scene`'s editor (the same in every version), else the context's."""
    ed = scene.sequence_editor if scene else None
    if ed is not None and ed.active_strip is not None:
        return ed.active_strip
    return getattr(context, "active_strip", None) or getattr(context, "active_sequence_strip", None)


def new_color_strip(ed: Any, name: str, channel: int, start: int, length: int) -> Any:
    """A colour strip (tests and demos): 5.0's `new_effect` takes `length`, earlier ones `frame_end`."""
    coll = strips(ed)
    if "length" in coll.bl_rna.functions["new_effect"].parameters:
        return coll.new_effect(name, "COLOR", channel, start, length=length)
    return coll.new_effect(name, "COLOR", channel, start, frame_end=start + length)
