"""The takes' operators: Preview Variations, Refresh, Restore Settings, Show Only This Take,
Propagate This Take, Delete Take; thin over :mod:`.listing` (the list) and :mod:`..edit.start`."""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import BoolProperty

from ...engine import protocol
from .. import compat
from ..edit.operators import run_edit
from ..session import SceneOperator, UserError, fail
from . import manifest
from .listing import delete, refresh, restore, selected, solo, source_strip


class SEQUENCER_OT_tokenflow_preview_variations(SceneOperator, bpy.types.Operator):
    """Preview several variations of the current settings in one engine run (one model load, one
    inversion): one per line of the prompts text, or several seeds; each comes back as a preview take"""

    bl_idname = "sequencer.tokenflow_preview_variations"
    bl_label = "Preview Variations"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = compat.scene_of(context)
        pg = scene.tokenflow_takes
        text = pg.variation_text
        lines = [line.body for line in text.lines] if text is not None else []
        specs = manifest.variation_specs(pg.variation_source, pg.variation_count, scene.tokenflow.seed, lines)
        if len(specs) < 2:
            return fail(self, "Preview Variations needs two prompts or more, one a line of the Prompts text")
        said = f"TokenFlow: {len(specs)} variations started"
        return run_edit(self, context, protocol.STAGE_PREVIEW, said, variations=specs)


class SEQUENCER_OT_tokenflow_refresh_takes(SceneOperator, bpy.types.Operator):
    """Read the takes again from the manifests in the Output folder"""

    bl_idname = "sequencer.tokenflow_refresh_takes"
    bl_label = "Refresh Takes"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        found = refresh(compat.scene_of(context))
        self.report({"INFO"}, f"{len(found)} takes")
        return {"FINISHED"}


class _TakeOperator(SceneOperator):
    def take(self, context: Any) -> manifest.Take | None:
        take = selected(compat.scene_of(context))
        if take is None:
            fail(self, "no take selected (or its folder is gone): select one in the list, or Refresh")
        return take


class SEQUENCER_OT_tokenflow_restore_take(_TakeOperator, bpy.types.Operator):
    """Set the panel's fields to the selected take's prompts, seed, model and settings"""

    bl_idname = "sequencer.tokenflow_restore_take"
    bl_label = "Restore Settings"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        take = self.take(context)
        if take is None:
            return {"CANCELLED"}
        restore(compat.scene_of(context), take)
        self.report({"INFO"}, f"Settings of take '{take.id}' restored")
        return {"FINISHED"}


class SEQUENCER_OT_tokenflow_solo_take(_TakeOperator, bpy.types.Operator):
    """Mute the other takes' strips of this source; this take and the source stay visible"""

    bl_idname = "sequencer.tokenflow_solo_take"
    bl_label = "Show Only This Take"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        take = self.take(context)
        if take is None:
            return {"CANCELLED"}
        muted = solo(compat.scene_of(context), take)
        self.report({"INFO"}, f"Showing '{take.id}'; {muted} other take strip(s) muted")
        return {"FINISHED"}


class SEQUENCER_OT_tokenflow_propagate_take(_TakeOperator, bpy.types.Operator):
    """Propagate the selected preview take to the whole shot: its settings, on its source strip"""

    bl_idname = "sequencer.tokenflow_propagate_take"
    bl_label = "Propagate This Take"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        take = self.take(context)
        if take is None:
            return {"CANCELLED"}
        if take.kind != manifest.PREVIEW:
            return fail(self, f"'{take.id}' is already a propagated shot; select a preview take")
        scene = compat.scene_of(context)
        source = source_strip(scene, take)
        if source is None:
            return fail(self, f"the take's source strip '{take.source}' is not in this scene")
        restore(scene, take)
        scene.sequence_editor.active_strip = source
        return run_edit(self, context, protocol.STAGE_PROPAGATE, f"Propagating take '{take.id}'")


class SEQUENCER_OT_tokenflow_delete_take(_TakeOperator, bpy.types.Operator):
    """Remove the selected take's strip and delete its folder from disk, after a confirmation"""

    bl_idname = "sequencer.tokenflow_delete_take"
    bl_label = "Delete Take"
    bl_options = {"REGISTER", "UNDO"}

    # Set by invoke() before the confirmation dialog, whose OK then runs execute(); a script (or
    # INVOKE_DEFAULT in the bpy module, which skips invoke) must say confirmed=True itself.
    confirmed: BoolProperty(name="Confirmed", default=False, options={"SKIP_SAVE", "HIDDEN"})

    def invoke(self, context: bpy.types.Context, event: Any) -> set[str]:
        self.confirmed = True
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        take = self.take(context)
        if take is None:
            return {"CANCELLED"}
        if not self.confirmed:
            return fail(self, f"Delete Take removes '{take.folder}' from disk: it asks for a confirmation")
        scene = compat.scene_of(context)
        try:
            delete(scene, take)
        except (OSError, UserError) as exc:
            return fail(self, f"could not delete the take: {exc}")
        refresh(scene)
        self.report({"INFO"}, f"Deleted take '{take.id}'")
        return {"FINISHED"}


classes = (
    SEQUENCER_OT_tokenflow_preview_variations,
    SEQUENCER_OT_tokenflow_refresh_takes,
    SEQUENCER_OT_tokenflow_restore_take,
    SEQUENCER_OT_tokenflow_solo_take,
    SEQUENCER_OT_tokenflow_propagate_take,
    SEQUENCER_OT_tokenflow_delete_take,
)
register, unregister = bpy.utils.register_classes_factory(classes)
