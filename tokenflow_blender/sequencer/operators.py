"""The Sequencer's own operators: Convert to Image Sequence and its Cancel, thin over :mod:`.convert`."""

from __future__ import annotations

import bpy

from .. import compat
from ..runs import registry
from ..session import SLOT_CONVERT, cancel_operator, fail
from . import convert


class SEQUENCER_OT_tokenflow_convert_movie(bpy.types.Operator):
    """Render the active movie strip's visible frames (trims, offsets, speed, colour space as the
    timeline shows them), or a DPX, Cineon or HDR sequence's, to a new folder of PNG or OpenEXR
    frames under Output, and add them as an image strip above it. The source is not changed"""

    bl_idname = "sequencer.tokenflow_convert_movie"
    bl_label = "Convert to Image Sequence"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return compat.scene_of(context) is not None and registry.running(SLOT_CONVERT) is None

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            task = convert.start(context)
        except (convert.ConvertError, ValueError, OSError) as exc:
            return fail(self, str(exc))
        self.report({"INFO"}, f"Converting '{task.source}': {len(task.frames)} frames")
        return {"FINISHED"}


SEQUENCER_OT_tokenflow_cancel_convert = cancel_operator(
    "sequencer.tokenflow_cancel_convert",
    "Cancel Conversion",
    "Stop converting the strip; nothing is added and the frames written so far are removed",
    SLOT_CONVERT,
    "Conversion cancelled",
    convert.cancel,
)


classes = (
    SEQUENCER_OT_tokenflow_convert_movie,
    SEQUENCER_OT_tokenflow_cancel_convert,
)
register, unregister = bpy.utils.register_classes_factory(classes)
