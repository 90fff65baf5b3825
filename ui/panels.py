"""Sidebar panels in the Sequencer (tab "TokenFlow"): prompts, settings, buttons, progress, errors."""

from __future__ import annotations

import bpy

from ..tokenflow_blender import compat
from ..tokenflow_blender.edit import job, model_info
from ..tokenflow_blender.runs import registry, warm
from ..tokenflow_blender.sequencer import convert
from ..tokenflow_blender.session import SLOT_CONVERT, SLOT_EDIT, SLOT_FARM
from ..tokenflow_blender.settings import preferences


class TokenFlowPanel:
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "TokenFlow"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return compat.scene_of(context) is not None


class SEQUENCER_PT_tokenflow(TokenFlowPanel, bpy.types.Panel):
    bl_label = "TokenFlow"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = compat.scene_of(context)
        settings = scene.tokenflow
        state = context.window_manager.tokenflow_job
        strip = compat.active_strip(context, scene)

        col = layout.column(align=True)
        col.label(text=f"Strip: {strip.name}" if strip else "Strip: none selected", icon="SEQUENCE")
        _draw_convert(layout, strip)
        col = layout.column()
        col.prop(settings, "prompt")
        col.prop(settings, "negative_prompt")
        col.prop(settings, "source_prompt")
        col.prop(settings, "model", placeholder=preferences.default_model())
        model = job.model_path(settings.model.strip() or preferences.default_model())
        if model.endswith(".safetensors"):
            col.prop(settings, "model_config")
        described, problem = model_info.describe(model, settings.size)
        if problem:
            box = col.box()
            box.alert = True
            for i, line in enumerate(wrap(problem, 48)[:4]):
                box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
        else:
            col.label(text=described, icon="NODE_COMPOSITING")

        running = registry.running(SLOT_EDIT) is not None
        row = layout.row(align=True)
        row.scale_y = 1.3
        row.enabled = not running
        row.operator("sequencer.tokenflow_preview", icon="HIDE_OFF")
        row.operator("sequencer.tokenflow_propagate", icon="SEQ_SEQUENCER")

        if running:
            box = layout.box()
            text = f"{state.stage.capitalize()} {round(state.progress * 100)}%"
            if state.eta:
                text += f", {state.eta}"
            box.progress(factor=state.progress, type="BAR", text=text)
            box.label(text=state.message[:120] or "Starting the engine...")
            box.operator("sequencer.tokenflow_cancel", icon="CANCEL")
        elif state.status in ("DONE", "CANCELLED") and state.message:
            layout.label(text=state.message[:160], icon="CHECKMARK" if state.status == "DONE" else "INFO")
            if state.status == "DONE" and state.quality:
                layout.label(text=f"Consistency: {state.quality}", icon="GRAPH")
        if state.error:
            box = layout.box()
            box.alert = True
            for i, line in enumerate(wrap(state.error, 48)[:8]):
                box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
        if state.log_path:
            layout.operator("sequencer.tokenflow_show_log", icon="TEXT")
        if not running and warm.current() is not None:
            layout.operator("sequencer.tokenflow_unload_model", icon="UNLINKED")


class SEQUENCER_PT_tokenflow_settings(TokenFlowPanel, bpy.types.Panel):
    bl_label = "Settings"
    bl_parent_id = "SEQUENCER_PT_tokenflow"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        settings = compat.scene_of(context).tokenflow
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        col = layout.column()
        col.prop(settings, "steps")
        col.prop(settings, "guidance")
        col.prop(settings, "edit_mode")
        if settings.edit_mode == "pnp":
            col.prop(settings, "pnp_f_t")
            col.prop(settings, "pnp_attn_t")
        else:
            col.prop(settings, "sdedit_strength")
        col.separator()
        col.prop(settings, "keyframe_mode")
        col.prop(settings, "keyframe_stride")
        col.prop(settings, "seed")
        col.prop(settings, "size")
        col.prop(settings, "chunk_size")
        col.separator()
        col.label(text="PnP layers (empty: the model family's)")
        col.prop(settings, "pnp_qk_layers")
        col.prop(settings, "pnp_conv_layers")
        col.separator()
        col.prop(settings, "evaluate")
        col.prop(settings, "output_dir")


class SEQUENCER_PT_tokenflow_farm(TokenFlowPanel, bpy.types.Panel):
    """Submit to Farm: the shot as a Flamenco job; its result comes back like a local Propagate."""

    bl_label = "Farm"
    bl_parent_id = "SEQUENCER_PT_tokenflow"

    def draw(self, context: bpy.types.Context) -> None:
        settings = compat.scene_of(context).tokenflow
        state = context.window_manager.tokenflow_job
        layout = self.layout
        layout.label(text=f"Manager: {preferences.farm_manager_url() or 'not set'}", icon="NETWORK_DRIVE")
        layout.prop(settings, "farm_chunk_size")
        running = registry.running(SLOT_FARM) is not None
        row = layout.row()
        row.enabled = not running
        row.operator("sequencer.tokenflow_submit_farm", icon="EXPORT")
        if running:
            box = layout.box()
            stage = state.farm_stage.capitalize() or "Submitting"
            box.progress(
                factor=state.farm_progress, type="BAR", text=f"{stage} {round(state.farm_progress * 100)}%"
            )
            box.label(text=state.farm_message[:120] or "Contacting the Manager...")
            if state.farm_job_id:
                box.label(text=f"Job {state.farm_job_id}")
            row = box.row(align=True)
            if state.farm_web_page:
                row.operator("wm.url_open", text="Open in Manager", icon="URL").url = state.farm_web_page
            row.operator("sequencer.tokenflow_cancel_farm", icon="CANCEL")
        elif state.farm_status in ("DONE", "CANCELLED") and state.farm_message:
            for i, line in enumerate(wrap(state.farm_message, 48)[:4]):
                icon = ("CHECKMARK" if state.farm_status == "DONE" else "INFO") if i == 0 else "BLANK1"
                layout.label(text=line, icon=icon)
        layout.label(text="Frames and Output must be on shared storage", icon="INFO")


class SEQUENCER_PT_tokenflow_matte(TokenFlowPanel, bpy.types.Panel):
    """The matte that limits the edit: another strip, its channel, invert and feather."""

    bl_label = "Matte"
    bl_parent_id = "SEQUENCER_PT_tokenflow"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        scene = compat.scene_of(context)
        settings = scene.tokenflow
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        ed = scene.sequence_editor
        if ed is not None:
            collection = "strips_all" if hasattr(ed, "strips_all") else "sequences_all"
            layout.prop_search(settings, "matte", ed, collection, icon="MOD_MASK")
        else:
            layout.prop(settings, "matte")
        col = layout.column()
        col.active = bool(settings.matte.strip())
        col.prop(settings, "matte_channel")
        col.prop(settings, "matte_invert")
        col.prop(settings, "matte_feather")


def _draw_convert(layout: bpy.types.UILayout, strip: object) -> None:
    """Convert to Image Sequence: offered for a movie strip and for frames only Blender reads (DPX,
    Cineon, HDR), with progress and cancel while it runs."""
    task = registry.get(SLOT_CONVERT)
    if task is not None and task.running:
        box = layout.box()
        box.progress(factor=task.progress, type="BAR", text=task.message[:120])
        box.operator("sequencer.tokenflow_cancel_convert", icon="CANCEL")
        return
    if strip is not None and convert.convertible(strip):
        box = layout.box()
        movie = getattr(strip, "type", "") != "IMAGE"
        text = "TokenFlow edits image sequences" if movie else "TokenFlow reads PNG, JPEG, TIFF and EXR"
        box.label(text=text, icon="INFO")
        box.operator("sequencer.tokenflow_convert_movie", icon="RENDER_ANIMATION")
    if task is not None and task.message:
        icon = {"DONE": "CHECKMARK", "ERROR": "ERROR"}.get(task.state, "INFO")
        layout.label(text=task.message[:160], icon=icon)


def wrap(text: str, width: int) -> list[str]:
    """Word-wrap a message for labels (a label does not wrap by itself)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return lines


classes = (
    SEQUENCER_PT_tokenflow,
    SEQUENCER_PT_tokenflow_settings,
    SEQUENCER_PT_tokenflow_farm,
    SEQUENCER_PT_tokenflow_matte,
)
register, unregister = bpy.utils.register_classes_factory(classes)
