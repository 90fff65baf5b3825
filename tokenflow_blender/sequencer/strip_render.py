"""Blender renders one strip alone, frame by frame, exactly as the timeline shows it.

Mask strips (drawn in the mask editor) and movie strips have no frame files the engine could read;
Blender itself is the only faithful decoder of their trims, offsets, speed, modifiers and colour
space. A copy of the scene keeps the strip's settings and the scene's frame rate; everything else in
its sequencer is removed, the colour management is set to pass values through (Standard view, no
look, no exposure), and each frame is rendered with `render.render(write_still=True)`. In the bpy
module and in the UI alike, the render follows the context's scene, hence the override.

Blender 4.2-5.0 never write the last pixel of a Mask strip's image: `seq_render_mask` copies
`width * height - 1` pixels (`while (--i)`) into a buffer allocated uninitialised, so the top-right
corner holds whatever memory held, white about once in fifty frames here. In a matte that pixel
would let the edit through outside the roto, so a Mask strip's render gets its corner repaired.
"""

from __future__ import annotations

import array
import contextlib
import os
from typing import Any

import bpy

from .. import compat


class RenderError(RuntimeError):
    """Blender could not render the strip; the message says which strip and frame."""


class IsolatedStrip:
    """A throwaway scene whose sequencer holds only a copy of one top-level strip."""

    def __init__(
        self,
        scene: Any,
        strip_name: str,
        width: int,
        height: int,
        file_format: str = "PNG",
        color_depth: str = "16",
        color_mode: str = "RGB",
    ) -> None:
        if compat.strips(scene.sequence_editor).get(strip_name) is None:
            raise RenderError(f"'{strip_name}' is inside a meta strip; use a strip at the top level")
        self.strip_name = strip_name
        self.is_mask = compat.strips(scene.sequence_editor).get(strip_name).type == "MASK"
        self.scene = scene.copy()
        self.scene.name = f"TF render {strip_name}"[:63]
        try:
            self._keep_only(strip_name)
            self._settings(width, height, file_format, color_depth, color_mode)
        except Exception:
            self.close()
            raise

    def _keep_only(self, name: str) -> None:
        coll = compat.strips(self.scene.sequence_editor)
        for other in [s.name for s in coll if s.name != name]:
            strip = coll.get(other)  # removing an effect's input may have removed the effect already
            if strip is not None:
                coll.remove(strip)
        strip = coll.get(name)
        strip.mute = False

    def _settings(self, width: int, height: int, file_format: str, color_depth: str, color_mode: str) -> None:
        sc = self.scene
        r = sc.render
        r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
        r.pixel_aspect_x = r.pixel_aspect_y = 1.0
        r.use_sequencer, r.use_compositing = True, False
        r.use_border = r.use_stamp = r.use_multiview = False
        r.use_file_extension = True
        fmt = r.image_settings
        fmt.file_format = file_format
        fmt.color_mode = color_mode
        fmt.color_depth = color_depth
        if file_format == "OPEN_EXR":
            fmt.exr_codec = "ZIP"
        view = sc.view_settings
        view.view_transform = "Standard"
        view.look = "None"
        view.exposure, view.gamma = 0.0, 1.0
        view.use_curve_mapping = False
        for flag in ("use_white_balance", "use_hdr_view"):  # 4.3+ / 4.x
            if hasattr(view, flag):
                setattr(view, flag, False)
        sc.display_settings.display_device = "sRGB"

    def render(self, frame: int, path: str) -> str:
        """Render timeline frame `frame` of the strip to `path`; return the path written."""
        sc = self.scene
        sc.frame_current = frame
        sc.render.filepath = path
        with bpy.context.temp_override(scene=sc):
            result = bpy.ops.render.render(write_still=True)
        if result != {"FINISHED"} or not os.path.isfile(path):
            raise RenderError(f"Blender did not render '{self.strip_name}' at frame {frame} to {path}")
        if self.is_mask:
            try:
                repair_last_pixel(path)
            except RuntimeError as exc:  # Blender's own "cannot read/write" (a full disk, a vanished file)
                raise RenderError(f"could not repair the last pixel of {path}: {exc}") from exc
        return path

    def close(self) -> None:
        """Remove the throwaway scene (idempotent)."""
        sc, self.scene = getattr(self, "scene", None), None
        if sc is not None:
            with contextlib.suppress(ReferenceError, RuntimeError):
                bpy.data.scenes.remove(sc)


def repair_last_pixel(path: str) -> None:
    """Give the image file's last pixel (Blender's order: the top-right corner) the value of its left
    neighbour, or of the pixel below in a one-pixel-wide image; the file keeps its format and depth.

    For Mask strip renders, whose last pixel Blender leaves unwritten (see the module docstring):
    the neighbour is what the rasterizer computed next to it, exact unless a roto edge runs between them.
    """
    img = bpy.data.images.load(path, check_existing=False)
    try:
        img.colorspace_settings.name = "Non-Color"  # raw values in and out: no transfer round trip
        width, height = img.size[0], img.size[1]
        channels = img.channels
        if width * height < 2:
            return
        pixels = array.array("f", bytes(4 * width * height * channels))
        img.pixels.foreach_get(pixels)
        last = (width * height - 1) * channels
        source = last - channels if width > 1 else last - width * channels
        if pixels[last : last + channels] == pixels[source : source + channels]:
            return  # nothing to write: the common case
        pixels[last : last + channels] = pixels[source : source + channels]
        img.pixels.foreach_set(pixels)
        img.save()
    finally:
        bpy.data.images.remove(img)
