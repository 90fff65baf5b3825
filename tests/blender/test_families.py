"""SDXL and SD 2.x v-prediction from the panel: the family and working size it shows, Preview and
Propagate through the real engine with the tiny SDXL-layout model, the take recording its family, and
a model the engine cannot edit named in the panel before any run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import bpy
import pytest

from . import strip_time
from .helpers import MODULE, add_image_strip, digest, run_op, strips_of, wait

START, CHANNEL = 3, 2


@pytest.fixture(scope="module")
def shot(ext, assets, tmp_path_factory) -> Any:
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.device = "cpu"
    prefs.keep_engine_warm = False
    scene = bpy.data.scenes.new("families")
    strip = add_image_strip(scene, assets["frames"][:8], channel=CHANNEL, start=START, name="city")
    out = tmp_path_factory.mktemp("results")
    s = scene.tokenflow
    s.prompt = "a watercolor painting"
    s.source_prompt = "a city street"
    s.steps = 2
    s.keyframe_stride = 4
    s.output_dir = str(out) + os.sep
    yield {**assets, "scene": scene, "strip": strip, "out": out, "frames": assets["frames"][:8]}
    bpy.data.scenes.remove(scene)
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.device = "auto"
    prefs.keep_engine_warm = True


def _describe(model: Path, size: int) -> tuple[str, str]:
    import sys

    return sys.modules[f"{MODULE}.tokenflow_blender.edit.model_info"].describe(str(model), size)


def test_the_panel_names_the_family_and_the_working_size(shot) -> None:
    assert _describe(shot["model_xl"], 0) == ("SDXL, working size 256 (native)", "")
    assert _describe(shot["model_xl"], 128) == ("SDXL (native 256), working size 128", "")
    assert _describe(shot["model_v"], 0) == ("SD 2.x, working size 768 (native)", "")
    assert _describe(shot["model"], 0) == ("SD 1.x, working size 512 (native)", "")
    assert shot["scene"].tokenflow.size == 0  # the default: the family's native size


def test_a_model_the_engine_cannot_edit_is_named_before_a_run(shot, tmp_path) -> None:
    folder = tmp_path / "sd3"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    text, problem = _describe(folder, 0)
    assert text == "" and "Stable Diffusion 3" in problem and "SDXL" in problem


def test_sdxl_preview_and_propagate_from_the_panel(tf, shot) -> None:
    scene, frames = shot["scene"], shot["frames"]
    scene.tokenflow.model = str(shot["model_xl"])
    before = digest(frames)
    assert run_op("sequencer.tokenflow_preview", scene) == {"FINISHED"}
    task = wait(tf)
    assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    keys = task.result["keyframes"]
    assert keys == [0, 4, 7]
    assert run_op("sequencer.tokenflow_propagate", scene) == {"FINISHED"}
    task = wait(tf)
    assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    assert task.result["stats"]["cache_hits"] >= len(keys)  # the preview's inversion, reused
    state = bpy.context.window_manager.tokenflow_job
    strip = next(s for s in strips_of(scene) if s.name == state.result_strip)
    assert strip_time.span(strip) == (START, START + 8)
    assert [e.filename for e in strip.elements] == [f.stem + ".png" for f in frames]
    folder = Path(bpy.path.abspath(strip.directory))
    manifest = json.loads((folder / "tokenflow.json").read_text())
    assert manifest["model_family"] == "sdxl" and manifest["working_size"] == 256
    assert manifest["job"]["size"] == 0  # the job asked for the native size; the take says which it was
    assert digest(frames) == before
    takes = tf.takes.manifest
    take = takes.read_take(str(folder))
    assert take.model_family == "sdxl" and take.working_size == 256
    assert any("SDXL" in line and "256" in line for line in takes.details(take))


def test_a_v_prediction_model_previews_and_propagates_from_the_panel(tf, shot) -> None:
    scene = shot["scene"]
    scene.tokenflow.model = str(shot["model_v"])
    scene.tokenflow.size = 128
    try:
        for op in ("sequencer.tokenflow_preview", "sequencer.tokenflow_propagate"):
            assert run_op(op, scene) == {"FINISHED"}
            task = wait(tf)
            assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    finally:
        scene.tokenflow.size = 0
    manifest = json.loads((Path(task.result["output"]) / "tokenflow.json").read_text())
    assert manifest["model_family"] == "sd2" and manifest["working_size"] == 128
    assert manifest["job"]["stage"] == "propagate" and len(task.result["files"]) == len(shot["frames"])
    assert task.result["stats"]["cache_hits"] >= len(task.result["keyframes"])  # the preview's inversion


def test_an_sdxl_single_file_edits_from_the_panel_and_restores(tf, shot, tmp_path) -> None:
    """A fine-tune as one .safetensors file, offline with its configs (Settings > Model Configs)."""
    import subprocess

    from .conftest import engine_python
    from .helpers import ROOT

    checkpoint = tmp_path / "tiny-xl.safetensors"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from tests.engine.original_checkpoint import write_original_checkpoint; "
        "write_original_checkpoint(Path(sys.argv[2]), Path(sys.argv[3]))"
    )
    subprocess.run(
        [str(engine_python()), "-c", script, str(ROOT), str(shot["model_xl"]), str(checkpoint)], check=True
    )
    scene = shot["scene"]
    s = scene.tokenflow
    s.model, s.model_config, s.size = str(checkpoint), str(shot["model_xl"]), 128
    try:
        assert _describe(checkpoint, 128) == ("SDXL (native 1024), working size 128", "")  # from the header
        for op in ("sequencer.tokenflow_preview", "sequencer.tokenflow_propagate"):
            assert run_op(op, scene) == {"FINISHED"}
            task = wait(tf)
            assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
        assert len(task.result["files"]) == len(shot["frames"])
        state = bpy.context.window_manager.tokenflow_job
        assert any(strip.name == state.result_strip for strip in strips_of(scene))
        take = tf.takes.manifest.read_take(task.result["output"])
        assert take.model_family == "sdxl" and take.job["extra"]["model_config"] == str(shot["model_xl"])
        s.model, s.model_config = "", ""
        tf.takes.listing.restore(scene, take)
        assert (s.model, s.model_config, s.size) == (str(checkpoint), str(shot["model_xl"]), 128)
    finally:
        s.model, s.model_config, s.size = str(shot["model_xl"]), "", 0
