"""Reading a strip's frames and adding result strips and markers: the thin bpy layer.

The decisions (channels, names, preview layout) are plain functions in :mod:`.planning` and
the frame checks in :mod:`.imageinfo`; this module only turns strips into plain values and
plain values back into strips.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import bpy

from .. import compat
from . import colour, imageinfo, planning

MARKER_PREFIX = "TF key"

MOVIE_MESSAGE = (
    "'{name}' is a movie strip. TokenFlow edits image sequences: press Convert to Image Sequence in the "
    "TokenFlow panel (Blender renders the strip's visible frames to PNG and adds them as an image strip "
    "above, made active), then run TokenFlow on that strip"
)
TYPE_MESSAGES = {
    "COLOR": "'{name}' is a colour strip: it has no frames to edit; select an image-sequence strip",
    "TEXT": "'{name}' is a text strip: it has no frames to edit; select an image-sequence strip",
    "SCENE": "'{name}' is a scene strip: render that scene to PNG frames, add them as an image strip, "
    "and run TokenFlow on it",
    "META": "'{name}' is a meta strip: open it (Tab) and select the image strip inside",
    "SOUND": "'{name}' is a sound strip; select an image-sequence strip",
    "MOVIE": MOVIE_MESSAGE,
    "MOVIECLIP": MOVIE_MESSAGE,
    "MASK": "'{name}' is a mask strip; select an image-sequence strip",
}


class SourceError(ValueError):
    """The active strip cannot be edited; the message says why and what to do."""


@dataclass(frozen=True)
class Shot:
    """A strip as plain values: the frames the timeline shows and where they sit."""

    name: str
    frames: list[str]  # absolute file paths, one per visible timeline frame, in order
    start: int  # the first timeline frame the strip shows (its left handle)
    channel: int
    colorspace: str  # the strip's colour space as Blender names it (the result strip gets the same)
    width: int
    height: int
    config_colorspace: str = ""  # the same colour space as the OCIO config names it (sent to the engine)
    ocio_config: str = ""  # the config Blender uses

    @property
    def end(self) -> int:
        return self.start + len(self.frames)


def visible_frames(strip: Any) -> list[str]:
    """Absolute paths of exactly the frames the timeline shows (both kinds of trim respected).

    `strip_elem_from_frame` maps timeline frames through offsets, animation offsets and reversal;
    slicing `elements` would not.
    """
    directory = bpy.path.abspath(strip.directory, library=strip.id_data.library)
    paths = []
    for frame in range(*compat.span(strip)):
        elem = strip.strip_elem_from_frame(frame)
        if elem is None:
            raise SourceError(f"'{strip.name}' shows no image at frame {frame}")
        paths.append(os.path.normpath(os.path.join(directory, elem.filename)))
    return paths


def read_shot(strip: Any) -> Shot:
    """Check that `strip` is something the engine can edit and describe it; raise SourceError."""
    if strip is None:
        raise SourceError("no active strip: select the image-sequence strip to edit in the Sequencer")
    kind = strip.type
    if kind != "IMAGE":
        template = TYPE_MESSAGES.get(
            kind, "'{name}' is a {kind} strip; TokenFlow edits image-sequence strips, select one"
        )
        raise SourceError(template.format(name=strip.name, kind=kind.lower()))
    colorspace = strip.colorspace_settings.name
    config_path = ocio_config()
    try:
        config = colour.load_config(config_path)
        config_colorspace = config.resolve(colorspace)
    except colour.ColourError as exc:
        raise SourceError(f"'{strip.name}': {exc}") from exc
    if config_colorspace in config.data:
        raise SourceError(
            f"'{strip.name}' is read as {colorspace!r}, which holds data, not colour (normals, depth, "
            "mattes); if the frames are a picture, set the strip's Source > Color Space to the one they "
            "were written in"
        )
    frames = visible_frames(strip)
    try:
        info = imageinfo.check_frames(frames)
    except imageinfo.FrameError as exc:
        raise SourceError(f"'{strip.name}': {exc}") from exc
    return Shot(
        name=strip.name,
        frames=frames,
        start=compat.span(strip)[0],
        channel=strip.channel,
        colorspace=colorspace,
        width=info.width,
        height=info.height,
        config_colorspace=config_colorspace,
        ocio_config=config_path,
    )


def ocio_config() -> str:
    """The OCIO config Blender uses: `$OCIO` when set, else the one bundled with this Blender."""
    return colour.config_path(os.environ, bpy.utils.resource_path("LOCAL"))


def occupied(scene: Any) -> list[planning.Span]:
    ed = scene.sequence_editor
    if ed is None:
        return []
    return [
        planning.Span(s.channel, *compat.span(s))
        for s in compat.strips(ed)  # top level: strips inside metas live on the meta's own channels
    ]


def add_image_strip(
    scene: Any,
    name: str,
    folder: str,
    filenames: Sequence[str],
    start: int,
    above: int,
    colorspace: str,
) -> Any:
    """One image strip of `filenames` (all in `folder`) at `start`, on the first free channel
    above `above`, with its colour space set explicitly (defaults differ between versions)."""
    if not filenames:
        raise ValueError("no files for the strip")
    ed = scene.sequence_editor or scene.sequence_editor_create()
    channel = planning.free_channel(occupied(scene), start, start + len(filenames), above)
    # The path goes in as stored (maybe '//'-relative), as Blender's own Add Image does: setting
    # `strip.directory` afterwards made Blender 5.0 crash when the scene was later removed.
    strip = compat.strips(ed).new_image(name, stored_dir(folder) + filenames[0], channel, start)
    for filename in filenames[1:]:
        strip.elements.append(filename)
    strip.colorspace_settings.name = colorspace
    # new_image may pick a channel itself if ours is taken by the time it runs; keep ours.
    if strip.channel != channel:
        strip.channel = channel
    return strip


def stored_dir(folder: str) -> str:
    """`folder` as the .blend should keep it: relative to the saved .blend ('//...') when the user's
    "Default to Relative Paths" preference is on, so a project folder can be moved; else absolute.
    An unsaved file, or a folder on another drive, keeps the absolute path."""
    folder = os.path.abspath(bpy.path.abspath(folder))
    if bpy.data.filepath and bpy.context.preferences.filepaths.use_relative_paths:
        with contextlib.suppress(ValueError):  # another drive (Windows): no relative path exists
            folder = bpy.path.relpath(folder)
    return os.path.join(folder, "")  # a strip's directory ends with a separator


def add_markers(scene: Any, start: int, indices: Sequence[int]) -> list[Any]:
    """A timeline marker at each keyframe (no duplicates when a shot is edited again)."""
    markers = []
    existing = {(m.name, m.frame) for m in scene.timeline_markers}
    for index in indices:
        name, frame = f"{MARKER_PREFIX} {index}", start + index
        if (name, frame) in existing:
            markers.extend(m for m in scene.timeline_markers if (m.name, m.frame) == (name, frame))
            continue
        markers.append(scene.timeline_markers.new(name, frame=frame))
        existing.add((name, frame))
    return markers


def find_strip(scene: Any, name: str) -> Any:
    ed = scene.sequence_editor
    return compat.strips_all(ed).get(name) if ed is not None else None
