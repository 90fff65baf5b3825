"""End to end through the extension's own operators and the real engine subprocess (tiny model,
12 real frames of cityCC0.mpg, CPU): preview, propagate, a re-edit from the cache, cancel, errors,
and no engine outliving an unregister or the end of Blender."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import bpy
import pytest

from . import strip_time
from .helpers import (
    MODULE,
    add_image_strip,
    digest,
    disable_extension,
    enable_extension,
    process_gone,
    run_op,
    snapshot,
    strips_of,
    wait,
)

START, CHANNEL = 5, 2


def _settings(
    scene: Any, model: Path, out: Path, prompt: str = "a watercolor painting", steps: int = 3
) -> None:
    s = scene.tokenflow
    s.prompt = prompt
    s.source_prompt = "a city street"
    s.model = str(model)
    s.steps = steps
    s.size = 64
    s.keyframe_stride = 4
    s.chunk_size = 8
    s.output_dir = str(out) + os.sep


@pytest.fixture(scope="module")
def shot(ext, assets, tmp_path_factory) -> Any:
    """A scene with a 12-frame image strip at frame 5, channel 2; kept across this module's tests."""
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.device = "cpu"
    prefs.keep_engine_warm = False  # these tests cover the one-shot engine; test_warm.py the warm one
    scene = bpy.data.scenes.new("e2e")
    window = bpy.context.window
    old = window.scene if window else None
    if window:
        window.scene = scene
    strip = add_image_strip(scene, assets["frames"], channel=CHANNEL, start=START, name="city")
    out = tmp_path_factory.mktemp("results")
    _settings(scene, assets["model"], out)
    yield {"scene": scene, "strip": strip, "out": out, "frames": assets["frames"], "model": assets["model"]}
    if window and old is not None:
        window.scene = old
    bpy.data.scenes.remove(scene)
    # Fetched again: a test below disables and re-enables the extension, which frees the
    # preferences `prefs` pointed to (writing through it segfaulted bpy 4.5).
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.device = "auto"
    prefs.keep_engine_warm = True


def _run(tf, scene: Any, operator: str) -> Any:
    assert run_op(operator, scene) == {"FINISHED"}
    task = tf.runs.registry.get("edit")
    assert task is not None and task.kind in ("preview", "propagate")
    return wait(tf)


def _lowest_free_channel(scene: Any, strip: Any) -> int:
    """The first channel above the source with nothing overlapping `strip`'s range (besides itself)."""
    others = [s for s in strips_of(scene) if s != strip]
    channel = CHANNEL + 1
    first, end = strip_time.span(strip)
    while any(
        s.channel == channel and strip_time.span(s)[0] < end and first < strip_time.span(s)[1] for s in others
    ):
        channel += 1
    return channel


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[16:24]
    return int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big")


def _no_temp_folders(out: Path) -> None:
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "a temporary folder remained"


def test_preview_then_propagate(tf, shot) -> None:
    scene, frames, out = shot["scene"], shot["frames"], shot["out"]
    before = digest(frames)
    state = bpy.context.window_manager.tokenflow_job

    task = _run(tf, scene, "sequencer.tokenflow_preview")
    assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    assert state.status == "DONE" and state.error == "" and state.progress == 1.0
    keys = task.result["keyframes"]
    assert keys[0] == 0 and keys[-1] == 11 and len(keys) >= 3
    preview = next(s for s in strips_of(scene) if s.name == state.result_strip)
    assert preview.name.startswith("TF preview city")
    assert preview.channel == CHANNEL + 1
    assert preview.colorspace_settings.name == "sRGB"
    folder = Path(bpy.path.abspath(preview.directory))
    assert folder.parent == out
    for k in keys:  # each keyframe at its own timeline frame
        elem = preview.strip_elem_from_frame(START + k)
        assert elem.filename == frames[k].stem + ".png"
        assert (folder / elem.filename).is_file()
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(frames[k].stem + ".png" for k in keys)
    markers = sorted((m.name, m.frame) for m in scene.timeline_markers)
    assert markers == sorted((f"TF key {k}", START + k) for k in keys)
    assert "Preview added" in state.message
    assert state.quality == "" and task.result["metrics"] is None  # a preview is not measured

    task = _run(tf, scene, "sequencer.tokenflow_propagate")
    assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    assert scene.sequence_editor.active_strip == shot["strip"]  # the source stays active
    strip = next(s for s in strips_of(scene) if s.name == state.result_strip)
    assert strip_time.span(strip) == (START, START + 12)
    assert strip.channel == _lowest_free_channel(scene, strip) == CHANNEL + 2
    assert strip.colorspace_settings.name == "sRGB"
    assert strip.name.startswith("TF city: a watercolor")
    assert [e.filename for e in strip.elements] == [f.stem + ".png" for f in frames]
    folder = Path(bpy.path.abspath(strip.directory))
    assert (folder / "tokenflow.json").is_file()
    assert all(_png_size(folder / e.filename) == (96, 54) for e in strip.elements)
    assert sorted((m.name, m.frame) for m in scene.timeline_markers) == markers  # not duplicated
    assert task.result["keyframes"] == keys
    assert digest(frames) == before, "the source frames must stay byte-identical"
    # The engine measured the result against the source; the panel shows its one-line summary.
    summary = task.result["metrics"]["summary"]
    assert task.result["metrics"]["frames"] == 12
    assert summary["warp_error"] > 0 and summary["warp_error_source"] > 0
    assert state.quality == (
        f"warp error {summary['warp_error']:.1f} (source {summary['warp_error_source']:.1f})"
    )
    _no_temp_folders(out)
    shot["first_result"] = (strip.name, folder, digest(sorted(folder.glob("*.png"))))


def test_second_prompt_adds_a_strip_without_inverting(tf, shot) -> None:
    scene = shot["scene"]
    assert "first_result" in shot, "needs test_preview_then_propagate"
    first_name, first_folder, first_digest = shot["first_result"]
    scene.tokenflow.prompt = "a snowy winter evening"
    count = len(strips_of(scene))
    task = _run(tf, scene, "sequencer.tokenflow_propagate")
    assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    assert task.result["stats"]["inversion_unet_frames"] == 0
    assert task.result["stats"]["cache_hits"] == 12
    assert len(strips_of(scene)) == count + 1
    state = bpy.context.window_manager.tokenflow_job
    strip = next(s for s in strips_of(scene) if s.name == state.result_strip)
    assert strip.name != first_name and "snowy" in strip.name
    assert strip_time.span(strip) == (START, START + 12)
    assert strip.channel == CHANNEL + 3
    assert Path(bpy.path.abspath(strip.directory)) != first_folder
    assert digest(sorted(first_folder.glob("*.png"))) == first_digest, "an earlier result was overwritten"
    assert "inversion reused" in state.message
    scene.tokenflow.prompt = "a watercolor painting"


def test_measuring_can_be_turned_off(tf, shot) -> None:
    scene = shot["scene"]
    scene.tokenflow.evaluate = False
    try:
        task = _run(tf, scene, "sequencer.tokenflow_propagate")
    finally:
        scene.tokenflow.evaluate = True
    assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    assert task.result["metrics"] is None
    assert bpy.context.window_manager.tokenflow_job.quality == ""


def _start_long_job(tf, scene: Any) -> Any:
    """A propagate with many steps and a fresh working size (no cache): long enough to cancel."""
    scene.tokenflow.steps = 400
    scene.tokenflow.size = 128
    assert run_op("sequencer.tokenflow_propagate", scene) == {"FINISHED"}
    task = tf.runs.registry.get("edit")
    deadline = time.monotonic() + 120
    while not any(e["event"] == "progress" and e["stage"] == "inversion" for e in task.events):
        assert task.tick(), task.message + "\n" + task.log_tail(30)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return task


def test_cancel_mid_run(tf, shot) -> None:
    scene, out = shot["scene"], shot["out"]
    before, outputs = snapshot(scene), sorted(out.iterdir())
    try:
        task = _start_long_job(tf, scene)
        pid, output = task.pid, Path(task.output)
        assert bpy.context.window_manager.tokenflow_job.status == "RUNNING"
        assert run_op("sequencer.tokenflow_cancel", scene) == {"FINISHED"}
        wait(tf, timeout=60)
    finally:
        scene.tokenflow.steps, scene.tokenflow.size = 3, 64
    state = bpy.context.window_manager.tokenflow_job
    assert task.state == "CANCELLED" and state.status == "CANCELLED"
    assert "nothing was added" in state.message and state.error == ""
    assert snapshot(scene) == before
    assert process_gone(pid)
    assert not output.exists()
    assert sorted(out.iterdir()) == outputs
    _no_temp_folders(out)


def test_engine_error_reaches_the_panel(tf, shot, tmp_path) -> None:
    scene = shot["scene"]
    before, outputs = snapshot(scene), sorted(shot["out"].iterdir())
    scene.tokenflow.model = str(tmp_path / "no-such-model")
    try:
        task = _run(tf, scene, "sequencer.tokenflow_propagate")
    finally:
        scene.tokenflow.model = str(shot["model"])
    state = bpy.context.window_manager.tokenflow_job
    assert task.state == "ERROR" and task.error_kind == "model"
    assert "no-such-model" in state.error and state.status == "ERROR"
    assert snapshot(scene) == before
    assert sorted(shot["out"].iterdir()) == outputs
    # The full log is one click away.
    assert run_op("sequencer.tokenflow_show_log", scene) == {"FINISHED"}
    assert "engine run" in bpy.data.texts["TokenFlow Log"].as_string()


def test_check_engine(tf) -> None:
    assert bpy.ops.preferences.tokenflow_check_engine() == {"FINISHED"}
    task = wait(tf, slot="check", timeout=120)
    info = bpy.context.window_manager.tokenflow_job.engine_info
    assert task.state == "DONE", task.message
    assert info.startswith("Engine OK: torch 2.") and "device cpu" in info


def test_unregister_ends_the_engine(tf, shot, repo_dir) -> None:
    scene, out = shot["scene"], shot["out"]
    outputs = sorted(out.iterdir())
    try:
        task = _start_long_job(tf, scene)
        pid = task.pid
        disable_extension()
        assert process_gone(pid)
        assert not task.running
    finally:
        enable_extension(repo_dir)
        scene.tokenflow.steps, scene.tokenflow.size = 3, 64
    assert sorted(out.iterdir()) == outputs
    _no_temp_folders(out)


QUIT_SCRIPT = """
import os, sys, time
os.environ["HOME"] = {home!r}
import bpy
import addon_utils
bpy.ops.preferences.extension_repo_add(
    name={repo!r}, type="LOCAL", custom_directory={repo_dir!r}, use_custom_directory=True
)
addon_utils.enable({module!r}, default_set=True)
pkg = sys.modules[{module!r} + ".tokenflow_blender"]
bpy.context.preferences.addons[{module!r}].preferences.keep_engine_warm = False  # the one-shot engine
scene = bpy.context.scene
ed = scene.sequence_editor_create()
coll = ed.strips if hasattr(ed, "strips") else ed.sequences
frames = {frames!r}
strip = coll.new_image("city", frames[0], 2, 1)
for f in frames[1:]:
    strip.elements.append(os.path.basename(f))
ed.active_strip = strip
s = scene.tokenflow
s.prompt, s.model, s.steps, s.size, s.output_dir = "snow", {model!r}, 400, 128, {out!r}
bpy.ops.sequencer.tokenflow_propagate()
task = pkg.runs.registry.get("edit")
while not task.events:
    task.tick()
    time.sleep(0.05)
print("PID", task.pid, flush=True)
sys.exit(0)  # quit without cancelling: the extension's atexit handler must end the engine
"""


def test_quitting_blender_ends_the_engine(tf, shot, tmp_path, repo_dir) -> None:
    """A separate Blender (bpy) process that quits while its engine runs leaves no orphan."""
    out = tmp_path / "quit-results"
    out.mkdir()
    script = QUIT_SCRIPT.format(
        home=str(tmp_path / "home"),
        repo=repo_dir.name,
        repo_dir=str(repo_dir),
        module=MODULE,
        frames=[str(f) for f in shot["frames"]],
        model=str(shot["model"]),
        out=str(out) + os.sep,
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pid = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PID ")))
    deadline = time.monotonic() + 10
    while not process_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_gone(pid), "the engine outlived Blender"
    assert list(out.iterdir()) == []
