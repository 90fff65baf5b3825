"""Mattes: the matte frames for exactly the source's visible frames (image strips by timeline frame,
Mask strips rendered by Blender), refusals before any work, the job's matte fields; and the
end-to-end EXR plate with a matte through the real engine."""

from __future__ import annotations

import array
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bpy
import pytest

from . import pngs, shown, strip_time
from .helpers import MODULE, add_image_strip, raw_pixels, run_op, snapshot, strips_of, wait


@pytest.fixture
def pkg(ext):
    return sys.modules[f"{MODULE}.tokenflow_blender"]


def test_plain_helpers(pkg) -> None:
    m = pkg.sequencer.mattes
    assert m.uncovered(9, 18, 5, 21) == []
    assert m.uncovered(9, 18, 11, 17) == [9, 10, 17]
    assert m.frame_ranges([17, 9, 10, 12, 13, 14]) == "9-10, 12-14, 17"
    assert m.matte_folder("/jobs", "/out/shot-propagate-snow-1") == "/jobs/shot-propagate-snow-1-matte"


def _source(scene: Any, tmp_path: Path, width: int = 32, height: int = 24) -> Any:
    """12 frames at frame 7 (odd), trimmed by 2 at the start and 1 at the end: frames 9-17 show."""
    seq = pngs.write_sequence(tmp_path / "src", 12, width, height, stem="src")
    strip = add_image_strip(scene, seq, channel=2, start=7, name="plate")
    strip_time.set_time(strip, frame_offset_start=2, frame_offset_end=1)
    assert strip_time.span(strip) == (9, 18)
    return strip


def test_image_matte_by_timeline_frame(pkg, scene, tmp_path) -> None:
    """The matte strip sits elsewhere and holds other content offsets: each source frame gets the
    matte file the timeline shows at the same frame."""
    source = _source(scene, tmp_path)
    matte_files = pngs.write_sequence(tmp_path / "matte", 20, 32, 24, stem="m")
    matte = add_image_strip(scene, matte_files, channel=4, start=4, name="roto")
    strip_time.set_time(matte, animation_offset_start=3)  # content from the 4th file (placed per version)
    scene.sequence_editor.active_strip = source
    shot = pkg.sequencer.strips.read_shot(source)
    paths = pkg.sequencer.mattes.collect(scene, shot, "roto", str(tmp_path / "unused"))
    # Each source frame gets the matte file Blender renders for the matte at the same timeline frame,
    # and the source frame is the one Blender renders for the source there.
    frames = range(shot.start, shot.end)
    matte_shown = shown.shown_files(scene, matte, matte_files, frames, tmp_path / "render-matte")
    source_files = sorted((tmp_path / "src").iterdir())
    source_shown = shown.shown_files(scene, source, source_files, frames, tmp_path / "render-source")
    assert [os.path.basename(p) for p in paths] == [matte_shown[f] for f in frames]
    assert [os.path.basename(p) for p in shot.frames] == [source_shown[f] for f in frames]
    assert [os.path.basename(p) for p in paths] != [f"m_{i + 1:04d}.png" for i in range(len(frames))]
    assert all(os.path.isabs(p) for p in paths)
    assert not (tmp_path / "unused").exists()  # image mattes are used in place


def test_matte_refusals(pkg, scene, tmp_path) -> None:
    source = _source(scene, tmp_path)
    shot = pkg.sequencer.strips.read_shot(source)
    err = pkg.sequencer.mattes.MatteError
    add_image_strip(scene, pngs.write_sequence(tmp_path / "s", 5, 32, 24, stem="s"), 5, 11, "short")
    with pytest.raises(err, match=r"'short' shows frames 11-15 but 'plate' shows 9-17: frames 9-10, 16-17"):
        pkg.sequencer.mattes.collect(scene, shot, "short", str(tmp_path / "x"))
    add_image_strip(scene, pngs.write_sequence(tmp_path / "b", 12, 40, 24, stem="b"), 6, 7, "big")
    with pytest.raises(err, match="'big' is 40x24.*source is 32x24"):
        pkg.sequencer.mattes.collect(scene, shot, "big", str(tmp_path / "x"))
    with pytest.raises(err, match="'gone' is not in the scene"):
        pkg.sequencer.mattes.collect(scene, shot, "gone", str(tmp_path / "x"))
    with pytest.raises(err, match="is the strip being edited"):
        pkg.sequencer.mattes.collect(scene, shot, "plate", str(tmp_path / "x"))
    pkg.compat.new_color_strip(scene.sequence_editor, "flat", 8, 1, 40)
    with pytest.raises(err, match="'flat' is a color strip"):
        pkg.sequencer.mattes.collect(scene, shot, "flat", str(tmp_path / "x"))


def test_uncovering_matte_refused_before_any_work(tf, scene, tmp_path) -> None:
    """Through the operator: refused with the message in the panel, no engine, no files."""
    source = _source(scene, tmp_path)
    add_image_strip(scene, pngs.write_sequence(tmp_path / "s", 5, 32, 24, stem="s"), 5, 11, "short")
    scene.sequence_editor.active_strip = source
    scene.tokenflow.prompt = "snow"
    scene.tokenflow.matte = "short"
    before, task_before = snapshot(scene), tf.runs.registry.get("edit")
    jobs_before = sorted(os.listdir(tf.session.jobs_dir()))
    with pytest.raises(RuntimeError, match="frames 9-10, 16-17 have no matte"):
        run_op("sequencer.tokenflow_propagate", scene)
    assert "no matte" in bpy.context.window_manager.tokenflow_job.error
    assert snapshot(scene) == before and tf.runs.registry.get("edit") is task_before
    assert sorted(os.listdir(tf.session.jobs_dir())) == jobs_before


def _mask(name: str, x0: float, x1: float, y0: float = 0.0, y1: float = 1.0) -> Any:
    """A mask with one filled rectangle, in the mask editor's frame coordinates (0..1)."""
    mask = bpy.data.masks.new(name)
    spline = mask.layers.new().splines.new()
    spline.points.add(3)
    for point, co in zip(spline.points, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], strict=True):
        point.co = co
        point.handle_type = "VECTOR"
    spline.use_cyclic = True
    return mask


def _linear(v: float) -> float:
    """The sRGB transfer function, inverted."""
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def _at(px: tuple[int, int, array.array], x: int, y: int) -> float:
    width, _, buf = px
    return buf[(y * width + x) * 4]


def test_mask_strip_rendered_to_matte_frames(pkg, scene, tmp_path) -> None:
    """A Mask strip (trimmed, at another start) is rendered alone for exactly the source's frames,
    at the source's size, white inside the mask and black outside; the scene is left as it was."""
    source = _source(scene, tmp_path, 48, 30)
    mask_strip = pkg.compat.strips(scene.sequence_editor).new_mask("roto", _mask("roto", 0.25, 0.75), 5, 3)
    strip_time.set_time(mask_strip, frame_offset_start=4)
    assert strip_time.span(mask_strip)[0] == 7
    scene.sequence_editor.active_strip = source
    scenes, before = len(bpy.data.scenes), snapshot(scene)
    looks = (scene.render.resolution_x, scene.view_settings.view_transform, scene.render.filepath)
    shot = pkg.sequencer.strips.read_shot(source)
    seen: list[tuple[int, int]] = []
    folder = tmp_path / "jobs" / "run-matte"
    paths = pkg.sequencer.mattes.collect(
        scene, shot, "roto", str(folder), "auto", lambda i, n: seen.append((i, n))
    )
    assert len(paths) == 9 and seen[-1] == (9, 9)
    assert sorted(os.listdir(folder)) == [os.path.basename(p) for p in paths]
    info = pkg.sequencer.imageinfo.read_info(paths[0])
    assert (info.format, info.width, info.height, info.bit_depth) == ("png", 48, 30, 16)
    px = raw_pixels(paths[4])
    assert _at(px, 24, 15) == 1.0 and _at(px, 2, 15) == 0.0 and _at(px, 45, 15) == 0.0
    # Blender leaves the last pixel unwritten (strip_render's docstring): black, as around it.
    corners = [raw_pixels(p)[2][-4:].tolist() for p in paths]
    assert corners == [[0.0, 0.0, 0.0, 1.0]] * 9, corners
    assert len(bpy.data.scenes) == scenes and snapshot(scene) == before
    assert (scene.render.resolution_x, scene.view_settings.view_transform, scene.render.filepath) == looks


def test_unwritten_mask_corner_repaired(pkg, tmp_path) -> None:
    """The last pixel, which Blender never writes in a Mask strip's render, takes its left neighbour's
    value; every other pixel and the file's format and depth stay as they were."""
    path = pngs.write_png(tmp_path / "m.png", 8, 6, (0, 0, 0), depth=16, corner=(255, 255, 255))
    before = raw_pixels(str(path))[2]
    assert before[-4:].tolist() == [1.0, 1.0, 1.0, 1.0]
    pkg.sequencer.strip_render.repair_last_pixel(str(path))
    after = raw_pixels(str(path))[2]
    assert after[-4:].tolist() == after[-8:-4].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert after[:-4] == before[:-4]
    info = pkg.sequencer.imageinfo.read_info(str(path))
    assert (info.format, info.width, info.height, info.bit_depth) == ("png", 8, 6, 16)
    # A corner that already agrees with its neighbour: the file is not rewritten.
    clean = pngs.write_png(tmp_path / "clean.png", 8, 6, (9, 9, 9), depth=16)
    data = clean.read_bytes()
    pkg.sequencer.strip_render.repair_last_pixel(str(clean))
    assert clean.read_bytes() == data


def test_job_carries_the_matte(tf, scene, tmp_path) -> None:
    source = _source(scene, tmp_path)
    add_image_strip(scene, pngs.write_sequence(tmp_path / "m", 12, 32, 24, stem="m"), 3, 9, "roto")
    scene.sequence_editor.active_strip = source
    s = scene.tokenflow
    s.prompt, s.matte, s.matte_channel, s.matte_invert, s.matte_feather = (
        "snow",
        "roto",
        "luminance",
        True,
        4.5,
    )
    shot = tf.sequencer.strips.read_shot(source)
    output = str(tmp_path / "out" / "plate-propagate-snow")
    matte = tf.edit.job.matte_plan(scene, shot, output)
    assert matte.render is None  # image mattes are used in place
    job = tf.edit.job.build_job(scene, shot, "propagate", output, matte.paths)
    assert [os.path.basename(p) for p in job.matte] == [f"m_{i:04d}.png" for i in range(1, 10)]
    assert (job.matte_channel, job.matte_invert, job.matte_feather) == ("luminance", True, 4.5)
    s.matte = ""
    assert tf.edit.job.matte_plan(scene, shot, output) is None
    assert tf.edit.job.build_job(scene, shot, "propagate", output).matte == []


def test_mask_matte_rendered_by_the_edit_task(tf, scene, tmp_path) -> None:
    """Propagate with a Mask matte: the edit task renders one matte frame per tick (Blender stays
    live, the panel shows 'Matte n/9'), then starts the engine; Cancel ends it and leaves no matte
    frames and no extra scene."""
    source = _source(scene, tmp_path)
    tf.compat.strips(scene.sequence_editor).new_mask("roto", _mask("roto", 0.25, 0.75), 5, 1)
    scene.sequence_editor.active_strip = source
    s = scene.tokenflow
    s.prompt, s.matte, s.output_dir = "snow", "roto", str(tmp_path / "out") + os.sep
    scenes, before = len(bpy.data.scenes), snapshot(scene)
    assert run_op("sequencer.tokenflow_propagate", scene) == {"FINISHED"}
    task = tf.runs.registry.get("edit")
    state = bpy.context.window_manager.tokenflow_job
    folder = Path(task.context["matte_dir"])
    assert task.pid is None and not folder.exists()  # nothing rendered before the first tick
    for _ in range(3):
        assert task.tick()
    assert (task.stage, task.message, state.stage) == ("Matte", "Matte 3/9", "Matte")
    assert task.pid is None and len(os.listdir(folder)) == 3
    for _ in range(6):
        task.tick()
    assert task.pid is not None, "the engine starts once the matte is complete"
    assert sorted(os.listdir(folder)) == [f"matte_{i:05d}.png" for i in range(9)]
    assert len(bpy.data.scenes) == scenes  # the throwaway scene is gone once the matte is rendered
    assert run_op("sequencer.tokenflow_cancel", scene) == {"FINISHED"}
    wait(tf, timeout=60)
    assert task.state == "CANCELLED" and not folder.exists()
    assert snapshot(scene) == before and len(bpy.data.scenes) == scenes


def test_cancel_while_the_matte_renders(tf, scene, tmp_path) -> None:
    source = _source(scene, tmp_path)
    tf.compat.strips(scene.sequence_editor).new_mask("roto", _mask("roto", 0.25, 0.75), 5, 1)
    scene.sequence_editor.active_strip = source
    s = scene.tokenflow
    s.prompt, s.matte, s.output_dir = "snow", "roto", str(tmp_path / "out") + os.sep
    scenes, before = len(bpy.data.scenes), snapshot(scene)
    assert run_op("sequencer.tokenflow_propagate", scene) == {"FINISHED"}
    task = tf.runs.registry.get("edit")
    task.tick()
    assert len(bpy.data.scenes) == scenes + 1  # the matte's throwaway scene, while it renders
    assert run_op("sequencer.tokenflow_cancel", scene) == {"FINISHED"}
    wait(tf, timeout=10)
    assert task.state == "CANCELLED" and task.pid is None
    assert "nothing was added" in bpy.context.window_manager.tokenflow_job.message
    assert not Path(task.context["matte_dir"]).exists()
    assert snapshot(scene) == before and len(bpy.data.scenes) == scenes


# --- end to end: an EXR plate with a Mask matte through the real engine ----------------------------
# The mask is rendered by Blender, whose unwritten last pixel (strip_render's docstring) once let the
# edit through at the top-right corner here: the pixels outside the matte are checked one by one.
def test_exr_plate_with_matte_end_to_end(tf, scene, assets, tmp_path) -> None:
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.device = "cpu"
    plate = tmp_path / "plate"
    plate.mkdir()
    frames = []
    settings = scene.render.image_settings
    settings.file_format, settings.color_depth, settings.exr_codec = "OPEN_EXR", "16", "ZIP"
    for i, png in enumerate(assets["frames"]):  # the city frames as a half-float linear EXR plate
        width, height, px = raw_pixels(str(png))
        img = bpy.data.images.new(f"plate{i}", width, height, float_buffer=True)
        linear = [_linear(v) * 1.5 for v in px]  # highlights above 1.0, as plates have them
        linear[3::4] = px[3::4]
        img.pixels.foreach_set(linear)
        frames.append(plate / f"city_{i + 1:04d}.exr")
        img.save_render(str(frames[-1]), scene=scene)
        bpy.data.images.remove(img)
    strip = add_image_strip(scene, frames, channel=2, start=7, name="plate")
    strip.colorspace_settings.name = "Linear Rec.709"
    strip_time.set_time(strip, frame_offset_start=1, frame_offset_end=2)  # frames 8-16 show
    width, height = 96, 54
    tf.compat.strips(scene.sequence_editor).new_mask("roto", _mask("roto", 0.0, 0.5), 4, 1)
    scene.sequence_editor.active_strip = strip
    s = scene.tokenflow
    s.prompt, s.source_prompt, s.model = "a watercolor painting", "a city street", str(assets["model"])
    s.steps, s.size, s.keyframe_stride, s.chunk_size, s.evaluate = 2, 64, 4, 8, False
    s.output_dir = str(tmp_path / "out") + os.sep
    s.matte = "roto"  # rendered to RGB frames: 'auto' reads their luminance
    try:
        assert run_op("sequencer.tokenflow_propagate", scene) == {"FINISHED"}
        task = wait(tf)
    finally:
        prefs.device = "auto"
    assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    job = json.loads(Path(task.context["job_path"]).read_text())
    assert (job["colorspace"], job["ocio_config"]) == ("Linear Rec.709", tf.sequencer.strips.ocio_config())
    assert len(job["matte"]) == 9 and job["matte_channel"] == "auto"
    assert not Path(task.context["matte_dir"]).exists(), "rendered matte frames outlive the run"
    state = bpy.context.window_manager.tokenflow_job
    result = next(r for r in strips_of(scene) if r.name == state.result_strip)
    assert strip_time.span(result) == (8, 17)
    assert result.colorspace_settings.name == "Linear Rec.709"
    folder = Path(bpy.path.abspath(result.directory))
    names = [e.filename for e in result.elements]
    assert names == [f.stem + ".exr" for f in frames[1:10]]
    source_info = tf.sequencer.imageinfo.read_info(str(frames[1]))
    changed = 0
    for name, src in zip(names, frames[1:10], strict=True):
        info = tf.sequencer.imageinfo.read_info(str(folder / name))
        assert (info.format, info.width, info.height) == ("exr", width, height)
        assert info.channels == source_info.channels and info.bit_depth == source_info.bit_depth
        out, ref = raw_pixels(str(folder / name)), raw_pixels(str(src))
        for y in range(height):
            for x in range(width * 3 // 4, width):  # well outside the matte: the source, bit for bit
                i = (y * width + x) * 4
                assert out[2][i : i + 3] == ref[2][i : i + 3], (name, x, y)
        inside = [(y * width + x) * 4 for y in range(height) for x in range(width // 4)]
        changed += sum(out[2][i] != ref[2][i] for i in inside)
    assert changed > 0, "the edit changed nothing inside the matte"


def test_matte_panel(tf, scene) -> None:
    from .test_ui import Layout, _context, _draw

    searched: list[tuple[str, str]] = []

    def prop_search(self, data, name, search_data, search_name, **kwargs) -> None:
        assert name in data.bl_rna.properties and search_name in search_data.bl_rna.properties
        searched.append((name, search_name))

    Layout.prop_search = prop_search
    try:
        scene.sequence_editor_create()
        shown = {name for kind, name in _draw(bpy.types.SEQUENCER_PT_tokenflow_matte, _context(scene))}
    finally:
        del Layout.prop_search
    assert {"matte_channel", "matte_invert", "matte_feather"} <= shown
    assert searched == [("matte", "strips_all" if bpy.app.version >= (4, 4, 0) else "sequences_all")]
    assert not bpy.types.SEQUENCER_PT_tokenflow_matte.poll(SimpleNamespace(scene=None, sequencer_scene=None))


def test_farm_refuses_a_matte_blender_would_render(tf, scene, tmp_path) -> None:
    """A Mask matte is rendered by this Blender frame by frame; a farm job cannot wait for that, so
    it is refused with the way out (an image-sequence matte goes to the farm: test_farm.py)."""
    source = _source(scene, tmp_path)
    tf.compat.strips(scene.sequence_editor).new_mask("roto", _mask("roto", 0.0, 0.5), 3, 9)
    scene.sequence_editor.active_strip = source
    scene.tokenflow.prompt, scene.tokenflow.matte = "snow", "roto"
    scene.tokenflow.output_dir = str(tmp_path / "out") + os.sep
    before, task_before = snapshot(scene), tf.runs.registry.get("farm")
    with pytest.raises(RuntimeError, match="'roto' is a mask strip, which Blender renders on this computer"):
        run_op("sequencer.tokenflow_submit_farm", scene)
    assert snapshot(scene) == before and tf.runs.registry.get("farm") is task_before
    assert (
        "render it to an image sequence on shared storage" in bpy.context.window_manager.tokenflow_job.error
    )
