"""Extension preferences: the engine's Python, the default model, the cache folder, the device,
and the Flamenco Manager that "Submit to Farm" talks to."""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty

from ...engine import protocol
from ..farm import flamenco
from ..runs import engine_env

ADDON_ID = __package__.rsplit(".", 2)[0]  # the extension's module, e.g. bl_ext.user_default.tokenflow


def user_path(sub: str) -> str:
    """A folder under the extension's user directory (never the extension's own folder)."""
    return bpy.utils.extension_path_user(ADDON_ID, path=sub, create=True)


def get() -> TokenFlowPreferences | None:
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon else None


def engine_python() -> str:
    prefs = get()
    return engine_env.resolve_python(prefs.engine_python if prefs else "", managed_venv())


def managed_venv() -> str:
    return os.path.join(bpy.utils.extension_path_user(ADDON_ID, create=True), engine_env.VENV_FOLDER)


def cache_dir() -> str:
    prefs = get()
    if prefs and prefs.cache_dir.strip():
        return bpy.path.abspath(prefs.cache_dir.strip())
    return user_path("cache")


def default_model() -> str:
    prefs = get()
    return prefs.default_model.strip() if prefs and prefs.default_model.strip() else protocol.DEFAULT_MODEL


def device() -> str:
    prefs = get()
    return prefs.device if prefs else "auto"


def keep_engine_warm() -> bool:
    prefs = get()
    return bool(prefs.keep_engine_warm) if prefs else True


def idle_timeout() -> float:
    """Seconds the warm engine waits for a job before it exits (0: until Blender quits)."""
    prefs = get()
    return round(max(0.0, prefs.engine_idle_minutes if prefs else 10.0) * 60.0, 1)


def farm_manager_url() -> str:
    prefs = get()
    return prefs.farm_manager_url.strip() if prefs else flamenco.DEFAULT_URL


def farm_worker_tag() -> str:
    prefs = get()
    return prefs.farm_worker_tag.strip() if prefs else ""


def farm_cache_dir() -> str:
    """The inversion cache as the workers see it; empty lets each worker use its own."""
    prefs = get()
    return prefs.farm_cache_dir.strip() if prefs else ""


class TokenFlowPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    engine_python: StringProperty(
        name="Engine Python",
        description="The Python of the engine environment (torch, diffusers). Empty: the extension's own "
        "environment, made by 'Install engine'",
        default="",
        subtype="FILE_PATH",
    )
    default_model: StringProperty(
        name="Default Model",
        description="Stable Diffusion 1.x/2.x: a hub id, a local diffusers folder or a .safetensors file",
        default=protocol.DEFAULT_MODEL,
    )
    cache_dir: StringProperty(
        name="Cache Folder",
        description="Where the engine caches DDIM inversions per frame (re-edits skip the inversion). "
        "Empty: the extension's user folder",
        default="",
        subtype="DIR_PATH",
    )
    device: EnumProperty(
        name="Device",
        items=(
            ("auto", "Automatic", "CUDA, then Apple MPS, then the CPU (slow)"),
            ("cuda", "CUDA", "An NVIDIA GPU (fp16)"),
            ("mps", "Apple MPS", "Apple silicon GPU"),
            ("cpu", "CPU", "Very slow with real models; fine for tests"),
        ),
        default="auto",
    )
    torch_index_url: StringProperty(
        name="PyTorch Index",
        description="Optional pip index for torch, e.g. https://download.pytorch.org/whl/cu124 for a CUDA "
        "build on Windows; empty installs torch from PyPI",
        default="",
    )

    farm_manager_url: StringProperty(
        name="Flamenco Manager",
        description="Address of the Flamenco 3 Manager that 'Submit to Farm' sends jobs to, e.g. "
        "http://localhost:8080 or http://192.168.1.10:8080",
        default=flamenco.DEFAULT_URL,
    )
    farm_worker_tag: StringProperty(
        name="Worker Tag",
        description="Only workers with this Flamenco worker tag (its name or ID) take TokenFlow jobs: "
        "tag the GPU workers. Empty: any worker",
        default="",
    )
    farm_cache_dir: StringProperty(
        name="Farm Cache Folder",
        description="The inversion cache as the workers see it, on shared storage: the prepare task fills "
        "it once for every chunk. Empty: each worker caches in its own user folder",
        default="",
    )

    keep_engine_warm: BoolProperty(
        name="Keep Engine Warm",
        description="Keep one engine running between jobs with the model loaded: a Preview after a prompt "
        "tweak starts at once. Off: every job starts a new engine (frees memory between jobs)",
        default=True,
    )
    engine_idle_minutes: FloatProperty(
        name="Unload After (min)",
        description="The warm engine exits after this many minutes without a job, freeing its memory "
        "(0: only when Blender quits or on 'Unload Model')",
        default=10.0,
        min=0.0,
        soft_max=120.0,
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        state = context.window_manager.tokenflow_job
        col = layout.column()
        col.prop(self, "engine_python")
        col.label(text=f"Using: {engine_python()}", icon="CONSOLE")
        col.prop(self, "default_model")
        col.prop(self, "cache_dir")
        col.label(text=f"Cache: {cache_dir()}", icon="FILE_FOLDER")
        col.prop(self, "device")
        col.prop(self, "torch_index_url")
        row = col.row()
        row.prop(self, "keep_engine_warm")
        row.prop(self, "engine_idle_minutes")
        row = layout.row(align=True)
        row.operator("preferences.tokenflow_install_engine", icon="IMPORT")
        row.operator("preferences.tokenflow_check_engine", icon="CHECKMARK")
        if state.install_status:
            box = layout.box()
            if state.install_status == "RUNNING":
                box.progress(factor=state.install_progress, text=state.install_message[:80] or "Installing")
                box.operator("preferences.tokenflow_cancel_install", icon="CANCEL")
            else:
                box.label(
                    text=state.install_message[:200],
                    icon="ERROR" if state.install_status == "ERROR" else "INFO",
                )
            if state.install_log:
                op = box.operator("sequencer.tokenflow_show_log", text="Show Install Log", icon="TEXT")
                op.path = state.install_log
        if state.engine_info:
            layout.label(text=state.engine_info, icon="INFO")
        box = layout.box()
        box.label(text="Farm (Flamenco 3)", icon="NETWORK_DRIVE")
        col = box.column()
        col.prop(self, "farm_manager_url")
        col.prop(self, "farm_worker_tag")
        col.prop(self, "farm_cache_dir")
        col.label(text="Frames, output and model must be on storage the workers see, at the same path")


classes = (TokenFlowPreferences,)
register, unregister = bpy.utils.register_classes_factory(classes)
