"""Convert to Image Sequence: Blender renders a movie strip's visible frames to a new folder of
frame files and adds them as an image strip above it, aligned frame for frame and made active.
The same for an image sequence Blender reads but the engine does not (DPX and Cineon scans,
Radiance HDR): Blender decodes them in the strip's colour space and writes OpenEXR.

Blender itself decodes the movie, so the frames are exactly what the timeline shows (trims,
offsets, speed, the strip's colour space); PNG for display-referred footage, half-float EXR (scene
linear) for footage read in a linear, log or HDR colour space. One frame is rendered per
:meth:`ConvertTask.tick` (the job timer calls it; tests call it) so the UI stays responsive and
Cancel works between frames. Frames are written into a hidden temporary folder beside the
destination and renamed into place only when all are there; a cancelled or failed conversion
leaves no folder and no strip. The movie file (or the frame files) and the source strip are never modified.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import bpy

from .. import compat, session
from ..runs import registry
from ..runs.task import CANCELLED, DONE, ERROR, RUNNING, wait
from . import colour, imageinfo, planning, strip_render, strips

MOVIE_TYPES = ("MOVIE", "MOVIECLIP")


class ConvertError(ValueError):
    """The strip cannot be converted; the message says why and what to do."""


def convertible(strip: Any) -> bool:
    """A movie strip, or an image strip of frames Blender reads and the engine does not (DPX, ...)."""
    kind = getattr(strip, "type", "")
    if kind in MOVIE_TYPES:
        return True
    if kind != "IMAGE" or not len(strip.elements):
        return False
    return os.path.splitext(strip.elements[0].filename)[1].lower() in imageinfo.FLOAT_FORMATS


def strip_name(movie: str, limit: int = 61) -> str:
    """The image strip's name: the movie strip's, marked as frames (strip names hold 61 bytes)."""
    suffix = " frames"
    encoded = movie.encode("utf-8")[: limit - len(suffix)]
    return encoded.decode("utf-8", "ignore").rstrip() + suffix


def _frames_facts(strip: Any) -> tuple[str, int, int, str]:
    """First frame, pixel size and colour space of an image strip; every visible frame must exist
    (Blender would render a missing one as an empty frame without a word)."""
    try:
        paths = strips.visible_frames(strip)
    except strips.SourceError as exc:
        raise ConvertError(str(exc)) from exc
    for path in paths:
        if not os.path.isfile(path):
            raise ConvertError(f"the frame file {path} of '{strip.name}' is missing; relink the strip")
    elem = strip.elements[0]
    return paths[0], elem.orig_width, elem.orig_height, strip.colorspace_settings.name


def _movie_facts(strip: Any) -> tuple[str, int, int, str]:
    """File, pixel size and colour space of a movie strip, or of a movie clip strip's clip."""
    if strip.type == "MOVIECLIP":
        if not hasattr(strip, "clip"):  # 4.2 does not expose a clip strip's clip to Python
            raise ConvertError(
                f"'{strip.name}' is a movie clip strip, whose clip this Blender version does not expose; "
                "add the movie file with Add > Movie and convert that strip"
            )
        clip = strip.clip
        if clip is None:
            raise ConvertError(f"'{strip.name}' has no movie clip; choose one in the strip's properties")
        path = bpy.path.abspath(clip.filepath, library=clip.library)
        return path, int(clip.size[0]), int(clip.size[1]), clip.colorspace_settings.name
    path = bpy.path.abspath(strip.filepath, library=strip.id_data.library)
    elem = strip.elements[0] if len(strip.elements) else None
    size = (elem.orig_width, elem.orig_height) if elem is not None else (0, 0)
    return path, size[0], size[1], strip.colorspace_settings.name


def frame_file(stem: str, index: int, ext: str) -> str:
    return f"{stem}_{index + 1:04d}{ext}"


class ConvertTask:
    """Render a movie strip frame by frame into a new folder, then add the image strip."""

    kind = "convert"

    def __init__(self, scene: Any, strip: Any, parent: str) -> None:
        if strip is None:
            raise ConvertError("no active strip: select the movie strip to convert in the Sequencer")
        if not convertible(strip):
            raise ConvertError(
                f"'{strip.name}' is not a movie strip (it is {strip.type.lower()}) or a sequence of "
                f"{', '.join(imageinfo.FLOAT_FORMATS)} frames; Convert to Image Sequence works on those"
            )
        frames = strip.type == "IMAGE"
        path, width, height, colorspace = _frames_facts(strip) if frames else _movie_facts(strip)
        if not os.path.isfile(path):
            raise ConvertError(f"the movie file {path} of '{strip.name}' is missing; relink the strip")
        if width <= 0 or height <= 0:
            raise ConvertError(f"Blender cannot read the size of {path}; check it shows in the Sequencer")
        config = colour.load_config(strips.ocio_config())
        try:
            space = config.resolve(colorspace)
        except colour.ColourError as exc:
            raise ConvertError(f"'{strip.name}': {exc}") from exc
        self.is_float = not planning.is_display_referred(space)
        self.ext = ".exr" if self.is_float else ".png"
        self.png_depth = "16" if frames else "8"  # scans hold 10 bits or more; movies 8
        # EXR is written in the scene-linear space; PNG through the Standard view to the sRGB display.
        self.colorspace = config.scene_linear if self.is_float else "sRGB"
        self.scene_name = scene.name
        self.source = strip.name
        self.channel = strip.channel
        self.first_frame = compat.span(strip)[0]
        self.frames = list(range(*compat.span(strip)))
        if not self.frames:
            raise ConvertError(f"'{strip.name}' shows no frames")
        self.size = (width, height)
        # Fails now, not after rendering, when no channel above is free for the whole range.
        planning.free_channel(
            strips.occupied(scene), self.first_frame, self.first_frame + len(self.frames), self.channel
        )
        self.output = planning.output_folder(parent, strip.name, "image sequence", "convert")
        self.temp = os.path.join(parent, f".{os.path.basename(self.output)}.tmp-convert")
        self.stem = planning.slug(strip.name, 24)
        self.files: list[str] = []
        self.state = "IDLE"
        self.message = ""
        self.progress = 0.0
        self.result_strip = ""
        self.on_event: Any = None
        self.on_finish: Any = None
        self._iso: strip_render.IsolatedStrip | None = None

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def start(self) -> ConvertTask:
        """Prepare the throwaway scene and the temporary folder; rendering happens in tick()."""
        scene = self._scene()
        os.makedirs(self.temp, exist_ok=False)
        try:
            fmt = ("OPEN_EXR", "16", "RGBA") if self.is_float else ("PNG", self.png_depth, "RGB")
            self._iso = strip_render.IsolatedStrip(scene, self.source, *self.size, *fmt)
        except Exception:
            shutil.rmtree(self.temp, ignore_errors=True)
            raise
        self.state = RUNNING
        self.message = f"Converting '{self.source}': 0/{len(self.frames)} frames"
        return self

    def tick(self) -> bool:
        """Render the next frame (the last one also adds the strip). True while frames remain."""
        if not self.running:
            return False
        try:
            i = len(self.files)
            name = frame_file(self.stem, i, self.ext)
            assert self._iso is not None
            self._iso.render(self.frames[i], os.path.join(self.temp, name))
            self.files.append(name)
            self.progress = len(self.files) / len(self.frames)
            self.message = f"Converting '{self.source}': {len(self.files)}/{len(self.frames)} frames"
            if len(self.files) == len(self.frames):
                self._complete()
            elif self.on_event:
                self.on_event(self, {"event": "progress"})
        except Exception as exc:  # a failed render must not leave half a folder or a spinning bar
            self._end(ERROR, f"Converting '{self.source}' failed: {exc}")
        return self.running

    def _complete(self) -> None:
        self._close_scene()
        os.rename(self.temp, self.output)
        scene = self._scene()
        strip = strips.add_image_strip(
            scene,
            strip_name(self.source),
            self.output,
            self.files,
            self.first_frame,
            self.channel,
            self.colorspace,
        )
        ed = scene.sequence_editor
        for other in compat.strips_all(ed):
            other.select = False
        strip.select = True
        ed.active_strip = strip
        self.result_strip = strip.name
        self._end(DONE, f"Added '{strip.name}' on channel {strip.channel}: {len(self.files)} frames")

    def cancel(self, timeout: float | None = None) -> None:
        if self.running:
            self._end(CANCELLED, "Conversion cancelled: nothing was added")

    def shutdown(self, timeout: float = 5.0) -> None:
        self.cancel()

    def wait(self, timeout: float, interval: float = 0.0) -> bool:
        return wait(self, timeout, interval)

    def log_tail(self, lines: int = 20) -> str:
        return self.message

    def _scene(self) -> Any:
        scene = bpy.data.scenes.get(self.scene_name)
        if scene is None:
            raise ConvertError(f"the scene {self.scene_name!r} is gone")
        return scene

    def _close_scene(self) -> None:
        if self._iso is not None:
            self._iso.close()
            self._iso = None

    def _end(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        self._close_scene()
        if state != DONE:
            shutil.rmtree(self.temp, ignore_errors=True)
        else:
            self.progress = 1.0
        if self.on_finish:
            self.on_finish(self)


def start(context: Any) -> ConvertTask:
    """Check the active strip and start converting it; raise ConvertError before anything is written."""
    if registry.running(session.SLOT_CONVERT):
        raise ConvertError("a conversion is already running; cancel it or wait for it to finish")
    scene = compat.scene_of(context)
    if scene is None:
        raise ConvertError("no scene: open a scene in the Sequencer")
    parent = session.output_parent(scene)
    task = ConvertTask(scene, compat.active_strip(context, scene), parent)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise ConvertError(f"cannot create the Output folder {parent}: {exc.strerror or exc}") from exc
    task.on_event = lambda t, _event: session.redraw()
    task.on_finish = lambda t: session.redraw()
    registry.put(session.SLOT_CONVERT, task)
    task.start()
    session.ensure_timer()
    return task


def cancel() -> bool:
    task = registry.running(session.SLOT_CONVERT)
    if task is None:
        return False
    task.cancel()
    return True
