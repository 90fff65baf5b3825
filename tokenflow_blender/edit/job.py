"""The engine job of an edit: the scene's settings and the active strip's shot, checked as the engine
will check them, with the matte it names (plain values in, a :class:`protocol.Job` out)."""

from __future__ import annotations

import os
from typing import Any

import bpy

from ...engine import protocol
from ..sequencer import mattes, strips
from ..session import UserError, jobs_dir
from ..settings import preferences


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
        model=model_path(s.model.strip() or preferences.default_model()),
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
        size=working_size(s.size),
        pnp_qk_layers=s.pnp_qk_layers.strip(),
        pnp_conv_layers=s.pnp_conv_layers.strip(),
        chunk_size=s.chunk_size,
        evaluate=bool(s.evaluate) and stage == protocol.STAGE_PROPAGATE,
        colorspace=shot.config_colorspace or shot.colorspace,
        ocio_config=shot.ocio_config,
        matte=list(matte or []),
        matte_channel=s.matte_channel,
        matte_invert=bool(s.matte_invert),
        matte_feather=round(s.matte_feather, 3),
    )
    if job.model.endswith(".safetensors") and s.model_config.strip():
        job.extra["model_config"] = model_path(s.model_config.strip())
    try:
        job.validate()
    except protocol.JobError as exc:
        raise UserError(str(exc)) from exc
    return job


def working_size(size: int) -> int:
    """The panel's size as the job's: 0 stays 0 (the model's native size), others on multiples of 64."""
    return 0 if size <= 0 else max(64, round(size / 64) * 64)


def model_path(model: str) -> str:
    """Local model paths go to the engine absolute (it runs in the extension's folder); a hub id
    stays as it is."""
    if model.startswith("//"):
        return os.path.abspath(bpy.path.abspath(model))
    local = os.path.expanduser(model)
    if model.startswith(("~", ".")) or os.path.exists(local):
        return os.path.abspath(local)
    return model


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
