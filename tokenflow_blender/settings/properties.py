"""Settings saved with the scene (`scene.tokenflow`) and the running job's state, which is not
saved (`window_manager.tokenflow_job`)."""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from ...engine import protocol
from ..edit import results

DEFAULTS = protocol.Job(frames=["-"], output="-", prompt="-")
# Blender 4.5 flags path properties that accept '//' (and warns about the others); 4.2 has no such
# flag. Asked of the API (a property can tell whether it has the flag) rather than of the version.
SUPPORTS_BLEND_RELATIVE = "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties
BLEND_RELATIVE = {"PATH_SUPPORTS_BLEND_RELATIVE"} if SUPPORTS_BLEND_RELATIVE else set()


INT_MAX = 2**31 - 1  # Blender's integer properties are 32-bit


def field(name: str, **ui: Any) -> dict[str, Any]:
    """A job field's description, default and limits from `protocol.FIELDS` (the same table the
    engine validates with and its command line shows), plus what only Blender needs (`ui`: soft
    limits, subtype, enum items, and a `note` appended to the description)."""
    spec = protocol.FIELDS[name]
    note = ui.pop("note", "")
    out: dict[str, Any] = {
        "description": spec.help[0].upper() + spec.help[1:] + (f". {note}" if note else ""),
        "default": getattr(DEFAULTS, name),
    }
    if spec.kind in ("int", "number"):
        low = spec.low + (spec.high - spec.low) / 100 if spec.low_open else spec.low  # (low, high]
        if spec.kind == "int":
            out["min"], out["max"] = int(low), min(int(spec.high), INT_MAX)
        else:
            out["min"], out["max"] = float(low), float(spec.high)
    out.update(ui)
    return out


class TokenFlowSettings(bpy.types.PropertyGroup):
    """One shot's edit settings; the field names follow protocol.Job."""

    prompt: StringProperty(
        name="Prompt",
        description="What the edited shot should look like, e.g. 'a watercolor painting of a city street'",
        default="",
    )
    negative_prompt: StringProperty(name="Negative", **field("negative_prompt"))
    source_prompt: StringProperty(name="Source", **field("source_prompt"))
    model: StringProperty(
        name="Model",
        **field("model", default="", note="Empty uses the default model from the extension's preferences"),
    )
    model_config: StringProperty(
        name="Model Configs",
        description=(
            "For a single .safetensors checkpoint without network: a diffusers folder of the same family "
            "whose configs describe it (the engine's --model-config); empty: diffusers fetches them once"
        ),
        default="",
        subtype="DIR_PATH",
    )
    steps: IntProperty(name="Steps", **field("steps", soft_max=200))
    guidance: FloatProperty(name="Guidance", **field("guidance", soft_max=20.0))
    pnp_f_t: FloatProperty(name="Feature Injection", **field("pnp_f_t", subtype="FACTOR"))
    pnp_attn_t: FloatProperty(name="Attention Injection", **field("pnp_attn_t", subtype="FACTOR"))
    edit_mode: EnumProperty(
        name="Edit Mode",
        items=(
            ("pnp", "Plug-and-Play", "Inject the source's features: keeps structure and motion"),
            ("sdedit", "SDEdit", "Start part-way from the inverted noise"),
        ),
        **field("edit_mode"),
    )
    sdedit_strength: FloatProperty(name="SDEdit Strength", **field("sdedit_strength", subtype="FACTOR"))
    keyframe_stride: IntProperty(name="Keyframe Stride", **field("keyframe_stride", soft_max=32))
    keyframe_mode: EnumProperty(
        name="Keyframes",
        items=(
            (
                "fixed",
                "Fixed",
                "Evenly spaced, the same at every step: the preview equals the final keyframes",
            ),
            ("resample", "Resample", "One random keyframe per block, re-drawn every step (the paper's)"),
        ),
        **field("keyframe_mode"),
    )
    seed: IntProperty(name="Seed", **field("seed"))
    size: IntProperty(name="Working Size", **field("size", step=64, note="The panel shows the model's"))
    chunk_size: IntProperty(name="Chunk Size", **field("chunk_size"))
    pnp_qk_layers: StringProperty(name="Query/Key Layers", **field("pnp_qk_layers"))
    pnp_conv_layers: StringProperty(name="Residual Layers", **field("pnp_conv_layers"))
    evaluate: BoolProperty(
        name="Measure Consistency",
        **field("evaluate", default=True, note="After Propagate, shown in the panel; adds a few seconds"),
    )
    farm_chunk_size: IntProperty(
        name="Frames per Worker",
        description="Submit to Farm: frames per worker task (rounded up to a multiple of the keyframe "
        "stride). Every task also computes the keyframes, so fewer, larger tasks waste less",
        default=48,
        min=1,
        soft_max=480,
    )
    output_dir: StringProperty(
        name="Output",
        description="Folder for result frames ('//' is the .blend's folder; an unsaved file uses the "
        "extension's user folder). Every run writes a new sub-folder",
        default="//tokenflow/",
        subtype="DIR_PATH",
        options=BLEND_RELATIVE,
    )
    # Matte: another strip of the sequencer that limits the edit (issue 10)
    matte: StringProperty(
        name="Matte",
        description="A strip that limits the edit to where it is white: a Mask strip drawn in the mask "
        "editor, or an image or movie strip read through its alpha or luminance. It must cover every "
        "frame of the source. Empty edits the whole frame",
        default="",
    )
    matte_channel: EnumProperty(
        name="Matte Channel",
        items=(
            ("auto", "Auto", "The alpha channel when the matte's files have one, else their luminance"),
            ("alpha", "Alpha", "The matte's alpha channel"),
            ("luminance", "Luminance", "The matte's luminance (white edits, black keeps the source)"),
        ),
        **field("matte_channel"),
    )
    matte_invert: BoolProperty(name="Invert Matte", **field("matte_invert"))
    matte_feather: FloatProperty(name="Feather", **field("matte_feather", soft_max=100.0, subtype="PIXEL"))


def _last_result(_state: bpy.types.PropertyGroup) -> str:
    """The getter of `last_result`: a module function, since Blender evaluates the (postponed)
    annotations where a lambda's body would not find this module's names."""
    return results.last_json()


class TokenFlowJobState(bpy.types.PropertyGroup):
    """What the panel shows about the current (or last) job; filled from its task (session.show_progress)."""

    status: StringProperty(default="IDLE")  # IDLE RUNNING DONE ERROR CANCELLED
    kind: StringProperty(default="")  # preview | propagate | check | install
    stage: StringProperty(default="")
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    eta: StringProperty(default="")
    message: StringProperty(default="")
    error: StringProperty(name="Last Error", default="")
    log_path: StringProperty(default="", subtype="FILE_PATH")
    output: StringProperty(default="", subtype="DIR_PATH")
    result_strip: StringProperty(default="")
    quality: StringProperty(default="")  # e.g. "warp error 3.1 (source 1.1)" after a measured run
    engine_info: StringProperty(default="")  # answer of "Check engine"
    install_status: StringProperty(default="")
    install_message: StringProperty(default="")
    install_progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    install_log: StringProperty(default="", subtype="FILE_PATH")
    show_log: BoolProperty(default=False)
    # Submit to Farm: the farm job's state (its own slot, so local previews can run meanwhile)
    farm_status: StringProperty(default="")  # "" RUNNING DONE ERROR CANCELLED
    farm_stage: StringProperty(default="")  # the Flamenco job status: queued, active, ...
    farm_message: StringProperty(default="")
    farm_progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    farm_job_id: StringProperty(default="")
    farm_web_page: StringProperty(default="")
    # For scripts and pipeline tools (README "For scripts and pipeline tools"); read-only.
    last_result: StringProperty(
        name="Last Result",
        description="The engine's `done` event of the last result added (JSON: output, files, indices, "
        "keyframes, stats, metrics); empty while a Preview/Propagate runs or when it did not finish. "
        "The result folder's tokenflow.json is the durable record",
        get=_last_result,
    )


classes = (TokenFlowSettings, TokenFlowJobState)
_register, _unregister = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register()
    bpy.types.Scene.tokenflow = PointerProperty(type=TokenFlowSettings)
    bpy.types.WindowManager.tokenflow_job = PointerProperty(type=TokenFlowJobState)


def unregister() -> None:
    del bpy.types.WindowManager.tokenflow_job
    del bpy.types.Scene.tokenflow
    _unregister()
