"""Matte frames for exactly the frames of the source the timeline shows: one file per source frame.

The matte is another strip of the sequencer, matched to the source by timeline frame (so trims and
offsets of either strip are respected). An image strip's matte frames are its own files; a Mask
strip (drawn in Blender's mask editor) or a movie strip is rendered by Blender, alone, to 16-bit PNG
frames at the source's pixel size (see :mod:`.strip_render`). Everything is checked before the
engine starts: a matte that misses a source frame, or whose files differ in size from the source,
is refused with a message that says what to change.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import bpy

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


# --- Blender -------------------------------------------------------------------------------
def collect(
    scene: Any,
    shot: strips.Shot,
    name: str,
    folder: str,
    channel: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """The matte file for each of `shot`'s frames, in order; rendered ones are written to `folder`
    (a new folder, removed again when rendering fails). Raise MatteError before any work when the
    matte cannot serve."""
    strip = strips.find_strip(scene, name)
    if strip is None:
        raise MatteError(
            f"the matte strip '{name}' is not in the scene '{scene.name}'; choose another strip in "
            "Matte or clear the field"
        )
    if strip.name == shot.name:
        raise MatteError(f"'{name}' is the strip being edited; choose a different strip as its matte")
    missing = uncovered(shot.start, shot.end, strip.frame_final_start, strip.frame_final_end)
    if missing:
        raise MatteError(
            f"the matte '{name}' shows frames {strip.frame_final_start}-{strip.frame_final_end - 1} but "
            f"'{shot.name}' shows {shot.start}-{shot.end - 1}: frames {frame_ranges(missing)} have no "
            "matte; move or extend the matte strip over every frame of the source"
        )
    if strip.type == "IMAGE":
        paths = _image_frames(strip, shot)
        check_sizes(paths, shot.width, shot.height, name)
        return paths
    if strip.type in RENDERED:
        return render(scene, strip, shot, folder, channel, progress)
    raise MatteError(
        f"the matte '{name}' is a {strip.type.lower()} strip; a matte is an image, movie or mask strip"
    )


def _image_frames(strip: Any, shot: strips.Shot) -> list[str]:
    directory = bpy.path.abspath(strip.directory, library=strip.id_data.library)
    paths = []
    for frame in range(shot.start, shot.end):
        elem = strip.strip_elem_from_frame(frame)
        if elem is None:
            raise MatteError(f"the matte '{strip.name}' shows no image at frame {frame}")
        paths.append(os.path.normpath(os.path.join(directory, elem.filename)))
    return paths


def render(
    scene: Any,
    strip: Any,
    shot: strips.Shot,
    folder: str,
    channel: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Blender renders `strip` alone at the source's size for each of the shot's timeline frames.

    RGB unless the alpha channel is asked for: a mask renders white on black with an opaque
    alpha, which 'auto' would otherwise take as the matte.
    """
    mode = "RGBA" if channel == CHANNEL_ALPHA else "RGB"
    try:
        iso = strip_render.IsolatedStrip(scene, strip.name, shot.width, shot.height, "PNG", "16", mode)
    except strip_render.RenderError as exc:
        raise MatteError(f"the matte: {exc}") from exc
    os.makedirs(folder, exist_ok=False)
    paths = []
    try:
        for i, frame in enumerate(range(shot.start, shot.end)):
            paths.append(iso.render(frame, os.path.join(folder, f"matte_{i:05d}.png")))
            if progress is not None:
                progress(i + 1, len(shot.frames))
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        iso.close()
    return paths
