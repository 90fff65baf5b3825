"""Convert to Image Sequence on a real movie (carphone_pristine.mp4, 176x144): Blender renders the
strip's visible frames (trim and content offset) to a new folder, the image strip lands above,
aligned and active; the movie and its strip are untouched; cancel leaves nothing."""

from __future__ import annotations

import array
import os
import subprocess
from pathlib import Path
from typing import Any

import bpy
import pytest

from . import pngs, shown, strip_time
from .conftest import engine_python
from .helpers import ROOT, add_image_strip, digest, run_op, snapshot, strips_of, wait

CLIP = "carphone_pristine.mp4"
REFERENCE = 16  # the movie's first frames decoded by OpenCV, to tell which frame Blender rendered

_DECODE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.clips import clip_path, extract_frames
extract_frames(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
print(clip_path(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def movie(tmp_path_factory) -> dict[str, Any]:
    """The clip's path and its first frames as PNG (decoded in the engine environment)."""
    if not engine_python().is_file():
        pytest.fail(f"no engine environment at {engine_python()} (it provides the test clips)")
    out = tmp_path_factory.mktemp("carphone")
    done = subprocess.run(
        [str(engine_python()), "-c", _DECODE, str(ROOT), CLIP, str(out), str(REFERENCE)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {"path": Path(done.stdout.strip().splitlines()[-1]), "frames": sorted(out.glob("*.png"))}


def _pixels(path: Path, step: int = 5) -> array.array:
    """Every `step`-th RGB value of a file as stored (no colour conversion)."""
    img = bpy.data.images.load(str(path))
    try:
        img.colorspace_settings.name = "Non-Color"
        buf = array.array("f", [0.0]) * (img.size[0] * img.size[1] * 4)
        img.pixels.foreach_get(buf)
    finally:
        bpy.data.images.remove(img)
    return array.array("f", [v for i, v in enumerate(buf) if i % 4 != 3][::step])


def _distance(a: array.array, b: array.array) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def _movie_strip(tf, scene: Any, path: Path) -> Any:
    """The movie at frame 3 on channel 2, content offset by 2 frames and trimmed to 5 frames."""
    ed = scene.sequence_editor_create()
    strip = tf.compat.strips(ed).new_movie("carphone", str(path), 2, 3)
    strip_time.set_time(strip, animation_offset_start=2, frame_offset_start=4)
    strip_time.set_length(strip, 5)
    strip.colorspace_settings.name = "sRGB"
    ed.active_strip = strip
    return strip


def _movie_state(strip: Any) -> tuple:
    return tuple(
        strip_time.get_time(strip, name)
        for name in (
            "name",
            "channel",
            "frame_start",
            "frame_final_start",
            "frame_final_end",
            "frame_offset_start",
            "frame_offset_end",
            "animation_offset_start",
            "filepath",
            "mute",
        )
    ) + (strip.colorspace_settings.name,)


def test_convert_a_trimmed_offset_movie(tf, scene, movie, tmp_path) -> None:
    scene.tokenflow.output_dir = str(tmp_path / "out") + os.sep
    strip = _movie_strip(tf, scene, movie["path"])
    tf.compat.new_color_strip(scene.sequence_editor, "blocker", 3, 1, 40)  # channel 3 is taken
    visible = list(range(*strip_time.span(strip)))
    assert len(visible) == 5
    state, file_digest, scenes = _movie_state(strip), digest([movie["path"]]), len(bpy.data.scenes)

    assert run_op("sequencer.tokenflow_convert_movie", scene) == {"FINISHED"}
    task = wait(tf, slot="convert", timeout=120)
    assert task.state == "DONE", task.message
    ed = scene.sequence_editor
    result = ed.active_strip
    assert result.type == "IMAGE" and result.name == task.result_strip == "carphone frames"
    assert result.channel == 4  # the first channel above that is free over the whole range
    assert strip_time.span(result) == (visible[0], visible[-1] + 1)
    assert result.colorspace_settings.name == "sRGB"
    assert result.select and not strip.select
    folder = Path(bpy.path.abspath(result.directory))
    assert folder.parent == tmp_path / "out"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [folder.name]  # no temporary folder
    files = [result.strip_elem_from_frame(f).filename for f in visible]
    assert sorted(os.listdir(folder)) == files and len(set(files)) == 5
    info = tf.sequencer.imageinfo.read_info(str(folder / files[0]))
    assert (info.format, info.width, info.height) == ("png", 176, 144)
    # The movie, its strip and the scene list are as they were.
    assert _movie_state(strip) == state and digest([movie["path"]]) == file_digest
    assert len(bpy.data.scenes) == scenes
    # Each frame is the movie frame Blender renders for the strip at that timeline frame (which
    # movie frame that is, is told by the movie's frames decoded by OpenCV).
    refs = [_pixels(p) for p in movie["frames"]]
    blender = shown.renders(scene, strip, visible, tmp_path / "render", 176, 144)
    shown_indices = []
    for f, name in zip(visible, files, strict=True):
        shows = [_distance(_pixels(blender[f]), ref) for ref in refs]
        expected = shows.index(min(shows))
        assert shows[expected] < 0.01, (f, shows)
        shown_indices.append(expected)
        got = _pixels(folder / name)
        distances = [_distance(got, ref) for ref in refs]
        assert distances.index(min(distances)) == expected, (f, distances)
        assert distances[expected] < 0.01  # 4.2 decodes as OpenCV does; 5.0 within 0.005
    # The trim and the content offset are both at work: five consecutive frames, not from the start.
    assert shown_indices == list(range(shown_indices[0], shown_indices[0] + 5)) and shown_indices[0] > 0
    # The new strip is an image strip TokenFlow takes as it is.
    assert tf.sequencer.strips.read_shot(result).frames == [str(folder / n) for n in files]


def test_cancel_leaves_nothing(tf, scene, movie, tmp_path) -> None:
    out = tmp_path / "out"
    scene.tokenflow.output_dir = str(out) + os.sep
    strip = _movie_strip(tf, scene, movie["path"])
    before, scenes = snapshot(scene), len(bpy.data.scenes)
    assert run_op("sequencer.tokenflow_convert_movie", scene) == {"FINISHED"}
    task = tf.runs.registry.get("convert")
    assert task.tick() and len(task.files) == 1  # one frame rendered, four to go
    assert [p.name for p in out.iterdir()][0].startswith(".")  # frames go to a hidden folder first
    assert run_op("sequencer.tokenflow_cancel_convert", scene) == {"FINISHED"}
    assert task.state == "CANCELLED" and not task.running and "nothing was added" in task.message
    assert snapshot(scene) == before and scene.sequence_editor.active_strip == strip
    assert list(out.iterdir()) == []
    assert len(bpy.data.scenes) == scenes


def test_float_footage_becomes_exr(tf, scene, movie, tmp_path) -> None:
    """Footage read in a linear colour space is written as scene-linear EXR, and the strip says so."""
    scene.tokenflow.output_dir = str(tmp_path / "out") + os.sep
    strip = _movie_strip(tf, scene, movie["path"])
    strip_time.set_length(strip, 2)
    strip.colorspace_settings.name = "Linear Rec.709"
    assert run_op("sequencer.tokenflow_convert_movie", scene) == {"FINISHED"}
    task = wait(tf, slot="convert", timeout=120)
    assert task.state == "DONE", task.message
    result = scene.sequence_editor.active_strip
    assert result.colorspace_settings.name == "Linear Rec.709"
    folder = Path(bpy.path.abspath(result.directory))
    info = tf.sequencer.imageinfo.read_info(str(folder / result.elements[0].filename))
    assert (info.format, info.width, info.height, info.bit_depth) == ("exr", 176, 144, 16)


def test_only_movie_strips(tf, scene, tmp_path) -> None:
    add_image_strip(scene, pngs.write_sequence(tmp_path / "seq", 3, 32, 24))
    before = snapshot(scene)
    with pytest.raises(
        RuntimeError, match="'shot' is not a movie strip \\(it is image\\).*Convert to Image Sequence"
    ):
        run_op("sequencer.tokenflow_convert_movie", scene)
    assert snapshot(scene) == before and tf.runs.registry.running("convert") is None
    assert len(strips_of(scene)) == 1


def test_panel_offers_the_conversion(tf, scene, movie, tmp_path, monkeypatch) -> None:
    from .test_ui import _context, _draw

    panel = bpy.types.SEQUENCER_PT_tokenflow
    assert "sequencer.tokenflow_convert_movie" not in {n for _, n in _draw(panel, _context(scene))}
    scene.tokenflow.output_dir = str(tmp_path / "out") + os.sep
    _movie_strip(tf, scene, movie["path"])
    idle = _draw(panel, _context(scene))
    assert ("operator", "sequencer.tokenflow_convert_movie") in idle
    assert run_op("sequencer.tokenflow_convert_movie", scene) == {"FINISHED"}
    task = tf.runs.registry.get("convert")
    task.tick()
    running = _draw(panel, _context(scene))
    assert ("progress", "Converting 'carphone': 1/5 frames") in running
    assert ("operator", "sequencer.tokenflow_cancel_convert") in running
    wait(tf, slot="convert", timeout=120)
    done = _draw(panel, _context(scene))
    assert ("label", "Added 'carphone frames' on channel 3: 5 frames") in done


def test_convert_a_movie_clip_strip(tf, scene, movie, tmp_path) -> None:
    """A strip of a clip from the Movie Clip Editor converts the same way (4.4+; 4.2 refuses it)."""
    scene.tokenflow.output_dir = str(tmp_path / "out") + os.sep
    clip = bpy.data.movieclips.load(str(movie["path"]))
    try:
        ed = scene.sequence_editor_create()
        strip = tf.compat.strips(ed).new_clip("clip", clip, 2, 5)
        strip_time.set_time(strip, frame_offset_start=3)
        strip_time.set_length(strip, 2)
        ed.active_strip = strip
        if not hasattr(strip, "clip"):  # MovieClipSequence has no `clip` in 4.2
            with pytest.raises(RuntimeError, match="movie clip strip.*Add > Movie"):
                run_op("sequencer.tokenflow_convert_movie", scene)
            return
        assert run_op("sequencer.tokenflow_convert_movie", scene) == {"FINISHED"}
        task = wait(tf, slot="convert", timeout=120)
        assert task.state == "DONE", task.message
        result = ed.active_strip
        assert (*strip_time.span(result), result.channel) == (8, 10, 3)
        got = _pixels(Path(bpy.path.abspath(result.directory)) / result.elements[0].filename)
        distances = [_distance(got, _pixels(p)) for p in movie["frames"][:6]]
        assert distances.index(min(distances)) == 3 and min(distances) < 0.01
    finally:
        bpy.data.movieclips.remove(clip)


# --- DPX scans: Blender reads them, the engine does not; Convert renders them as OpenEXR -------------
def _write_dpx(folder: Path, count: int, width: int = 48, height: int = 32) -> list[Path]:
    """10-bit DPX frames written by Blender: a horizontal ramp whose level rises frame by frame."""
    folder.mkdir(parents=True)
    scene = bpy.data.scenes.new("dpx-writer")
    try:
        settings = scene.render.image_settings
        settings.file_format, settings.color_depth = "DPX", "10"
        paths = []
        for i in range(count):
            img = bpy.data.images.new(f"dpx{i}", width, height, float_buffer=True)
            img.colorspace_settings.name = "Linear Rec.709"
            ramp = [(x / width) * (0.5 + 0.1 * i) for x in range(width)]
            img.pixels.foreach_set(
                array.array("f", [v for _ in range(height) for r in ramp for v in (r, r, r, 1)])
            )
            path = folder / f"scan_{i:04d}.dpx"
            img.save_render(str(path), scene=scene)
            bpy.data.images.remove(img)
            paths.append(path)
        return paths
    finally:
        bpy.data.scenes.remove(scene)


def _shown(path: Path, colorspace: str) -> float:
    """The mean scene-linear value Blender decodes from a frame file in a colour space."""
    img = bpy.data.images.load(str(path))
    try:
        img.colorspace_settings.name = colorspace
        buf = array.array("f", [0.0]) * (img.size[0] * img.size[1] * 4)
        img.pixels.foreach_get(buf)
    finally:
        bpy.data.images.remove(img)
    rgb = [v for i, v in enumerate(buf) if i % 4 != 3]
    return sum(rgb) / len(rgb)


def test_dpx_scans_become_exr(tf, scene, tmp_path) -> None:
    from .test_ui import _context, _draw

    scans = _write_dpx(tmp_path / "scans", 4)
    strip = add_image_strip(scene, scans, channel=2, start=5, name="scan")
    strip.colorspace_settings.name = "Linear Rec.709"
    strip_time.set_time(strip, frame_offset_start=1)  # three frames show: scans 1-3
    before = digest(scans)
    # The engine cannot read DPX; the refusal says how to convert, and the panel offers it.
    with pytest.raises(
        tf.sequencer.strips.SourceError, match="press Convert to Image Sequence in the TokenFlow panel"
    ):
        tf.sequencer.strips.read_shot(strip)
    assert ("operator", "sequencer.tokenflow_convert_movie") in _draw(
        bpy.types.SEQUENCER_PT_tokenflow, _context(scene)
    )
    scene.tokenflow.output_dir = str(tmp_path / "out") + os.sep
    assert run_op("sequencer.tokenflow_convert_movie", scene) == {"FINISHED"}
    task = wait(tf, slot="convert", timeout=120)
    assert task.state == "DONE", task.message
    result = scene.sequence_editor.active_strip
    assert result.name == "scan frames" and result.channel == 3
    assert strip_time.span(result) == (6, 9)
    assert result.colorspace_settings.name == "Linear Rec.709"
    folder = Path(bpy.path.abspath(result.directory))
    files = [e.filename for e in result.elements]
    assert len(files) == 3 and all(f.endswith(".exr") for f in files)
    info = tf.sequencer.imageinfo.read_info(str(folder / files[0]))
    assert (info.format, info.width, info.height, info.bit_depth) == ("exr", 48, 32, 16)
    # Each EXR frame holds what Blender shows for the scan at that frame (scans 1, 2, 3).
    for scan, name in zip(scans[1:], files, strict=True):
        expected = _shown(scan, "Linear Rec.709")
        assert abs(_shown(folder / name, "Linear Rec.709") - expected) < 0.003, (scan.name, name)
    assert digest(scans) == before, "the scans must stay byte-identical"
    assert tf.sequencer.strips.read_shot(result).frames == [str(folder / n) for n in files]


def test_dpx_with_a_missing_frame_is_refused(tf, scene, tmp_path) -> None:
    scans = _write_dpx(tmp_path / "scans", 3)
    add_image_strip(scene, scans, name="scan")
    scans[1].unlink()
    scene.tokenflow.output_dir = str(tmp_path / "out") + os.sep
    before = snapshot(scene)
    with pytest.raises(RuntimeError, match="scan_0001.dpx of 'scan' is missing; relink the strip"):
        run_op("sequencer.tokenflow_convert_movie", scene)
    assert snapshot(scene) == before and tf.runs.registry.running("convert") is None
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_dpx_read_as_a_display_space_becomes_16_bit_png(tf, scene, tmp_path) -> None:
    """Scans hold 10 bits or more: a display-referred scan is not cut to 8 bits."""
    scans = _write_dpx(tmp_path / "scans", 2)
    strip = add_image_strip(scene, scans, name="scan")  # read as sRGB
    scene.tokenflow.output_dir = str(tmp_path / "out") + os.sep
    assert run_op("sequencer.tokenflow_convert_movie", scene) == {"FINISHED"}
    task = wait(tf, slot="convert", timeout=120)
    assert task.state == "DONE", task.message
    result = scene.sequence_editor.active_strip
    assert result != strip and result.colorspace_settings.name == "sRGB"
    folder = Path(bpy.path.abspath(result.directory))
    info = tf.sequencer.imageinfo.read_info(str(folder / result.elements[0].filename))
    assert (info.format, info.width, info.height, info.bit_depth) == ("png", 48, 32, 16)
    for scan, elem in zip(scans, result.elements, strict=True):
        assert abs(_shown(folder / elem.filename, "sRGB") - _shown(scan, "sRGB")) < 0.003
