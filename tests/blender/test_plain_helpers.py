"""The plain-Python parts (no bpy): image headers, placement decisions, engine environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy
import pytest

from . import pngs
from .helpers import MODULE


@pytest.fixture
def pkg(ext):
    return sys.modules[f"{MODULE}.tokenflow_blender"]


def _save(
    image_format: str, path: Path, width: int = 40, height: int = 30, float_buffer: bool = False
) -> Path:
    """An image file written by Blender itself (JPEG, TIFF, EXR)."""
    img = bpy.data.images.new("tmp", width, height, float_buffer=float_buffer)
    try:
        img.filepath_raw = str(path)
        img.file_format = image_format
        img.save()
    finally:
        bpy.data.images.remove(img)
    return path


def test_png_header(pkg, tmp_path) -> None:
    info = pkg.sequencer.imageinfo.read_info(str(pngs.write_png(tmp_path / "a.png", 37, 21)))
    assert (info.format, info.width, info.height, info.bit_depth, info.is_float) == ("png", 37, 21, 8, False)
    info16 = pkg.sequencer.imageinfo.read_info(str(pngs.write_png(tmp_path / "b.png", 5, 6, depth=16)))
    assert info16.bit_depth == 16


def test_jpeg_tiff_exr_headers(pkg, tmp_path) -> None:
    read = pkg.sequencer.imageinfo.read_info
    jpg = read(str(_save("JPEG", tmp_path / "a.jpg", 41, 23)))
    assert (jpg.format, jpg.width, jpg.height) == ("jpeg", 41, 23)
    tif = read(str(_save("TIFF", tmp_path / "a.tif", 19, 17)))
    assert (tif.format, tif.width, tif.height, tif.is_float) == ("tiff", 19, 17, False)
    exr = read(str(_save("OPEN_EXR", tmp_path / "a.exr", 8, 8, float_buffer=True)))
    assert exr.is_float


def test_check_frames(pkg, tmp_path) -> None:
    check, err = pkg.sequencer.imageinfo.check_frames, pkg.sequencer.imageinfo.FrameError
    seq = [str(p) for p in pngs.write_sequence(tmp_path / "s", 4, 32, 24)]
    assert (check(seq).width, check(seq).height) == (32, 24)
    with pytest.raises(err, match="missing"):
        check([*seq, str(tmp_path / "s" / "nope_0009.png")])
    odd = str(pngs.write_png(tmp_path / "s" / "img_0005.png", 33, 24))
    with pytest.raises(err, match="differ in size.*32x24.*33x24"):
        check([*seq, odd])
    with pytest.raises(err, match="more than one frame"):
        check([seq[0], seq[0]])
    exr = str(_save("OPEN_EXR", tmp_path / "s" / "img_0006.exr", 32, 24, float_buffer=True))
    with pytest.raises(err, match="differ in kind"):  # EXR plates pass, but not mixed with PNG
        check([*seq, exr])
    with pytest.raises(err, match="no frames"):
        check([])
    text = tmp_path / "s" / "img_0007.png"
    text.write_text("not an image")
    with pytest.raises(err, match="not a PNG"):
        check([*seq, str(text)])


def test_free_channel(pkg) -> None:
    p = pkg.sequencer.planning
    spans = [p.Span(2, 10, 22), p.Span(3, 15, 18), p.Span(4, 30, 40), p.Span(5, 0, 11)]
    assert p.free_channel(spans, 10, 22, above=2) == 4
    assert p.free_channel(spans, 22, 30, above=2) == 3  # end is exclusive: touching is not overlapping
    assert p.free_channel(spans, 0, 100, above=1) == 6
    with pytest.raises(ValueError, match="no free channel"):
        p.free_channel([p.Span(c, 0, 10) for c in range(2, 129)], 0, 10, above=1)


def test_preview_elements(pkg) -> None:
    p = pkg.sequencer.planning
    files = ["/o/f_00.png", "/o/f_04.png", "/o/f_07.png", "/o/f_11.png"]
    first, elems = p.preview_elements(files, [0, 4, 7, 11], 12)
    assert first == 0 and len(elems) == 12
    assert (
        elems[0] == "f_00.png"
        and elems[4] == "f_04.png"
        and elems[7] == "f_07.png"
        and elems[11] == "f_11.png"
    )
    assert elems[3] == "f_00.png" and elems[10] == "f_07.png"  # held until the next keyframe
    first, elems = p.preview_elements(["/o/b.png", "/o/a.png"], [5, 2], 8)  # unordered, not at 0
    assert first == 2 and elems == ["a.png"] * 3 + ["b.png"] * 3


def test_names_and_folders(pkg, tmp_path) -> None:
    p = pkg.sequencer.planning
    assert p.slug("A Watercolor painting, 4K!") == "a-watercolor-painting-4k"
    assert p.slug("!!!") == "edit"
    name = p.result_name("shot", "x" * 200, preview=False)
    assert len(name.encode()) <= 61 and name.startswith("TF shot: ") and name.endswith("...")
    assert p.result_name("shot", "snow", preview=True) == "TF preview shot: snow"
    a = p.output_folder(str(tmp_path), "shot.001", "Snow!", "propagate", now=0)
    os.makedirs(a)
    b = p.output_folder(str(tmp_path), "shot.001", "Snow!", "propagate", now=0)
    assert a != b and b.endswith("-2") and os.path.dirname(a) == str(tmp_path)
    os.makedirs(os.path.join(tmp_path, "." + os.path.basename(b) + ".tmp-123"))
    c = p.output_folder(str(tmp_path), "shot.001", "Snow!", "propagate", now=0)
    assert c.endswith("-3")  # clear of an engine's temporary folder too
    assert p.temp_folders(b) == [os.path.join(tmp_path, "." + os.path.basename(b) + ".tmp-123")]
    assert (
        p.format_eta(65) == "1:05 left" and p.format_eta(3725) == "1:02:05 left" and p.format_eta(None) == ""
    )


def test_engine_env(pkg, tmp_path, monkeypatch) -> None:
    env_mod = pkg.runs.engine_env
    monkeypatch.delenv(env_mod.ENV_PYTHON, raising=False)
    venv = str(tmp_path / "venv")
    assert env_mod.resolve_python("", venv) == env_mod.venv_python(venv)
    monkeypatch.setenv(env_mod.ENV_PYTHON, "/opt/py/bin/python")
    assert env_mod.resolve_python("", venv) == "/opt/py/bin/python"
    assert env_mod.resolve_python("/x/python", venv) == "/x/python"  # the preference wins
    assert "Install engine" in env_mod.check_python(str(tmp_path / "none"))
    assert env_mod.check_python(sys.executable) == ""
    env = env_mod.engine_env("/ext", online=False)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == "/ext" and env["HF_HUB_OFFLINE"] == "1"
    assert os.path.isfile(os.path.join(env_mod.extension_root(), "engine", "__main__.py"))
    steps = env_mod.install_steps(
        "/usr/bin/python3", venv, "/ext/engine/requirements.txt", "https://idx/cu124"
    )
    assert [s.label for s in steps][0] == "Creating environment"
    assert steps[2].argv[-2:] == ["--index-url", "https://idx/cu124"]
    assert steps[3].argv[-2:] == ["-r", "/ext/engine/requirements.txt"]
    assert steps[-1].argv[-3:] == ["-m", "engine", "check"]
    assert abs(sum(s.weight for s in steps) - 1.0) < 1e-9


def test_display_referred_colour_spaces(pkg) -> None:
    ok = ["sRGB", "Rec.1886", "AgX Base sRGB", "Filmic sRGB", "Display P3", "ACES 2.0 sRGB", "Rec.2020"]
    bad = ["Linear Rec.709", "ACEScg", "ACEScct", "ACES2065-1", "Non-Color", "Filmic Log", "AgX Log"]
    bad += ["Linear CIE-XYZ E", "Rec.2100-PQ", "scene_linear"]
    assert all(pkg.sequencer.planning.is_display_referred(n) for n in ok)
    assert not any(pkg.sequencer.planning.is_display_referred(n) for n in bad)


def test_build_job_from_scene_settings(pkg, scene, tmp_path) -> None:
    """The scene's settings and the preferences become the engine job, checked as the engine will."""
    seq = pngs.write_sequence(tmp_path / "seq", 4, 32, 24)
    shot = pkg.sequencer.strips.Shot("shot", [str(p) for p in seq], 1, 1, "sRGB", 32, 24)
    s = scene.tokenflow
    s.prompt, s.source_prompt, s.model = "  a snowy street ", "a street", ""
    s.steps, s.size, s.keyframe_stride, s.keyframe_mode, s.seed = 12, 300, 3, "resample", 7
    job = pkg.edit.job.build_job(scene, shot, "preview", str(tmp_path / "out"))
    assert job.prompt == "a snowy street" and job.stage == "preview" and job.frames == shot.frames
    # the scene's model falls back to the default
    assert job.model == pkg.settings.preferences.default_model()
    assert job.size == 320  # rounded to a multiple of 64
    assert (job.steps, job.keyframe_stride, job.keyframe_mode, job.seed) == (12, 3, "resample", 7)
    assert job.cache_dir == pkg.settings.preferences.cache_dir() and job.device == "auto"
    s.model = str(tmp_path)  # a local folder goes to the engine absolute
    assert pkg.edit.job.build_job(scene, shot, "propagate", str(tmp_path / "o2")).model == str(tmp_path)
    s.model = "runwayml/stable-diffusion-v1-5"  # a hub id as it is
    assert pkg.edit.job.build_job(scene, shot, "propagate", str(tmp_path / "o3")).model == s.model
