"""The "Takes" sub-panel: every Preview and Propagate of the active source strip, newest first, with
Preview Variations, the estimated cost of a run, and what can be done with the selected take."""

from __future__ import annotations

import time

import bpy

from ..tokenflow_blender import compat
from ..tokenflow_blender.runs import registry
from ..tokenflow_blender.session import SLOT_EDIT
from ..tokenflow_blender.takes import listing, manifest
from .panels import TokenFlowPanel, wrap


class SEQUENCER_UL_tokenflow_takes(bpy.types.UIList):
    """A compact row per take: prompt (shortened), seed, kind, age; only the active source's manifest."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        prompt, seed, kind, age = manifest.row(_as_take(item), time.time())
        row = layout.row(align=True)
        row.label(text=prompt, icon="HIDE_OFF" if kind == manifest.PREVIEW else "SEQ_SEQUENCER")
        row.label(text=seed)
        row.label(text=kind)
        row.label(text=age)

    def filter_items(self, context, data, propname):
        scene = compat.scene_of(context)
        source = listing.source_name(context, scene) if scene is not None else ""
        items = getattr(data, propname)
        flags = [self.bitflag_filter_item if item.source == source else 0 for item in items]
        return flags, []


def _as_take(item) -> manifest.Take:
    """The row's values as a Take (the list rows need no manifest read)."""
    return manifest.Take(
        id=item.take_id,
        folder=item.folder,
        kind=item.kind,
        source=item.source,
        scene="",
        prompt=item.prompt,
        seed=item.seed,
        created=item.created,
        seconds=None,
        keyframes=[],
        job={},
        stats={},
    )


class SEQUENCER_PT_tokenflow_takes(TokenFlowPanel, bpy.types.Panel):
    bl_label = "Takes"
    bl_parent_id = "SEQUENCER_PT_tokenflow"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = compat.scene_of(context)
        pg = scene.tokenflow_takes
        running = registry.running(SLOT_EDIT) is not None

        layout.label(text=listing.estimate_line(context, scene), icon="TIME")
        box = layout.box()
        row = box.row(align=True)
        row.prop(pg, "variation_source", expand=True)
        if pg.variation_source == "SEEDS":
            box.prop(pg, "variation_count")
        else:
            box.prop(pg, "variation_text")
        row = box.row()
        row.enabled = not running
        row.operator("sequencer.tokenflow_preview_variations", icon="RENDERLAYERS")

        source = listing.source_name(context, scene)
        header = layout.row()
        header.label(text=f"Takes of {source}" if source else "Takes: select a source strip")
        header.operator("sequencer.tokenflow_refresh_takes", text="", icon="FILE_REFRESH")
        layout.template_list("SEQUENCER_UL_tokenflow_takes", "", pg, "takes", pg, "index", rows=4)

        take = listing.selected(scene)
        if take is not None and take.source == source:
            col = layout.box().column(align=True)
            for line in manifest.details(take):
                for part in wrap(line, 48)[:2]:
                    col.label(text=part)
            row = layout.row(align=True)
            row.operator("sequencer.tokenflow_restore_take", icon="LOOP_BACK")
            row.operator("sequencer.tokenflow_solo_take", icon="SOLO_ON")
            row = layout.row(align=True)
            row.enabled = not running
            if take.kind == manifest.PREVIEW:
                row.operator("sequencer.tokenflow_propagate_take", icon="SEQ_SEQUENCER")
            row.operator("sequencer.tokenflow_delete_take", icon="TRASH")
        for note in pg.notes.splitlines()[:3]:
            for i, part in enumerate(wrap(f"Skipped: {note}", 48)[:3]):
                layout.label(text=part, icon="ERROR" if i == 0 else "BLANK1")


classes = (SEQUENCER_UL_tokenflow_takes, SEQUENCER_PT_tokenflow_takes)
register, unregister = bpy.utils.register_classes_factory(classes)
