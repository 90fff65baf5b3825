"""The edit's operators (Preview, Propagate, Cancel, Show Log, Unload Model; Install, Check Engine):
thin wrappers that call :mod:`.start` and :mod:`..jobs` and turn their errors into reports.

They return at once: the engine runs as a subprocess and a timer brings its progress and result
back, so the UI never blocks (and `INVOKE_DEFAULT` from a script behaves like `execute`).
"""

from __future__ import annotations

import os

import bpy
from bpy.props import StringProperty

from ...engine import protocol
from .. import jobs
from ..runs.task import ERROR
from ..session import SLOT_EDIT, SLOT_INSTALL, SceneOperator, UserError, cancel_operator, fail, state
from ..settings import preferences
from . import start

LOG_TEXT = "TokenFlow Log"


def run_edit(op: bpy.types.Operator, context: bpy.types.Context, stage: str, said: str, **kwargs) -> set[str]:
    """Start an edit for an operator (Preview, Propagate, a take's, variations) and report it:
    `said` may name `{count}`, the shot's frame count."""
    try:
        task = start.start_edit(context, stage, **kwargs)
    except UserError as exc:
        return fail(op, str(exc))
    if task.state == ERROR:
        return fail(op, task.message)
    op.report({"INFO"}, said.replace("{count}", str(task.context["count"])))  # a take's name may hold braces
    return {"FINISHED"}


class _EditOperator(SceneOperator):
    stage = protocol.STAGE_PROPAGATE

    def execute(self, context: bpy.types.Context) -> set[str]:
        return run_edit(self, context, self.stage, f"TokenFlow {self.stage} started: {{count}} frames")


class SEQUENCER_OT_tokenflow_preview(_EditOperator, bpy.types.Operator):
    """Edit only the keyframes (about K/N of the full cost) and add them as a preview strip"""

    bl_idname = "sequencer.tokenflow_preview"
    bl_label = "Preview Keyframes"
    bl_options = {"REGISTER"}
    stage = protocol.STAGE_PREVIEW


class SEQUENCER_OT_tokenflow_propagate(_EditOperator, bpy.types.Operator):
    """Edit every frame of the active strip and add the result as a new strip above it"""

    bl_idname = "sequencer.tokenflow_propagate"
    bl_label = "Propagate"
    bl_options = {"REGISTER"}
    stage = protocol.STAGE_PROPAGATE


SEQUENCER_OT_tokenflow_cancel = cancel_operator(
    "sequencer.tokenflow_cancel",
    "Cancel",
    "Stop the running TokenFlow job; nothing is added and its temporary files are removed",
    SLOT_EDIT,
    "Cancelling the TokenFlow job",
    lambda: jobs.cancel(SLOT_EDIT),
)


class SEQUENCER_OT_tokenflow_show_log(bpy.types.Operator):
    """Open the engine's full log in a Text Editor window"""

    bl_idname = "sequencer.tokenflow_show_log"
    bl_label = "Show Engine Log"
    bl_options = {"REGISTER"}

    path: StringProperty(name="Log", default="", subtype="FILE_PATH", options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        path = self.path or state().log_path
        if not path or not os.path.isfile(path):
            self.report({"WARNING"}, "No engine log yet: run a job first")
            return {"CANCELLED"}
        with open(path, encoding="utf-8", errors="replace") as fh:
            content = fh.read()
        text = bpy.data.texts.get(LOG_TEXT) or bpy.data.texts.new(LOG_TEXT)
        text.clear()
        text.write(content)
        text.filepath = ""
        _open_text_window(context, text)
        self.report({"INFO"}, f"The engine log is in the text '{LOG_TEXT}' ({path})")
        return {"FINISHED"}


def _open_text_window(context: bpy.types.Context, text: bpy.types.Text) -> None:
    """A new window with the log in a Text Editor (only with a UI)."""
    if bpy.app.background or context.window is None:
        return
    try:
        bpy.ops.wm.window_new()
        window = context.window_manager.windows[-1]
        area = window.screen.areas[0]
        area.type = "TEXT_EDITOR"
        area.spaces[0].text = text
    except (RuntimeError, IndexError, AttributeError):
        pass


class PREFERENCES_OT_tokenflow_install_engine(bpy.types.Operator):
    """Create the engine environment (torch, diffusers) with pip in the extension's user folder"""

    bl_idname = "preferences.tokenflow_install_engine"
    bl_label = "Install Engine"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = preferences.get()
        try:
            start.start_install(prefs.torch_index_url if prefs else "")
        except UserError as exc:
            state().install_status = "ERROR"
            state().install_message = str(exc)
            return fail(self, str(exc))
        self.report({"INFO"}, "Installing the engine; this downloads a few GB")
        return {"FINISHED"}


class PREFERENCES_OT_tokenflow_cancel_install(bpy.types.Operator):
    """Stop installing the engine"""

    bl_idname = "preferences.tokenflow_cancel_install"
    bl_label = "Cancel Install"

    def execute(self, context: bpy.types.Context) -> set[str]:
        jobs.cancel(SLOT_INSTALL)
        return {"FINISHED"}


class PREFERENCES_OT_tokenflow_check_engine(bpy.types.Operator):
    """Run the engine once and report its torch version and the device it will use"""

    bl_idname = "preferences.tokenflow_check_engine"
    bl_label = "Check Engine"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            start.start_check()
        except UserError as exc:
            state().engine_info = str(exc)
            return fail(self, str(exc))
        self.report({"INFO"}, "Checking the engine")
        return {"FINISHED"}


class SEQUENCER_OT_tokenflow_unload_model(bpy.types.Operator):
    """End the warm engine and free the memory its model holds (the next job loads it again)"""

    bl_idname = "sequencer.tokenflow_unload_model"
    bl_label = "Unload Model"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            unloaded = start.unload_engine()
        except UserError as exc:
            return fail(self, str(exc))
        self.report({"INFO"}, "Model unloaded" if unloaded else "No model was loaded")
        return {"FINISHED"}


classes = (
    SEQUENCER_OT_tokenflow_unload_model,
    SEQUENCER_OT_tokenflow_preview,
    SEQUENCER_OT_tokenflow_propagate,
    SEQUENCER_OT_tokenflow_cancel,
    SEQUENCER_OT_tokenflow_show_log,
    PREFERENCES_OT_tokenflow_install_engine,
    PREFERENCES_OT_tokenflow_cancel_install,
    PREFERENCES_OT_tokenflow_check_engine,
)
register, unregister = bpy.utils.register_classes_factory(classes)
