"""Starting engine runs from Blender and bringing their results back, on the main thread only.

`start_edit()` turns the active strip into a :class:`protocol.Job`, writes it and starts the
engine through :mod:`.controller`. A timer calls :func:`controller.tick_all` every 0.2 s; the
task's callbacks (here) move its progress into `window_manager.tokenflow_job` and, when it is
done, add the result strip and markers. In the bpy module timers never fire, so tests call
``controller.get("edit").tick()`` (or :func:`tick`) in a loop: the same code path.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import time
from typing import Any

import bpy

from ..engine import protocol
from . import compat, controller, engine_env, mattes, planning, preferences, results, strips, takes, warm

SLOT_EDIT, SLOT_INSTALL, SLOT_CHECK, SLOT_FARM = "edit", "install", "check", "farm"
SLOT_CONVERT = "convert"  # Convert to Image Sequence (convert.py)
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


def _prune_logs(folder: str) -> None:
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


def _show(task: controller.ProcessTask) -> None:
    """Copy an edit/check task's progress into the window manager's job state."""
    st = state()
    if task.kind in ("preview", "propagate"):
        st.status = task.state
        st.stage = task.stage
        st.progress = task.progress
        st.eta = planning.format_eta(task.eta) if task.running else ""
        st.message = task.message[:1000]
    redraw()


# --- edit jobs -------------------------------------------------------------------------------
def build_job(
    scene: Any, shot: strips.Shot, stage: str, output: str, matte: list[str] | None = None
) -> protocol.Job:
    """The engine job for `shot` with the scene's settings (and `matte`, one file per frame, from
    :func:`matte_plan`); validated as the engine will."""
    s = scene.tokenflow
    job = protocol.Job(
        frames=list(shot.frames),
        output=output,
        prompt=s.prompt.strip(),
        stage=stage,
        negative_prompt=s.negative_prompt,
        source_prompt=s.source_prompt,
        model=_model_path(s.model.strip() or preferences.default_model()),
        device=preferences.device(),
        cache_dir=preferences.cache_dir(),
        steps=s.steps,
        guidance=round(s.guidance, 4),
        pnp_f_t=round(s.pnp_f_t, 4),
        pnp_attn_t=round(s.pnp_attn_t, 4),
        edit_mode=s.edit_mode,
        sdedit_strength=round(s.sdedit_strength, 4),
        keyframe_stride=s.keyframe_stride,
        keyframe_mode=s.keyframe_mode,
        seed=s.seed,
        size=max(64, round(s.size / 64) * 64),
        chunk_size=s.chunk_size,
        evaluate=bool(s.evaluate) and stage == protocol.STAGE_PROPAGATE,
        colorspace=shot.config_colorspace or shot.colorspace,
        ocio_config=shot.ocio_config,
        matte=list(matte or []),
        matte_channel=s.matte_channel,
        matte_invert=bool(s.matte_invert),
        matte_feather=round(s.matte_feather, 3),
    )
    try:
        job.validate()
    except protocol.JobError as exc:
        raise UserError(str(exc)) from exc
    return job


def _model_path(model: str) -> str:
    """Local model paths go to the engine absolute (it runs in the extension's folder); a hub id
    stays as it is."""
    if model.startswith("//"):
        return os.path.abspath(bpy.path.abspath(model))
    local = os.path.expanduser(model)
    if model.startswith(("~", ".")) or os.path.exists(local):
        return os.path.abspath(local)
    return model


def result_context(scene: Any, shot: strips.Shot, prompt: str, stage: str) -> dict[str, Any]:
    """What :func:`apply_result` needs to place a result: plain values, as the strip was at start."""
    return {
        "scene": scene.name,
        "source": shot.name,
        "start": shot.start,
        "channel": shot.channel,
        "count": len(shot.frames),
        "colorspace": shot.colorspace,
        "prompt": prompt,
        "stage": stage,
    }


def start_edit(
    context: Any, stage: str, variations: list[dict[str, Any]] | None = None
) -> controller.ProcessTask:
    """Check the active strip and the settings, then start the engine. Raise UserError before
    anything is launched or written when something is wrong. `variations` (Preview Variations, see
    :mod:`.takes_ops`) runs several previews in one engine run."""
    if controller.running(SLOT_EDIT):
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
        output = takes.variation_base(output, len(variations))
    job = build_job(scene, shot, stage, output)  # the settings, checked before the matte
    matte = matte_plan(scene, shot, output)
    if matte is not None:
        job = build_job(scene, shot, stage, output, matte.paths)
    matte_dir = mattes.matte_folder(jobs_dir(), output)
    job.extra.update(takes.take_extra(scene.name, shot.name))  # the manifest then describes the take
    if variations:
        job.variations = list(variations)
        try:
            job.validate()
        except protocol.JobError as exc:
            raise UserError(str(exc)) from exc
    try:
        os.makedirs(parent, exist_ok=True)
        folder = jobs_dir()
        _prune_logs(folder)
        job_path = os.path.join(folder, f"{os.path.basename(output)}.json")
        with open(job_path, "w", encoding="utf-8") as fh:
            fh.write(job.to_json())
    except OSError as exc:
        shutil.rmtree(matte_dir, ignore_errors=True)
        raise UserError(f"cannot write the job: {exc}") from exc
    root = engine_env.extension_root()
    task_args: dict[str, Any] = dict(
        kind=stage,
        steps=[controller.Step(stage.capitalize(), engine_env.engine_argv(python, "run", job_path))],
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
    if preferences.keep_engine_warm():  # the job goes to the session's warm engine (warm.py)
        argv = engine_env.engine_argv(python, "serve", "--idle-timeout", f"{preferences.idle_timeout():g}")
        engine = warm.engine_for(argv, root, task_args["env"], jobs_dir(), pid_dir())
        task: controller.ProcessTask = warm.WarmJob(engine, json.dumps(job.to_dict()), **task_args)
    else:
        warm.unload()  # turned off: a warm engine left from before frees its memory
        task = controller.ProcessTask(**task_args)
    st = state()
    st.kind = stage
    st.error = ""
    st.output = output
    st.result_strip = ""
    st.quality = ""
    st.log_path = task.log_path
    results.clear()
    controller.put(SLOT_EDIT, task)
    task.start()
    _show(task)
    if task.running:
        ensure_timer()
    return task


def matte_plan(scene: Any, shot: strips.Shot, output: str) -> mattes.Matte | None:
    """The scene's matte for `shot` (None without one): a file per frame, rendered ones beside the
    job by the edit task before the engine starts. Raise UserError before any work."""
    name = scene.tokenflow.matte.strip()
    if not name:
        return None
    try:
        return mattes.plan(
            scene, shot, name, mattes.matte_folder(jobs_dir(), output), scene.tokenflow.matte_channel
        )
    except mattes.MatteError as exc:
        raise UserError(str(exc)) from exc


def _on_edit_event(task: controller.ProcessTask, event: dict[str, Any]) -> None:
    _show(task)


def _on_edit_finish(task: controller.ProcessTask) -> None:
    matte = task.context.get("matte")
    if matte is not None and matte.render is not None:  # rendered matte frames served this run only
        matte.render.close()
        shutil.rmtree(task.context["matte_dir"], ignore_errors=True)
    st = state()
    try:
        if task.state == controller.DONE:
            task.message = apply_take(task.context, task.result or {}, task.output)
        elif task.state == controller.ERROR:
            st.error = task.message or "the engine failed without a message; see the log"
    except Exception as exc:  # a failure here must not leave the panel claiming success
        task.state = controller.ERROR
        task.message = st.error = f"could not add the result: {exc}"
    if task.state != controller.DONE and task.context.get("variations"):
        takes.discard_variation_temporaries(task.output, task.context["variations"])
    if task.state == controller.CANCELLED:
        task.message = "Cancelled: nothing was added"
    _show(task)


def apply_take(ctx: dict[str, Any], done: dict[str, Any], output: str) -> str:
    """Add a result (or each of a variations run's previews, stacked above the source) and list it
    as a take, selected: an engine run's here and a farm job's (:mod:`.farm_jobs`) alike."""
    from . import takes_ops

    variations = done.get("variations") or []
    if variations:
        for v in variations:
            apply_result({**ctx, "prompt": v.get("prompt", ctx["prompt"])}, v, v["output"])
        message = f"{len(variations)} variations added above '{ctx['source']}'"
        folders = [v["output"] for v in variations]
    else:
        message = apply_result(ctx, done, output)
        folders = [str(done.get("output") or output)]
    takes_ops.on_result(ctx["scene"], folders)
    return message


def apply_result(ctx: dict[str, Any], done: dict[str, Any], output: str) -> str:
    """Add a result as strip(s) and keyframe markers; return what the panel should say.

    Plain values in, so an engine run here and a farm job (:mod:`.farm_jobs`) share it: `ctx` is
    where the shot sits (scene, source, start, channel, count, colorspace, prompt, stage) and
    `done` is the engine's `done` event (output, files, indices, keyframes, stats, metrics).
    """
    output = str(done.get("output") or output)
    scene = bpy.data.scenes.get(ctx["scene"])
    if scene is None:
        raise RuntimeError(f"the scene {ctx['scene']!r} is gone; the frames are in {output}")
    files = [os.path.basename(f) for f in done.get("files", [])]
    indices = [int(i) for i in done.get("indices", range(len(files)))]
    keyframes = [int(i) for i in done.get("keyframes", [])]
    missing = [f for f in files if not os.path.isfile(os.path.join(output, f))]
    if not files or missing:
        raise RuntimeError(f"the engine reported files that are not in {output}: {missing[:3]}")
    preview = ctx["stage"] == protocol.STAGE_PREVIEW
    name = planning.result_name(ctx["source"], ctx["prompt"], preview)
    if preview:
        first, elements = planning.preview_elements(files, indices, ctx["count"])
        strip = strips.add_image_strip(
            scene, name, output, elements, ctx["start"] + first, ctx["channel"], ctx["colorspace"]
        )
    else:
        if indices != list(range(ctx["count"])):
            raise RuntimeError(
                f"the engine returned {len(files)} frames for a shot of {ctx['count']}; "
                f"the frames are in {output}"
            )
        strip = strips.add_image_strip(
            scene, name, output, files, ctx["start"], ctx["channel"], ctx["colorspace"]
        )
    strips.add_markers(scene, ctx["start"], keyframes)
    state().result_strip = strip.name
    inverted = (done.get("stats") or {}).get("inversion_unet_frames")
    reuse = " (inversion reused from the cache)" if inverted == 0 else ""
    state().quality = _quality_line(done.get("metrics"))
    results.record(done)
    what = "Preview" if preview else "Result"
    return f"{what} added as '{strip.name}' on channel {strip.channel}{reuse}"


def _quality_line(metrics: Any) -> str:
    """The engine's one-line consistency summary, e.g. 'warp error 3.1 (source 1.1)', or ''."""
    if not isinstance(metrics, dict):
        return ""
    return str(metrics.get("summary_line") or "")


def cancel(slot: str = SLOT_EDIT) -> bool:
    task = controller.running(slot)
    if task is None:
        return False
    task.cancel()
    if slot == SLOT_EDIT:
        _show(task)
    return True


def tick() -> bool:
    """One round of the timer: tick every task (and reap warm engines that were asked to exit);
    True while any runs."""
    exiting = warm.tick_all()
    return controller.tick_all() or exiting


def unload_engine() -> bool:
    """The "Unload Model" button: the warm engine exits, freeing its memory; False if none ran."""
    if controller.running(SLOT_EDIT):
        raise UserError("a TokenFlow job is running; cancel it or wait for it before unloading the model")
    unloaded = warm.unload()
    if unloaded:
        ensure_timer()
    return unloaded


def wait(timeout: float | None = None, interval: float = 0.1) -> str:
    """Block until the Preview/Propagate ends and return its status (DONE, ERROR, CANCELLED).

    For scripts: timers never fire in the bpy module, nor in `blender -b --python` while the script
    runs, so this ticks the job itself. After `timeout` seconds the job is cancelled.
    """
    end = None if timeout is None else time.monotonic() + timeout
    while controller.running(SLOT_EDIT) is not None:
        tick()
        if end is not None and time.monotonic() > end:
            cancel()
            controller.wait(controller.get(SLOT_EDIT), 30.0)
            break
        time.sleep(interval)
    return state().status


# --- engine check and install ----------------------------------------------------------------
def start_check() -> controller.ProcessTask:
    if controller.running(SLOT_CHECK):
        raise UserError("the engine check is already running")
    python = preferences.engine_python()
    problem = engine_env.check_python(python)
    if problem:
        raise UserError(problem)
    root = engine_env.extension_root()
    task = controller.ProcessTask(
        kind="check",
        steps=[
            controller.Step(
                "Check", engine_env.engine_argv(python, "check", "--device", preferences.device())
            )
        ],
        log_dir=jobs_dir(),
        cwd=root,
        env=engine_env.engine_env(root, online=bool(bpy.app.online_access)),
        pid_dir=pid_dir(),
        on_finish=_on_check_finish,
        cancel_timeout=3.0,
    )
    state().engine_info = "Checking the engine..."
    controller.put(SLOT_CHECK, task)
    task.start()
    ensure_timer()
    return task


def _on_check_finish(task: controller.ProcessTask) -> None:
    st = state()
    result = task.result
    if task.state == controller.DONE and result:
        st.engine_info = (
            f"Engine OK: torch {result.get('torch')}, diffusers {result.get('diffusers')}, "
            f"device {result.get('device')} ({result.get('dtype')})"
        )
    else:
        st.engine_info = f"Engine check failed: {task.message or task.log_tail(1)}"
        st.error = st.engine_info
    redraw()


def start_install(torch_index_url: str = "") -> controller.ProcessTask:
    """pip the engine's requirements into a venv in the extension's user folder."""
    if not bpy.app.online_access:
        raise UserError(
            "Installing the engine downloads torch and diffusers, but Blender's online access is off: "
            "enable Preferences > System > Network > Allow Online Access, or install the engine yourself "
            "(python -m venv ENV; ENV/bin/pip install -r engine/requirements.txt) and set 'Engine Python'"
        )
    if controller.running(SLOT_INSTALL):
        raise UserError("the engine is already being installed")
    root = engine_env.extension_root()
    requirements = os.path.join(root, "engine", "requirements.txt")
    steps = engine_env.install_steps(
        engine_env.base_python(), preferences.managed_venv(), requirements, torch_index_url
    )
    task = controller.ProcessTask(
        kind="install",
        steps=steps,
        log_dir=jobs_dir(),
        cwd=root,
        env=engine_env.engine_env(root, online=True),
        pid_dir=pid_dir(),
        on_event=lambda t, e: _show_install(t),
        on_finish=_show_install,
        cancel_timeout=5.0,
    )
    controller.put(SLOT_INSTALL, task)
    task.start()
    _show_install(task)
    ensure_timer()
    return task


def _show_install(task: controller.ProcessTask) -> None:
    st = state()
    st.install_status = task.state
    st.install_log = task.log_path
    if task.running:
        st.install_progress = sum(s.weight for s in task.steps[: max(0, task._index)]) / sum(
            s.weight for s in task.steps
        )
        st.install_message = f"{task.stage}: {task.message}" if task.message else task.stage
    elif task.state == controller.DONE:
        st.install_progress = 1.0
        result = task.result or {}
        st.install_message = (
            f"Engine installed: torch {result.get('torch', '?')}, device {result.get('device', '?')}"
        )
    else:
        st.install_message = f"Install failed at '{task.stage}': {task.message} (see the install log)"
    redraw()


# --- timer, quitting ---------------------------------------------------------------------------
def _timer() -> float | None:
    alive = tick()
    # The install bar advances per pip line; refresh it on every round.
    task = controller.running(SLOT_INSTALL)
    if task is not None:
        _show_install(task)
    return TIMER_INTERVAL if alive else None


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL, persistent=True)


@bpy.app.handlers.persistent
def _on_load_pre(*_args: Any) -> None:
    """A job's result belongs to the file it started in: opening another file cancels an engine
    run and stops watching a farm job (the job itself carries on on the farm)."""
    for slot in (SLOT_EDIT, SLOT_FARM, SLOT_CONVERT):
        task = controller.running(slot)
        if task is not None:
            task.on_event = task.on_finish = None
            task.shutdown(timeout=5.0)


def _at_exit() -> None:
    controller.shutdown_all(timeout=3.0)
    warm.shutdown_all(timeout=3.0)


def register() -> None:
    with contextlib.suppress(Exception):  # a stale PID file must never block enabling the extension
        controller.reap_stale(pid_dir())
    atexit.register(_at_exit)
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister() -> None:
    controller.forget_all()
    warm.shutdown_all(timeout=3.0)
    atexit.unregister(_at_exit)
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
