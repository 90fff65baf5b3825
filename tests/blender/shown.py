"""What Blender itself shows: the tests' expectations for frame mapping come from renders.

Blender 5.1 changed what setting a content offset does to a strip's position, and may change it
again; a formula for "timeline frame f shows element k" is itself version-specific. So a test
renders the scene's sequencer at each timeline frame with only the strip in question visible, over
a magenta background strip (so that "nothing here" renders as magenta rather than the 3D scene), and
reads the colour Blender drew. Source frames that differ in colour then tell which one is shown.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import bpy

from .helpers import MODULE, raw_pixels, strips_of

BACKGROUND = (1.0, 0.0, 1.0)


@contextlib.contextmanager
def _alone(scene: Any, strip: Any, width: int, height: int, folder: Path) -> Iterator[None]:
    """`strip` the only visible strip, over a background; the render settings pass colours through."""
    compat = sys.modules[f"{MODULE}.tokenflow_blender"].compat
    assert strip.channel > 1, "the background strip goes on a channel below the strip"
    muted = [(s, s.mute) for s in strips_of(scene)]
    r, view = scene.render, scene.view_settings
    saved_render = {
        name: getattr(r, name)
        for name in ("resolution_x", "resolution_y", "resolution_percentage", "filepath", "use_sequencer")
    }
    saved_format = (r.image_settings.file_format, r.image_settings.color_mode, r.image_settings.color_depth)
    saved_view = (view.view_transform, view.look, view.exposure, view.gamma)
    saved_frame = scene.frame_current
    background = compat.new_color_strip(scene.sequence_editor, "test background", 1, -1000, 3000)
    background.color = BACKGROUND
    try:
        for s, _ in muted:
            s.mute = s != strip
        r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
        r.use_sequencer = True
        r.image_settings.file_format, r.image_settings.color_mode = "PNG", "RGB"
        r.image_settings.color_depth = "8"
        view.view_transform, view.look, view.exposure, view.gamma = "Standard", "None", 0.0, 1.0
        folder.mkdir(parents=True, exist_ok=True)
        yield
    finally:
        compat.strips(scene.sequence_editor).remove(background)
        for s, mute in muted:
            s.mute = mute
        for name, value in saved_render.items():
            setattr(r, name, value)
        r.image_settings.file_format, r.image_settings.color_mode = saved_format[:2]
        r.image_settings.color_depth = saved_format[2]
        view.view_transform, view.look, view.exposure, view.gamma = saved_view
        scene.frame_current = saved_frame


def renders(
    scene: Any, strip: Any, frames: Iterable[int], folder: Path, width: int, height: int
) -> dict[int, Path]:
    """Blender's render of each timeline frame with `strip` shown alone (8-bit PNG through the
    Standard view, at `width` x `height`), magenta where the strip shows nothing."""
    out = {}
    with _alone(scene, strip, width, height, folder):
        for frame in frames:
            scene.frame_current = frame
            path = folder / f"frame_{frame + 10000:05d}.png"
            scene.render.filepath = str(path)
            with bpy.context.temp_override(scene=scene):
                assert bpy.ops.render.render(write_still=True) == {"FINISHED"}
            out[frame] = path
    return out


def rendered(
    scene: Any, strip: Any, frames: Iterable[int], folder: Path, width: int, height: int
) -> dict[int, tuple[float, float, float] | None]:
    """For each timeline frame, the RGB Blender renders at the centre of `strip` shown alone, or
    None where the strip shows nothing there."""
    out: dict[int, tuple[float, float, float] | None] = {}
    for frame, path in renders(scene, strip, frames, folder, width, height).items():
        rgb = _file_colour(path)
        out[frame] = None if _close(rgb, BACKGROUND) else rgb
    return out


def shown_files(
    scene: Any, strip: Any, files: list[Path], frames: Iterable[int], folder: Path
) -> dict[int, str]:
    """Timeline frame -> name of the file (one of `files`, flat colours that differ) that Blender
    renders for `strip` there; frames where it shows nothing are left out."""
    colours = [_file_colour(p) for p in files]
    width, height, _ = raw_pixels(str(files[0]))
    out = {}
    for frame, rgb in rendered(scene, strip, frames, folder, width, height).items():
        if rgb is None:
            continue
        distances = [max(abs(a - b) for a, b in zip(rgb, c, strict=True)) for c in colours]
        best = distances.index(min(distances))
        assert distances[best] < 1.5 / 255, (frame, rgb, "matches no file")
        out[frame] = files[best].name
    return out


def _file_colour(path: Path) -> tuple[float, float, float]:
    w, h, pixels = raw_pixels(str(path))
    i = ((h // 2) * w + w // 2) * 4
    return (pixels[i], pixels[i + 1], pixels[i + 2])


def _close(a: Iterable[float], b: Iterable[float]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < 2 / 255


def run_of(frames: dict[int, str]) -> tuple[int, list[str]]:
    """The first frame and the files of a run of consecutive timeline frames (asserted gap-free)."""
    keys = sorted(frames)
    assert keys == list(range(keys[0], keys[-1] + 1)), f"the strip shows frames with gaps: {keys}"
    return keys[0], [frames[k] for k in keys]
