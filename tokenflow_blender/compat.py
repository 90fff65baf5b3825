"""The Sequencer API differences between Blender 4.2 LTS, 4.5 LTS and 5.0, in one place.

4.4 renamed `Sequence` to `Strip` and added `ed.strips`; 5.0 removed `ed.sequences`,
`context.active_sequence_strip` and added `context.sequencer_scene` (which may be None).
"""

from __future__ import annotations

from typing import Any

import bpy


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
    """A colour strip (tests and demos): 5.0 takes `length`, earlier versions `frame_end`."""
    if bpy.app.version >= (5, 0, 0):
        return strips(ed).new_effect(name, "COLOR", channel, start, length=length)
    return strips(ed).new_effect(name, "COLOR", channel, start, frame_end=start + length)
