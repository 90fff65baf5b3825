"""The Blender session's side of every job: its slots, its public state, its timer and handlers.

Tasks run in slots of :mod:`.runs.registry` (one edit, one install, one check, one farm job, one
conversion at a time). Their progress is copied into `window_manager.tokenflow_job` (:func:`state`),
which the panels and scripts read. A timer calls :func:`tick` every 0.2 s while anything runs; in
the bpy module timers never fire, so tests and scripts tick themselves (:func:`.jobs.wait`). Opening
another file cancels what belongs to the old one; quitting Blender or disabling the extension ends
every child process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable
from typing import Any

import bpy

from . import compat
from .runs import process, registry, warm
from .runs.task import DONE, ProcessTask
from .sequencer import planning
from .settings import preferences

SLOT_EDIT, SLOT_INSTALL, SLOT_CHECK, SLOT_FARM = "edit", "install", "check", "farm"
SLOT_CONVERT = "convert"  # Convert to Image Sequence (sequencer/convert.py)
TIMER_INTERVAL = 0.2
KEEP_LOGS = 40


class UserError(ValueError):
    """A problem the user can fix; shown in the panel and as an operator report."""


# --- paths ---------------------------------------------------------------------------------
def jobs_dir() -> str:
    return preferences.user_path("jobs")


def pid_dir() -> str:
    return preferences.user_path("run")


def output_parent(scene: Any) -> str:
    """The scene's output folder, absolute; '//' in an unsaved file goes to the user folder."""
    raw = scene.tokenflow.output_dir.strip() or "//tokenflow/"
    if raw.startswith("//") and not bpy.data.filepath:
        return preferences.user_path("results")
    return os.path.abspath(bpy.path.abspath(raw))


def prune_logs(folder: str) -> None:
    """Keep the newest job files and logs; they are small but would pile up over months."""
    try:
        entries = sorted(
            (os.path.join(folder, n) for n in os.listdir(folder)), key=os.path.getmtime, reverse=True
        )
    except OSError:
        return
    for path in entries[KEEP_LOGS * 3 :]:
        with contextlib.suppress(OSError):
            os.remove(path)


# --- state ---------------------------------------------------------------------------------
def state() -> Any:
    return bpy.context.window_manager.tokenflow_job


def redraw() -> None:
    """Tag the Sequencer and Preferences areas for redraw (the panels show the job state)."""
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type in ("SEQUENCE_EDITOR", "PREFERENCES"):
                area.tag_redraw()


def show_progress(task: ProcessTask) -> None:
    """Copy an edit/check task's progress into the window manager's job state."""
    st = state()
    if task.kind in ("preview", "propagate"):
        st.status = task.state
        st.stage = task.stage
        st.progress = task.progress
        st.eta = planning.format_eta(task.eta) if task.running else ""
        st.message = task.message[:1000]
    redraw()


def show_install(task: ProcessTask) -> None:
    """Copy the engine install's progress into the job state (the Preferences show it)."""
    st = state()
    st.install_status = task.state
    st.install_log = task.log_path
    if task.running:
        st.install_progress = sum(s.weight for s in task.steps[: max(0, task.step_index)]) / sum(
            s.weight for s in task.steps
        )
        st.install_message = f"{task.stage}: {task.message}" if task.message else task.stage
    elif task.state == DONE:
        st.install_progress = 1.0
        result = task.result or {}
        st.install_message = (
            f"Engine installed: torch {result.get('torch', '?')}, device {result.get('device', '?')}"
        )
    else:
        st.install_message = f"Install failed at '{task.stage}': {task.message} (see the install log)"
    redraw()


def fail(op: bpy.types.Operator, message: str) -> set[str]:
    """Report an operator's problem and keep it in the panel: no silent failures."""
    state().error = message
    op.report({"ERROR"}, message)
    return {"CANCELLED"}


class SceneOperator:
    """An operator that needs only a scene: not stricter, since a failed poll says only "context is
    incorrect" while execute() says what is wrong."""

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return compat.scene_of(context) is not None


class CancelOperator:
    """The Cancel button of one job slot: offered while that slot runs; `stop` ends the task and
    `said` is what the report says. Made by :func:`cancel_operator`."""

    slot = ""
    said = ""
    stop: Callable[[], Any]

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return registry.running(cls.slot) is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        type(self).stop()
        self.report({"INFO"}, self.said)
        return {"FINISHED"}


def cancel_operator(idname: str, label: str, doc: str, slot: str, said: str, stop: Callable[[], Any]) -> type:
    """The operator class of a slot's Cancel button (`SEQUENCER_OT_...` from `sequencer....`)."""
    group, name = idname.split(".")
    body = {"__doc__": doc, "bl_idname": idname, "bl_label": label, "bl_options": {"REGISTER"}}
    body.update(slot=slot, said=said, stop=staticmethod(stop))
    return type(f"{group.upper()}_OT_{name}", (CancelOperator, bpy.types.Operator), body)


# --- timer, quitting ---------------------------------------------------------------------------
def tick() -> bool:
    """One round of the timer: tick every task (and reap warm engines that were asked to exit);
    True while any runs."""
    exiting = warm.tick_all()
    return registry.tick_all() or exiting


def _timer() -> float | None:
    alive = tick()
    # The install bar advances per pip line; refresh it on every round.
    task = registry.running(SLOT_INSTALL)
    if task is not None:
        show_install(task)
    return TIMER_INTERVAL if alive else None


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL, persistent=True)


@bpy.app.handlers.persistent
def _on_load_pre(*_args: Any) -> None:
    """A job's result belongs to the file it started in: opening another file cancels an engine
    run and stops watching a farm job (the job itself carries on on the farm)."""
    for slot in (SLOT_EDIT, SLOT_FARM, SLOT_CONVERT):
        task = registry.running(slot)
        if task is not None:
            task.on_event = task.on_finish = None
            task.shutdown(timeout=5.0)


def _at_exit() -> None:
    registry.shutdown_all(timeout=3.0)
    warm.shutdown_all(timeout=3.0)


def register() -> None:
    with contextlib.suppress(Exception):  # a stale PID file must never block enabling the extension
        process.reap_stale(pid_dir())
    atexit.register(_at_exit)
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister() -> None:
    registry.forget_all()
    warm.shutdown_all(timeout=3.0)
    atexit.unregister(_at_exit)
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
