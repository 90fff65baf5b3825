"""Starting engine runs from Blender, on the main thread only: an edit, the engine check, its install.

`start_edit()` turns the active strip into a :class:`protocol.Job` (:mod:`.job`), writes it and
starts the engine as a one-shot :class:`..runs.task.ProcessTask` or a job on the warm engine
(:mod:`..runs.warm`), in the session's edit slot. The session's timer ticks it; the task's
callbacks (here) move its progress into `window_manager.tokenflow_job` and, when it is done, add
the result strip and markers (:mod:`.apply`). In the bpy module timers never fire, so tests call
``registry.get("edit").tick()`` (or :func:`..jobs.tick`) in a loop: the same code path.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import bpy

from ...engine import protocol
from .. import compat
from ..runs import engine_env, registry, warm
from ..runs.task import CANCELLED, DONE, ProcessTask, Step
from ..sequencer import mattes, planning, strips
from ..session import (
    SLOT_CHECK,
    SLOT_EDIT,
    SLOT_INSTALL,
    UserError,
    ensure_timer,
    jobs_dir,
    output_parent,
    pid_dir,
    prune_logs,
    redraw,
    show_install,
    show_progress,
    state,
)
from ..settings import preferences
from ..takes import manifest
from . import results
from .apply import finish, result_context
from .job import build_job, matte_plan


def start_edit(context: Any, stage: str, variations: list[dict[str, Any]] | None = None) -> ProcessTask:
    """Check the active strip and the settings, then start the engine. Raise UserError before
    anything is launched or written when something is wrong. `variations` (Preview Variations, see
    :mod:`..takes.operators`) runs several previews in one engine run."""
    if registry.running(SLOT_EDIT):
        raise UserError("a TokenFlow job is already running; cancel it or wait for it to finish")
    scene = compat.scene_of(context)
    if scene is None:
        raise UserError("no scene: open a scene in the Sequencer")
    if not scene.tokenflow.prompt.strip():
        raise UserError("the prompt is empty: describe the edit, e.g. 'a watercolor painting'")
    strip = compat.active_strip(context, scene)
    try:
        shot = strips.read_shot(strip)
    except strips.SourceError as exc:
        raise UserError(str(exc)) from exc
    python = preferences.engine_python()
    problem = engine_env.check_python(python)
    if problem:
        raise UserError(problem)
    parent = output_parent(scene)
    named = "variations" if variations else scene.tokenflow.prompt
    output = planning.output_folder(parent, shot.name, named, stage)
    if variations:
        output = manifest.variation_base(output, len(variations))
    job = build_job(scene, shot, stage, output)  # the settings, checked before the matte
    matte = matte_plan(scene, shot, output)
    if matte is not None:
        job = build_job(scene, shot, stage, output, matte.paths)
    matte_dir = mattes.matte_folder(jobs_dir(), output)
    job.extra.update(manifest.take_extra(scene.name, shot.name))  # the manifest then describes the take
    if variations:
        job.variations = list(variations)
        try:
            job.validate()
        except protocol.JobError as exc:
            raise UserError(str(exc)) from exc
    try:
        os.makedirs(parent, exist_ok=True)
        folder = jobs_dir()
        prune_logs(folder)
        job_path = os.path.join(folder, f"{os.path.basename(output)}.json")
        with open(job_path, "w", encoding="utf-8") as fh:
            fh.write(job.to_json())
    except OSError as exc:
        shutil.rmtree(matte_dir, ignore_errors=True)
        raise UserError(f"cannot write the job: {exc}") from exc
    root = engine_env.extension_root()
    task_args: dict[str, Any] = dict(
        kind=stage,
        steps=[Step(stage.capitalize(), engine_env.engine_argv(python, "run", job_path))],
        log_dir=jobs_dir(),
        cwd=root,
        env=engine_env.engine_env(root, online=bool(bpy.app.online_access)),
        output=output,
        pid_dir=pid_dir(),
        on_event=_on_edit_event,
        on_finish=_on_edit_finish,
        prepare=matte.render.step if matte is not None and matte.render is not None else None,
        prepare_label="Matte",
        context={
            **result_context(scene, shot, job.prompt, stage),
            "job_path": job_path,
            "matte_dir": matte_dir,
            "matte": matte,
            "started": time.time(),
            "variations": len(variations or []),
        },
    )
    if preferences.keep_engine_warm():  # the job goes to the session's warm engine (runs/warm.py)
        argv = engine_env.engine_argv(python, "serve", "--idle-timeout", f"{preferences.idle_timeout():g}")
        engine = warm.engine_for(argv, root, task_args["env"], jobs_dir(), pid_dir())
        task: ProcessTask = warm.WarmJob(engine, json.dumps(job.to_dict()), **task_args)
    else:
        warm.unload()  # turned off: a warm engine left from before frees its memory
        task = ProcessTask(**task_args)
    st = state()
    st.kind = stage
    st.error = ""
    st.output = output
    st.result_strip = ""
    st.quality = ""
    st.log_path = task.log_path
    results.clear()
    registry.put(SLOT_EDIT, task)
    task.start()
    show_progress(task)
    if task.running:
        ensure_timer()
    return task


def _on_edit_event(task: ProcessTask, event: dict[str, Any]) -> None:
    show_progress(task)


def _on_edit_finish(task: ProcessTask) -> None:
    matte = task.context.get("matte")
    if matte is not None and matte.render is not None:  # rendered matte frames served this run only
        matte.render.close()
        shutil.rmtree(task.context["matte_dir"], ignore_errors=True)
    finish(task, "result", "the engine failed without a message; see the log")
    if task.state != DONE and task.context.get("variations"):
        manifest.discard_variation_temporaries(task.output, task.context["variations"])
    if task.state == CANCELLED:
        task.message = "Cancelled: nothing was added"
    show_progress(task)


def unload_engine() -> bool:
    """The "Unload Model" button: the warm engine exits, freeing its memory; False if none ran."""
    if registry.running(SLOT_EDIT):
        raise UserError("a TokenFlow job is running; cancel it or wait for it before unloading the model")
    unloaded = warm.unload()
    if unloaded:
        ensure_timer()
    return unloaded


def start_check() -> ProcessTask:
    if registry.running(SLOT_CHECK):
        raise UserError("the engine check is already running")
    python = preferences.engine_python()
    problem = engine_env.check_python(python)
    if problem:
        raise UserError(problem)
    root = engine_env.extension_root()
    task = ProcessTask(
        kind="check",
        steps=[Step("Check", engine_env.engine_argv(python, "check", "--device", preferences.device()))],
        log_dir=jobs_dir(),
        cwd=root,
        env=engine_env.engine_env(root, online=bool(bpy.app.online_access)),
        pid_dir=pid_dir(),
        on_finish=_on_check_finish,
        cancel_timeout=3.0,
    )
    state().engine_info = "Checking the engine..."
    registry.put(SLOT_CHECK, task)
    task.start()
    ensure_timer()
    return task


def _on_check_finish(task: ProcessTask) -> None:
    st = state()
    result = task.result
    if task.state == DONE and result:
        st.engine_info = (
            f"Engine OK: torch {result.get('torch')}, diffusers {result.get('diffusers')}, "
            f"device {result.get('device')} ({result.get('dtype')})"
        )
    else:
        st.engine_info = f"Engine check failed: {task.message or task.log_tail(1)}"
        st.error = st.engine_info
    redraw()


def start_install(torch_index_url: str = "") -> ProcessTask:
    """pip the engine's requirements into a venv in the extension's user folder."""
    if not bpy.app.online_access:
        raise UserError(
            "Installing the engine downloads torch and diffusers, but Blender's online access is off: "
            "enable Preferences > System > Network > Allow Online Access, or install the engine yourself "
            "(python -m venv ENV; ENV/bin/pip install -r engine/requirements.txt) and set 'Engine Python'"
        )
    if registry.running(SLOT_INSTALL):
        raise UserError("the engine is already being installed")
    root = engine_env.extension_root()
    requirements = os.path.join(root, "engine", "requirements.txt")
    steps = engine_env.install_steps(
        engine_env.base_python(), preferences.managed_venv(), requirements, torch_index_url
    )
    task = ProcessTask(
        kind="install",
        steps=steps,
        log_dir=jobs_dir(),
        cwd=root,
        env=engine_env.engine_env(root, online=True),
        pid_dir=pid_dir(),
        on_event=lambda t, e: show_install(t),
        on_finish=show_install,
        cancel_timeout=5.0,
    )
    registry.put(SLOT_INSTALL, task)
    task.start()
    show_install(task)
    ensure_timer()
    return task
