"""The farm's operators: Submit to Farm and Cancel Farm Job, thin over :mod:`.submit`."""

from __future__ import annotations

import bpy

from .. import compat
from ..runs import registry
from ..session import SLOT_FARM, UserError, fail
from . import submit


class SEQUENCER_OT_tokenflow_submit_farm(bpy.types.Operator):
    """Send the active strip's edit to the Flamenco Manager set in the preferences; the result comes
    back as a new strip when the farm job completes. Frames and output must be on shared storage"""

    bl_idname = "sequencer.tokenflow_submit_farm"
    bl_label = "Submit to Farm"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return compat.scene_of(context) is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            task = submit.start_farm(context)
        except UserError as exc:
            return fail(self, str(exc))
        self.report({"INFO"}, f"Submitting {task.context['count']} frames to {task.client.url}")
        return {"FINISHED"}


class SEQUENCER_OT_tokenflow_cancel_farm(bpy.types.Operator):
    """Ask the Flamenco Manager to cancel the farm job; nothing is added"""

    bl_idname = "sequencer.tokenflow_cancel_farm"
    bl_label = "Cancel Farm Job"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return registry.running(SLOT_FARM) is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        submit.cancel()
        self.report({"INFO"}, "Cancelling the farm job")
        return {"FINISHED"}


classes = (
    SEQUENCER_OT_tokenflow_submit_farm,
    SEQUENCER_OT_tokenflow_cancel_farm,
)
register, unregister = bpy.utils.register_classes_factory(classes)
