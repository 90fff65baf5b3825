"""The farm's operators: Submit to Farm and Cancel Farm Job, thin over :mod:`.submit`."""

from __future__ import annotations

import bpy

from ..session import SLOT_FARM, SceneOperator, UserError, cancel_operator, fail
from . import submit


class SEQUENCER_OT_tokenflow_submit_farm(SceneOperator, bpy.types.Operator):
    """Send the active strip's edit to the Flamenco Manager set in the preferences; the result comes
    back as a new strip when the farm job completes. Frames and output must be on shared storage"""

    bl_idname = "sequencer.tokenflow_submit_farm"
    bl_label = "Submit to Farm"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            task = submit.start_farm(context)
        except UserError as exc:
            return fail(self, str(exc))
        self.report({"INFO"}, f"Submitting {task.context['count']} frames to {task.client.url}")
        return {"FINISHED"}


SEQUENCER_OT_tokenflow_cancel_farm = cancel_operator(
    "sequencer.tokenflow_cancel_farm",
    "Cancel Farm Job",
    "Ask the Flamenco Manager to cancel the farm job; nothing is added",
    SLOT_FARM,
    "Cancelling the farm job",
    submit.cancel,
)


classes = (
    SEQUENCER_OT_tokenflow_submit_farm,
    SEQUENCER_OT_tokenflow_cancel_farm,
)
register, unregister = bpy.utils.register_classes_factory(classes)
