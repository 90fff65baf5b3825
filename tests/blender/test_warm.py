"""The warm engine's lifetime, through the extension's operators and a real `python -m engine serve`
(tiny model, 12 real frames, CPU): jobs share one process; cancel stops the job, not the process;
a model switch reloads in place; the idle timeout, "Unload Model", disabling the extension, Blender
quitting and Blender crashing all end it; a crash of the engine is reported and the next job starts
a fresh one. Timers never fire in the bpy module: the tests tick the job controller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import bpy
import pytest

from .helpers import (
    MODULE,
    add_image_strip,
    disable_extension,
    enable_extension,
    process_gone,
    run_op,
    snapshot,
    wait,
)

GUARD = 120.0  # seconds: a guard against a hang, never a measurement


def _prefs() -> Any:
    return bpy.context.preferences.addons[MODULE].preferences


@pytest.fixture(scope="module")
def shot(ext, assets, tmp_path_factory) -> Any:
    """A scene with the 12-frame strip, the warm engine on, 64 px and 2 steps."""
    prefs = _prefs()
    prefs.device, prefs.keep_engine_warm, prefs.engine_idle_minutes = "cpu", True, 10.0
    scene = bpy.data.scenes.new("warm")
    window = bpy.context.window
    old = window.scene if window else None
    if window:
        window.scene = scene
    add_image_strip(scene, assets["frames"], channel=2, start=1, name="city")
    out = tmp_path_factory.mktemp("warm-results")
    s = scene.tokenflow
    s.prompt, s.source_prompt, s.model = "a watercolor painting", "a city street", str(assets["model"])
    s.steps, s.size, s.keyframe_stride, s.chunk_size = 2, 64, 4, 8
    s.evaluate = False
    s.output_dir = str(out) + os.sep
    yield {"scene": scene, "out": out, "frames": assets["frames"], "model": assets["model"]}
    sys.modules[f"{MODULE}.tokenflow_blender"].runs.warm.shutdown_all()
    if window and old is not None:
        window.scene = old
    bpy.data.scenes.remove(scene)
    # Fetched again: a test below disables and re-enables the extension, which frees the
    # preferences the first `prefs` pointed to (writing through it segfaulted bpy 4.5 and 5.0).
    _prefs().device = "auto"


def _run(tf, scene: Any, operator: str = "sequencer.tokenflow_preview") -> Any:
    assert run_op(operator, scene) == {"FINISHED"}
    task = wait(tf)
    assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    return task


def _start_long_job(tf, scene: Any) -> Any:
    """A propagate with many steps at a fresh size (nothing cached), ticked into its UNet work."""
    scene.tokenflow.steps, scene.tokenflow.size = 400, 128
    try:
        assert run_op("sequencer.tokenflow_propagate", scene) == {"FINISHED"}
    finally:
        scene.tokenflow.steps, scene.tokenflow.size = 2, 64
    task = tf.runs.registry.get("edit")
    deadline = time.monotonic() + GUARD
    while not any(e["event"] == "progress" and e["stage"] == "inversion" for e in task.events):
        assert task.tick(), task.message + "\n" + task.log_tail(30)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return task


def _gone_after_ticks(tf, pid: int) -> bool:
    """Tick until the engine with `pid` has exited and no engine is current (reaped)."""
    deadline = time.monotonic() + GUARD
    while (tf.runs.warm.current() is not None or not process_gone(pid)) and time.monotonic() < deadline:
        tf.jobs.tick()
        time.sleep(0.1)
    return process_gone(pid) and tf.runs.warm.current() is None


def _no_temp_folders(out: Path) -> None:
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "a temporary folder remained"


def test_jobs_share_one_engine_and_unload_ends_it(tf, shot) -> None:
    scene = shot["scene"]
    first = _run(tf, scene)
    engine = tf.runs.warm.current()
    assert engine is not None and first.pid == engine.pid
    scene.tokenflow.prompt = "a snowy street"  # the tweak loop: another preview, then the shot
    try:
        second = _run(tf, scene)
        state = bpy.context.window_manager.tokenflow_job
        assert "snowy" in state.result_strip and "inversion reused" in state.message
        third = _run(tf, scene, "sequencer.tokenflow_propagate")
    finally:
        scene.tokenflow.prompt = "a watercolor painting"
    assert second.pid == third.pid == first.pid
    assert engine.ready["loads"] == 1 and engine.ready["jobs"] >= 3
    assert second.result["stats"]["inversion_unet_frames"] == 0  # inversions kept in memory
    assert state.status == "DONE" and state.message.startswith("Result added")
    assert run_op("sequencer.tokenflow_unload_model", scene) == {"FINISHED"}
    assert _gone_after_ticks(tf, first.pid)
    fresh = _run(tf, scene)  # the next job loads the model again, in a new engine
    assert fresh.pid != first.pid and tf.runs.warm.current().ready["loads"] == 1


def test_cancel_mid_job_keeps_the_engine_for_the_next_job(tf, shot) -> None:
    scene, out = shot["scene"], shot["out"]
    _run(tf, scene)  # the engine is warm
    before, outputs = snapshot(scene), sorted(out.iterdir())
    task = _start_long_job(tf, scene)
    pid, output = task.pid, Path(task.output)
    assert run_op("sequencer.tokenflow_cancel", scene) == {"FINISHED"}
    wait(tf, timeout=GUARD)
    state = bpy.context.window_manager.tokenflow_job
    assert task.state == "CANCELLED" and state.status == "CANCELLED" and state.error == ""
    assert "nothing was added" in state.message
    assert snapshot(scene) == before and not output.exists() and sorted(out.iterdir()) == outputs
    _no_temp_folders(out)
    assert not process_gone(pid), "cancel ended the engine, not the job"
    after = _run(tf, scene)
    assert after.pid == pid


def test_model_switch_reloads_in_the_same_engine(tf, shot, tmp_path, assets) -> None:
    scene = shot["scene"]
    other = tmp_path / "other-tiny"
    made = subprocess.run(
        [str(_engine_python()), "-m", "engine", "make-tiny-model", str(other), "--seed", "5"],
        cwd=tf.runs.engine_env.extension_root(),
        env={**os.environ, "PYTHONPATH": tf.runs.engine_env.extension_root()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    first = _run(tf, scene)
    loads = tf.runs.warm.current().ready["loads"]
    scene.tokenflow.model = str(other)
    try:
        switched = _run(tf, scene)
    finally:
        scene.tokenflow.model = str(shot["model"])
    ready = tf.runs.warm.current().ready
    assert switched.pid == first.pid
    assert ready["model"] == str(other) and ready["loads"] == loads + 1


def test_idle_timeout_ends_the_engine(tf, shot) -> None:
    prefs = _prefs()
    prefs.engine_idle_minutes = 0.02  # 1.2 s
    try:
        task = _run(tf, shot["scene"])  # another idle timeout: a new engine, the old one told to exit
        assert tf.runs.warm.current().ready["idle_timeout"] == pytest.approx(1.2)
        assert _gone_after_ticks(tf, task.pid)
    finally:
        prefs.engine_idle_minutes = 10.0


def test_a_crashed_engine_is_reported_and_the_next_job_starts_afresh(tf, shot) -> None:
    scene, out = shot["scene"], shot["out"]
    before, outputs = snapshot(scene), sorted(out.iterdir())
    task = _start_long_job(tf, scene)
    pid = task.pid
    os.kill(pid, signal.SIGKILL)
    wait(tf, timeout=GUARD)
    state = bpy.context.window_manager.tokenflow_job
    assert task.state == "ERROR" and task.error_kind == "crash"
    assert "stopped unexpectedly" in state.error and "fresh engine" in state.error
    assert snapshot(scene) == before and sorted(out.iterdir()) == outputs
    _no_temp_folders(out)
    after = _run(tf, scene)
    assert after.pid != pid and not process_gone(after.pid)


def test_turning_it_off_runs_one_shot_and_frees_the_warm_engine(tf, shot) -> None:
    warm_pid = _run(tf, shot["scene"]).pid
    _prefs().keep_engine_warm = False
    try:
        task = _run(tf, shot["scene"])
    finally:
        _prefs().keep_engine_warm = True
    assert not isinstance(task, tf.runs.warm.WarmJob) and task.pid != warm_pid
    assert process_gone(task.pid)  # the one-shot engine ended with its job
    assert _gone_after_ticks(tf, warm_pid)


def test_disabling_the_extension_ends_the_engine(tf, shot, repo_dir) -> None:
    task = _run(tf, shot["scene"])
    pid = task.pid
    assert not process_gone(pid)
    disable_extension()
    try:
        assert process_gone(pid)
    finally:
        enable_extension(repo_dir)


def _engine_python() -> Path:
    return Path(os.environ["TOKENFLOW_ENGINE_PYTHON"])


BLENDER_SCRIPT = """
import os, sys, time
os.environ["HOME"] = {home!r}
import bpy
import addon_utils
bpy.ops.preferences.extension_repo_add(
    name={repo!r}, type="LOCAL", custom_directory={repo_dir!r}, use_custom_directory=True
)
addon_utils.enable({module!r}, default_set=True)
pkg = sys.modules[{module!r} + ".tokenflow_blender"]
prefs = bpy.context.preferences.addons[{module!r}].preferences
assert prefs.keep_engine_warm  # the default
prefs.device = "cpu"
scene = bpy.context.scene
ed = scene.sequence_editor_create()
coll = ed.strips if hasattr(ed, "strips") else ed.sequences
frames = {frames!r}
strip = coll.new_image("city", frames[0], 2, 1)
for f in frames[1:]:
    strip.elements.append(os.path.basename(f))
ed.active_strip = strip
s = scene.tokenflow
s.prompt, s.model, s.steps, s.size, s.output_dir = "snow", {model!r}, 2, 64, {out!r}
bpy.ops.sequencer.tokenflow_preview()
task = pkg.runs.registry.get("edit")
while task.tick():
    time.sleep(0.05)
assert task.state == "DONE", task.message
s.steps, s.size = 400, 128
bpy.ops.sequencer.tokenflow_propagate()
task = pkg.runs.registry.get("edit")
while not any(e["event"] == "progress" and e["stage"] == "inversion" for e in task.events):
    task.tick()
    time.sleep(0.05)
print("PID", task.pid, flush=True)
if {crash!r}:
    time.sleep(600)  # the test kills this process here
sys.exit(0)  # quit with the job running: the extension's atexit handler must end the engine
"""


@pytest.mark.parametrize("how", ["quit", "crash"])
def test_blender_quitting_or_crashing_ends_the_engine(tf, shot, tmp_path, repo_dir, how) -> None:
    """A separate Blender (bpy) process with a warm engine running a job quits, or is SIGKILLed:
    the engine ends (atexit, or the end of its stdin) and leaves no result and no temporary folder."""
    out = tmp_path / "results"
    out.mkdir()
    script = BLENDER_SCRIPT.format(
        home=str(tmp_path / "home"),
        repo=repo_dir.name,
        repo_dir=str(repo_dir),
        module=MODULE,
        frames=[str(f) for f in shot["frames"]],
        model=str(shot["model"]),
        out=str(out) + os.sep,
        crash=how == "crash",
    )
    blender = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid = 0
        for line in blender.stdout:
            if line.startswith("PID "):
                pid = int(line.split()[1])
                break
        assert pid, blender.stderr.read()[-3000:]
        if how == "crash":
            blender.send_signal(signal.SIGKILL)
        assert blender.wait(GUARD) == (-signal.SIGKILL if how == "crash" else 0)
    finally:
        if blender.poll() is None:
            blender.kill()
            blender.wait()
    deadline = time.monotonic() + GUARD
    while not process_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_gone(pid), f"the warm engine outlived Blender ({how})"
    previews = [p for p in out.iterdir() if "preview" in p.name]
    assert len(previews) == 1 and len(list(out.iterdir())) == 1, list(out.iterdir())  # no propagate
