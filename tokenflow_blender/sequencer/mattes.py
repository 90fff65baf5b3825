"""Matte frames for exactly the frames of the source the timeline shows: one file per source frame.

The matte is another strip of the sequencer, matched to the source by timeline frame (so trims and
offsets of either strip are respected). An image strip's matte frames are its own files; a Mask
strip (drawn in Blender's mask editor) or a movie strip is rendered by Blender, alone, to 16-bit PNG
frames at the source's pixel size (see :mod:`.strip_render`), one frame per tick of the edit task
before the engine starts (so Blender stays responsive and Cancel works). Everything is checked
before any work: a matte that misses a source frame, or whose files differ in size from the source,
is refused with a message that says what to change.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import bpy

from .. import compat
from . import imageinfo, strip_render, strips

RENDERED = ("MASK", "MOVIE", "MOVIECLIP")  # strips Blender renders to matte frames
CHANNEL_ALPHA = "alpha"


class MatteError(ValueError):
    """The matte cannot limit this edit; the message says why and what to do."""


# --- plain helpers -------------------------------------------------------------------------
def uncovered(start: int, end: int, matte_start: int, matte_end: int) -> list[int]:
    """Timeline frames of [start, end) outside the matte's [matte_start, matte_end)."""
    return [f for f in range(start, end) if not matte_start <= f < matte_end]


def frame_ranges(frames: Sequence[int]) -> str:
    """'3-5, 9' for [3, 4, 5, 9]: frames as a person reads them."""
    parts: list[str] = []
    run: list[int] = []
    for f in sorted(frames):
        if run and f == run[-1] + 1:
            run.append(f)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [f]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts)


def matte_folder(jobs_dir: str, output: str) -> str:
    """Rendered matte frames go beside the job file, named after the run's output folder."""
    return os.path.join(jobs_dir, f"{os.path.basename(output)}-matte")


def check_sizes(paths: Sequence[str], width: int, height: int, matte: str) -> None:
    """Every matte file must exist, be an image the engine reads and have the source's size."""
    for path in dict.fromkeys(paths):  # a still matte repeats one file: check it once
        try:
            info = imageinfo.read_info(path)
        except imageinfo.FrameError as exc:
            raise MatteError(f"the matte '{matte}': {exc}") from exc
        if (info.width, info.height) != (width, height):
            raise MatteError(
                f"the matte '{matte}' is {info.width}x{info.height} ({os.path.basename(path)}) but the "
                f"source is {width}x{height}; mattes must have the source's size"
            )


# --- Blender ---------------------------------------------------------------------------------
class MatteRender:
    """Blender renders a Mask, movie or clip strip alone, one source frame per :meth:`step`.

    The throwaway scene is made at the first step (nothing exists before the run starts) and
    removed after the last one, or by :meth:`close` when the run ends early.
    """

    def __init__(self, scene: Any, strip: Any, shot: strips.Shot, folder: str, channel: str) -> None:
        self.scene_name, self.strip_name = scene.name, strip.name
        self.frames = list(range(shot.start, shot.end))
        self.size = (shot.width, shot.height)
        self.mode = "RGBA" if channel == CHANNEL_ALPHA else "RGB"
        self.folder = folder
        self.paths = [os.path.join(folder, f"matte_{i:05d}.png") for i in range(len(self.frames))]
        self.done = 0
        self._iso: strip_render.IsolatedStrip | None = None

    def step(self) -> tuple[int, int]:
        """Render the next matte frame; return (frames done, frames in all)."""
        if self.done < len(self.frames):
            iso = self._iso or self._open()
            iso.render(self.frames[self.done], self.paths[self.done])
            self.done += 1
        if self.done == len(self.frames):
            self.close()
        return self.done, len(self.frames)

    def _open(self) -> strip_render.IsolatedStrip:
        scene = bpy.data.scenes.get(self.scene_name)
        if scene is None:
            raise MatteError(f"the scene {self.scene_name!r} is gone")
        try:
            self._iso = strip_render.IsolatedStrip(scene, self.strip_name, *self.size, "PNG", "16", self.mode)
        except strip_render.RenderError as exc:
            raise MatteError(f"the matte: {exc}") from exc
        os.makedirs(self.folder, exist_ok=True)
        return self._iso

    def close(self) -> None:
        if self._iso is not None:
            self._iso.close()
            self._iso = None


@dataclass
class Matte:
    """The matte of a run: a file per source frame, and the render that writes them (if any)."""

    paths: list[str]
    render: MatteRender | None = None


def plan(scene: Any, shot: strips.Shot, name: str, folder: str, channel: str = "auto") -> Matte:
    """Check the matte strip `name` against `shot` and say where each frame's matte comes from;
    raise MatteError (before any work) when it cannot serve. Rendered mattes go to `folder`."""
    strip = strips.find_strip(scene, name)
    if strip is None:
        raise MatteError(
            f"the matte strip '{name}' is not in the scene '{scene.name}'; choose another strip in "
            "Matte or clear the field"
        )
    if strip.name == shot.name:
        raise MatteError(f"'{name}' is the strip being edited; choose a different strip as its matte")
    first, end = compat.span(strip)
    missing = uncovered(shot.start, shot.end, first, end)
    if missing:
        raise MatteError(
            f"the matte '{name}' shows frames {first}-{end - 1} but "
            f"'{shot.name}' shows {shot.start}-{shot.end - 1}: frames {frame_ranges(missing)} have no "
            "matte; move or extend the matte strip over every frame of the source"
        )
    if strip.type == "IMAGE":
        paths = _image_frames(strip, shot)
        check_sizes(paths, shot.width, shot.height, name)
        return Matte(paths)
    if strip.type in RENDERED:
        if compat.strips(scene.sequence_editor).get(name) is None:
            raise MatteError(f"the matte '{name}' is inside a meta strip; use a strip at the top level")
        render = MatteRender(scene, strip, shot, folder, channel)
        return Matte(render.paths, render)
    raise MatteError(
        f"the matte '{name}' is a {strip.type.lower()} strip; a matte is an image, movie or mask strip"
    )


def collect(
    scene: Any,
    shot: strips.Shot,
    name: str,
    folder: str,
    channel: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """:func:`plan` and, for a rendered matte, all of its render at once (tests, scripts)."""
    matte = plan(scene, shot, name, folder, channel)
    if matte.render is not None:
        try:
            while True:
                done, total = matte.render.step()
                if progress is not None:
                    progress(done, total)
                if done == total:
                    break
        except Exception:
            matte.render.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise
    return matte.paths


def _image_frames(strip: Any, shot: strips.Shot) -> list[str]:
    directory = bpy.path.abspath(strip.directory, library=strip.id_data.library)
    paths = []
    for frame in range(shot.start, shot.end):
        elem = strip.strip_elem_from_frame(frame)
        if elem is None:
            raise MatteError(f"the matte '{strip.name}' shows no image at frame {frame}")
        paths.append(os.path.normpath(os.path.join(directory, elem.filename)))
    return paths
