"""Submit to Farm: the active strip as a Flamenco job, and its result back as a strip.

`start_farm()` checks everything it can before anything is written or sent (prompt, strip, a
shared output folder, the Manager's address, Blender's online access) and hands a
:class:`.task.FarmTask` the engine job and the Flamenco `SubmittedJob`. The timer ticks the
task like an engine run; its callbacks (main thread) copy its state into
`window_manager.tokenflow_job.farm_*` and, when the farm job has completed, add the merged result
with :func:`..edit.apply.apply_result`, exactly as a local Propagate does.

The farm job has its own slot, so previews can run locally while the farm works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
from typing import Any

import bpy

from ...engine import protocol
from .. import compat, session
from ..edit import model_info
from ..edit.apply import finish, result_context
from ..edit.job import build_job
from ..runs import registry
from ..sequencer import mattes, planning, strips
from ..session import SLOT_FARM, UserError
from ..settings import preferences
from ..takes import manifest
from . import flamenco, ocio_share
from .task import FarmTask

JOB_SUFFIX = ".job.json"  # the engine job file sits beside the output folder it describes
CHUNKS_SUFFIX = ".chunks"  # where the job type puts the chunks (`${output}.chunks`)

OFFLINE_MESSAGE = (
    "Blender's online access is off and the Flamenco Manager {url} is not on this computer or a "
    "private network address: enable Preferences > System > Network > Allow Online Access, or set "
    "the Manager's address in {where} to its local IP address (e.g. http://192.168.1.10:8080)"
)
RESAMPLE_MESSAGE = (
    "Keyframe Mode 'Resample' draws new keyframes at every step, so every farm chunk would have to "
    "carry the whole shot and the farm would gain nothing: set Keyframe Mode to 'Fixed' for farm runs, "
    "or run Propagate on this computer"
)
UNSAVED_MESSAGE = (
    "Save the .blend file first (on storage the farm's workers see), or set Output in the TokenFlow "
    "settings to a shared folder: an unsaved file's results go to your user folder, which workers "
    "cannot reach"
)


def shared_output_parent(scene: Any) -> str:
    """The scene's output folder, as for local runs, but never the user folder of an unsaved file."""
    raw = scene.tokenflow.output_dir.strip() or "//tokenflow/"
    if raw.startswith("//") and not bpy.data.filepath:
        raise UserError(UNSAVED_MESSAGE)
    return session.output_parent(scene)


def new_output(parent: str, source: str, prompt: str) -> str:
    """A fresh output folder whose job file and chunk folder are fresh too."""
    base = planning.output_folder(parent, source, prompt, "farm")
    candidate, n = base, 1
    while any(os.path.exists(candidate + s) for s in ("", JOB_SUFFIX, CHUNKS_SUFFIX)):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def farm_matte(scene: Any, shot: strips.Shot) -> list[str]:
    """The matte files of the scene's matte strip for a farm job, or [] without a matte. The workers
    read an image strip's own files (on shared storage, like the source frames); a Mask or movie
    matte would be rendered by this Blender, frame by frame, which a farm job cannot wait for."""
    name = scene.tokenflow.matte.strip()
    if not name:
        return []
    try:
        matte = mattes.plan(scene, shot, name, "", scene.tokenflow.matte_channel)
    except mattes.MatteError as exc:
        raise UserError(str(exc)) from exc
    if matte.render is not None:
        raise UserError(
            f"the matte '{name}' is a {strips.find_strip(scene, name).type.lower()} strip, which Blender "
            "renders on this computer; for a farm job render it to an image sequence on shared storage "
            "and use that strip as the matte, or run Propagate here"
        )
    return list(matte.paths)


def ocio_home(config: str, output: str) -> str:
    """Where the farm task shares the job's OCIO config with the workers: beside the output folder
    when the config is the one inside this Blender's installation; '' for a studio config ($OCIO),
    which must already be on storage the workers see, like the model."""
    if not ocio_share.is_bundled(config, bpy.utils.resource_path("LOCAL")):
        return ""
    return os.path.join(os.path.dirname(output), ocio_share.FOLDER)


def _metadata(scene: Any, shot: strips.Shot, job: protocol.Job) -> dict[str, str]:
    """Shown in the Manager's job list: who sent what from where, and with which model family."""
    user = ""
    with contextlib.suppress(Exception):  # getpass fails without a login name (containers)
        user = getpass.getuser()
    described, _ = model_info.describe(job.model, job.size)
    return {
        "user.name": user,
        "tokenflow.blendfile": bpy.data.filepath or "(unsaved)",
        "tokenflow.scene": scene.name,
        "tokenflow.strip": shot.name,
        "tokenflow.model": described,
    }


def start_farm(context: Any) -> FarmTask:
    """Check, then submit in the background. Raise UserError before anything is written or sent."""
    if registry.running(SLOT_FARM):
        raise UserError("a farm job is already being watched; cancel it or wait for it to finish")
    scene = compat.scene_of(context)
    if scene is None:
        raise UserError("no scene: open a scene in the Sequencer")
    settings = scene.tokenflow
    if not settings.prompt.strip():
        raise UserError("the prompt is empty: describe the edit, e.g. 'a watercolor painting'")
    if settings.keyframe_mode == "resample":
        raise UserError(RESAMPLE_MESSAGE)
    try:
        url = flamenco.normalize_url(preferences.farm_manager_url())
    except flamenco.FlamencoError as exc:
        raise UserError(str(exc)) from exc
    # Blender's online access is about the internet. A Manager on this machine or at a private IP
    # address is the usual studio set-up and is allowed without it; a host name could be anywhere.
    if not bpy.app.online_access and not flamenco.is_local(url):
        raise UserError(OFFLINE_MESSAGE.format(url=url, where=flamenco.WHERE_TO_SET))
    try:
        shot = strips.read_shot(compat.active_strip(context, scene))
    except strips.SourceError as exc:
        raise UserError(str(exc)) from exc
    output = new_output(shared_output_parent(scene), shot.name, settings.prompt)
    job = build_job(scene, shot, protocol.STAGE_PROPAGATE, output)  # the settings, checked first
    matte = farm_matte(scene, shot)
    if matte:
        job = build_job(scene, shot, protocol.STAGE_PROPAGATE, output, matte)
    # The workers choose their own device; measuring is per chunk there, not the shot's.
    job = dataclasses.replace(job, device="auto", evaluate=False, cache_dir=preferences.farm_cache_dir())
    job.extra.update(manifest.take_extra(scene.name, shot.name))  # the merged result is a take of the strip
    job_file = output + JOB_SUFFIX
    submitted = flamenco.submitted_job(
        planning.result_name(shot.name, job.prompt, preview=False, limit=120),
        flamenco.job_settings(
            job_file=job_file,
            prompt=job.prompt,
            model=job.model,
            frame_count=len(job.frames),
            keyframe_stride=job.keyframe_stride,
            chunk_size=settings.farm_chunk_size,
            output=output,
            cache_dir=job.cache_dir,
        ),
        metadata=_metadata(scene, shot, job),
    )
    task = FarmTask(
        client=flamenco.Client(url),
        job=submitted,
        job_file=job_file,
        job_text=job.to_json(),
        output=output,
        frames=list(shot.frames),
        worker_tag=preferences.farm_worker_tag(),
        on_event=_show,
        on_finish=_on_finish,
        context=result_context(scene, shot, job.prompt, protocol.STAGE_PROPAGATE),
        ocio_home=ocio_home(job.ocio_config, output),
    )
    st = session.state()
    st.error = ""
    registry.put(SLOT_FARM, task)
    task.start()
    _show(task)
    session.ensure_timer()
    return task


def cancel() -> bool:
    """Ask the Manager to cancel the farm job (or drop a submission not yet made)."""
    task = registry.running(SLOT_FARM)
    if task is None:
        return False
    task.cancel()
    _show(task)
    return True


def _show(task: FarmTask) -> None:
    st = session.state()
    st.farm_status = task.state
    st.farm_stage = task.stage
    st.farm_progress = task.progress
    st.farm_message = task.message[:1000]
    st.farm_job_id = task.job_id
    st.farm_web_page = task.web_page
    session.redraw()


def _on_finish(task: FarmTask) -> None:
    finish(task, "farm result", "the farm job failed without a message; see the Manager")
    _show(task)
