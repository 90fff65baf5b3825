"""Bringing a result into the scene: its strip(s) and keyframe markers, and its take in the list.

Plain values in (:func:`result_context`, taken when the run started, and the engine's `done`
event), so an engine run here and a farm job (:mod:`..farm.submit`) share it.
"""

from __future__ import annotations

import os
from typing import Any

import bpy

from ...engine import protocol
from ..runs.task import DONE, ERROR
from ..sequencer import planning, strips
from ..session import state
from ..takes import listing
from . import results


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


def finish(task: Any, what: str, silent: str) -> None:
    """A finished task (an engine run here or a farm job): its result added as a take, or its error
    kept in the panel (`silent`: what to say when it failed without a message). Adding can fail too
    (a scene gone, a folder moved): then the task becomes an error, never a success shown for nothing."""
    st = state()
    try:
        if task.state == DONE:
            task.message = apply_take(task.context, task.result or {}, task.output)
        elif task.state == ERROR:
            st.error = task.message or silent
    except Exception as exc:  # a failure here must not leave the panel claiming success
        task.state = ERROR
        task.message = st.error = f"could not add the {what}: {exc}"


def apply_take(ctx: dict[str, Any], done: dict[str, Any], output: str) -> str:
    """Add a result (or each of a variations run's previews, stacked above the source) and list it
    as a take, selected: an engine run's here and a farm job's (:mod:`..farm.submit`) alike."""
    variations = done.get("variations") or []
    if variations:
        for v in variations:
            apply_result({**ctx, "prompt": v.get("prompt", ctx["prompt"])}, v, v["output"])
        message = f"{len(variations)} variations added above '{ctx['source']}'"
        folders = [v["output"] for v in variations]
    else:
        message = apply_result(ctx, done, output)
        folders = [str(done.get("output") or output)]
    listing.on_result(ctx["scene"], folders)
    return message


def apply_result(ctx: dict[str, Any], done: dict[str, Any], output: str) -> str:
    """Add a result as strip(s) and keyframe markers; return what the panel should say.

    Plain values in, so an engine run here and a farm job (:mod:`..farm.submit`) share it: `ctx` is
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
