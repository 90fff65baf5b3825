"""Bad inputs are refused on the Blender side before anything launches: a clear report, the message
in the panel's properties, and an unchanged scene with no files written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy
import pytest

from . import pngs, strip_time
from .helpers import MODULE, add_image_strip, run_op, snapshot, wait


@pytest.fixture
def seq(tmp_path: Path) -> list[Path]:
    return pngs.write_sequence(tmp_path / "seq", 6, 32, 24)


def _refused(tf, scene, match: str, operator: str = "sequencer.tokenflow_propagate") -> str:
    """Run the operator, expect a refusal matching `match`; check that nothing happened."""
    before = snapshot(scene)
    task_before = tf.runs.registry.get("edit")
    results = tf.settings.preferences.user_path("results")
    files_before = sorted(os.listdir(results))
    scene.tokenflow.prompt = scene.tokenflow.prompt or "a watercolor painting"
    with pytest.raises(RuntimeError, match=match):
        run_op(operator, scene)
    state = bpy.context.window_manager.tokenflow_job
    assert state.error, "the message must reach the panel"
    assert snapshot(scene) == before
    assert tf.runs.registry.get("edit") is task_before, "no engine may start"
    assert sorted(os.listdir(results)) == files_before
    return state.error


@pytest.mark.parametrize("operator", ["sequencer.tokenflow_preview", "sequencer.tokenflow_propagate"])
def test_no_active_strip(tf, scene, seq, operator) -> None:
    add_image_strip(scene, seq)
    scene.sequence_editor.active_strip = None
    msg = _refused(tf, scene, "no active strip", operator)
    assert "select" in msg


def test_empty_sequencer(tf, scene) -> None:
    _refused(tf, scene, "no active strip")


def test_colour_strip(tf, scene) -> None:
    ed = scene.sequence_editor_create()
    color = tf.compat.new_color_strip(ed, "Backdrop", 1, 1, 20)
    ed.active_strip = color
    msg = _refused(tf, scene, "colour strip")
    assert "Backdrop" in msg and "image-sequence" in msg


def test_text_strip(tf, scene) -> None:
    ed = scene.sequence_editor_create()
    coll = tf.compat.strips(ed)
    kwargs = {"length": 10} if bpy.app.version >= (5, 0, 0) else {"frame_end": 11}
    ed.active_strip = coll.new_effect("Title", "TEXT", 1, 1, **kwargs)
    _refused(tf, scene, "text strip")


def test_meta_and_scene_strips(tf, scene) -> None:
    ed = scene.sequence_editor_create()
    coll = tf.compat.strips(ed)
    ed.active_strip = coll.new_meta("Group", 1, 1)
    _refused(tf, scene, "meta strip.*open it")
    other = bpy.data.scenes.new("Other")
    try:
        ed.active_strip = coll.new_scene("Shot", other, 3, 1)
        _refused(tf, scene, "scene strip.*render that scene")
    finally:
        bpy.data.scenes.remove(other)


def test_movie_strip(tf, scene, assets) -> None:
    ed = scene.sequence_editor_create()
    ed.active_strip = tf.compat.strips(ed).new_movie("city", str(assets["movie"]), 2, 1)
    msg = _refused(tf, scene, "movie strip")
    assert "Convert to Image Sequence" in msg


def test_missing_frame_file(tf, scene, seq) -> None:
    add_image_strip(scene, seq)
    seq[3].unlink()
    msg = _refused(tf, scene, "missing")
    assert seq[3].name in msg


def test_frames_of_different_sizes(tf, scene, seq) -> None:
    pngs.write_png(seq[2], 40, 24)
    add_image_strip(scene, seq)
    msg = _refused(tf, scene, "differ in size")
    assert "32x24" in msg and "40x24" in msg


def test_held_still(tf, scene, seq) -> None:
    """One image stretched over many frames: the same file on several frames."""
    strip = add_image_strip(scene, seq[:1])
    strip_time.set_length(strip, 10)
    _refused(tf, scene, "more than one frame")


def test_empty_prompt(tf, scene, seq) -> None:
    add_image_strip(scene, seq)
    scene.tokenflow.prompt = "   "
    before = snapshot(scene)
    with pytest.raises(RuntimeError, match="prompt is empty"):
        run_op("sequencer.tokenflow_preview", scene)
    assert snapshot(scene) == before


def test_engine_not_installed(tf, scene, seq, tmp_path) -> None:
    add_image_strip(scene, seq)
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.engine_python = str(tmp_path / "nowhere" / "python")
    try:
        msg = _refused(tf, scene, "engine is not installed")
        assert "Install engine" in msg
    finally:
        prefs.engine_python = ""


def test_install_refused_offline(tf) -> None:
    assert not bpy.app.online_access  # the bpy module starts offline
    with pytest.raises(RuntimeError, match="online access is off"):
        bpy.ops.preferences.tokenflow_install_engine()
    state = bpy.context.window_manager.tokenflow_job
    assert state.install_status == "ERROR" and "Allow Online Access" in state.install_message
    assert tf.runs.registry.running("install") is None


def test_cancel_without_job(tf, scene) -> None:
    with pytest.raises(RuntimeError, match="poll"):
        run_op("sequencer.tokenflow_cancel", scene)


def test_show_log_without_log(tf, scene) -> None:
    assert run_op("sequencer.tokenflow_show_log", scene) == {"CANCELLED"}


def test_install_runs_its_steps_and_reports(tf, monkeypatch) -> None:
    """The install glue with stand-in steps (a real install downloads gigabytes): progress, result."""
    check = '{"event": "check", "torch": "2.9.0", "diffusers": "0.35", "device": "cuda", "dtype": "float16"}'
    steps = [
        tf.runs.task.Step("Creating environment", [sys.executable, "-c", "print('created')"], 0.5),
        tf.runs.task.Step("Checking engine", [sys.executable, "-c", f"print({check!r})"], 0.5),
    ]
    monkeypatch.setattr(tf.runs.engine_env, "install_steps", lambda *args, **kwargs: steps)
    system = bpy.context.preferences.system
    system.use_online_access = True
    try:
        assert bpy.app.online_access
        assert bpy.ops.preferences.tokenflow_install_engine() == {"FINISHED"}
        state = bpy.context.window_manager.tokenflow_job
        assert state.install_status == "RUNNING"
        task = wait(tf, slot="install", timeout=60)
    finally:
        system.use_online_access = False
    assert task.state == "DONE"
    assert state.install_status == "DONE" and state.install_progress == 1.0
    assert state.install_message == "Engine installed: torch 2.9.0, device cuda"
    assert "created" in Path(task.stdout_path).read_text()
