"""Strip helpers on trimmed, offset, moved and reversed strips: exactly the frames the timeline shows."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import bpy
import pytest

from . import pngs, shown, strip_time
from .helpers import MODULE, add_image_strip, strips_of


@pytest.fixture
def seq(tmp_path: Path) -> list[Path]:
    return pngs.write_sequence(tmp_path / "seq", 12, 32, 24)


def _mods():
    pkg = sys.modules[f"{MODULE}.tokenflow_blender"]
    return pkg.sequencer.strips, pkg.sequencer.planning, pkg.compat


def _names(paths: list[str]) -> list[str]:
    return [os.path.basename(p) for p in paths]


def test_untrimmed(ext, scene, seq) -> None:
    strips, _, _ = _mods()
    strip = add_image_strip(scene, seq, start=10)
    frames = strips.visible_frames(strip)
    assert frames == [str(p) for p in seq]
    assert all(os.path.isabs(p) for p in frames)


# Each case: trims and content offsets by their older names (shown.set_time uses 5.2's where they
# exist). What the strip shows comes from Blender's own render of each timeline frame, never from a
# formula: 5.2 places a content-offset strip differently from 4.2-5.0.
CASES = [
    {"frame_offset_start": 3},
    {"frame_offset_end": 4},
    {"frame_offset_start": 2, "frame_offset_end": 5},
    {"animation_offset_start": 2},
    {"animation_offset_start": 2, "animation_offset_end": 3},
    {"animation_offset_start": 2, "animation_offset_end": 3, "frame_offset_start": 1, "frame_offset_end": 1},
    # trimmed, content-offset and moved
    {
        "animation_offset_start": 2,
        "animation_offset_end": 3,
        "frame_offset_start": 1,
        "frame_offset_end": 1,
        "frame_start": 31,
    },
]


def _check_against_render(strips, scene, strip, seq, folder: Path, count: int) -> None:
    blender = shown.shown_files(scene, strip, seq, range(0, 50), folder)
    first, files = shown.run_of(blender)
    assert len(files) == count
    frames = strips.visible_frames(strip)
    assert _names(frames) == files
    shot = strips.read_shot(strip)
    assert (shot.start, shot.end) == (first, first + count) == strip_time.span(strip)
    assert _names(shot.frames) == files


@pytest.mark.parametrize("settings", CASES)
def test_trimmed_and_offset(ext, scene, seq, tmp_path, settings) -> None:
    strips, _, _ = _mods()
    strip = add_image_strip(scene, seq, start=10)
    strip_time.set_time(strip, **settings)
    trims = ("frame_offset_start", "frame_offset_end", "animation_offset_start", "animation_offset_end")
    count = len(seq) - sum(settings.get(name, 0) for name in trims)
    _check_against_render(strips, scene, strip, seq, tmp_path / "render", count)


def test_moved_and_reversed(ext, scene, seq, tmp_path) -> None:
    strips, _, _ = _mods()
    strip = add_image_strip(scene, seq, start=10)
    strip_time.set_time(strip, frame_offset_start=1, frame_offset_end=2, frame_start=40)
    assert strip_time.span(strip) == (41, 50)
    assert _names(strips.visible_frames(strip)) == [p.name for p in seq[1:10]]
    _check_against_render(strips, scene, strip, seq, tmp_path / "render", 9)
    strip.use_reverse_frames = True
    assert _names(strips.visible_frames(strip)) == [p.name for p in reversed(seq[2:11])]
    _check_against_render(strips, scene, strip, seq, tmp_path / "reversed", 9)


def test_result_lands_on_the_frames_blender_shows(ext, scene, seq, tmp_path) -> None:
    """A result for a trimmed, content-offset, moved strip: at every timeline frame Blender renders
    the result frame of the source frame it renders there, and each keyframe marker sits on the
    timeline frame that shows that keyframe. The engine's output is stood in for by an identity
    edit (result frame i is a copy of source frame i), placed by the real apply path."""
    pkg = sys.modules[f"{MODULE}.tokenflow_blender"]
    strip = add_image_strip(scene, seq, start=10)
    strip_time.set_time(strip, **CASES[-1])
    shot = pkg.sequencer.strips.read_shot(strip)
    out = tmp_path / "out"
    out.mkdir()
    files = [f"frame_{i:04d}.png" for i in range(len(shot.frames))]
    for name, frame in zip(files, shot.frames, strict=True):
        shutil.copyfile(frame, out / name)
    done = {"output": str(out), "files": files, "indices": list(range(len(files))), "keyframes": [0, 3]}
    ctx = pkg.edit.apply.result_context(scene, shot, "identity", "propagate")
    pkg.edit.apply.apply_result(ctx, done, str(out))
    result = pkg.sequencer.strips.find_strip(scene, pkg.jobs.state().result_strip)
    frames = range(0, 50)
    source_shown = shown.shown_files(scene, strip, seq, frames, tmp_path / "r-source")
    by_colour = [out / name for name in files]
    result_shown = shown.shown_files(scene, result, by_colour, frames, tmp_path / "r-result")
    assert sorted(result_shown) == sorted(source_shown)  # the same timeline frames, no more, no less
    for frame, name in result_shown.items():
        index = files.index(name)
        assert os.path.basename(shot.frames[index]) == source_shown[frame], frame
    markers = {m.name: m.frame for m in scene.timeline_markers}
    for key in (0, 3):
        assert source_shown[markers[f"TF key {key}"]] == os.path.basename(shot.frames[key])


def test_relative_directory(ext, scene, seq) -> None:
    """A '//'-relative strip directory comes back absolute, resolved as Blender resolves it."""
    strips, _, _ = _mods()
    strip = add_image_strip(scene, seq, start=1)
    strip.directory = "//seq/"
    base = bpy.path.abspath("//seq/")
    assert strips.visible_frames(strip) == [os.path.normpath(os.path.join(base, p.name)) for p in seq]


def test_add_image_strip_on_first_free_channel(ext, scene, seq, tmp_path) -> None:
    strips, planning, compat = _mods()
    src = add_image_strip(scene, seq, channel=2, start=10)
    # Something on channel 3 overlapping the source, and something on 4 that does not overlap.
    compat.new_color_strip(scene.sequence_editor, "blocker", 3, 15, 3)
    compat.new_color_strip(scene.sequence_editor, "elsewhere", 4, 100, 5)
    out = tmp_path / "out"
    files = [f"frame_{i:04d}.png" for i in range(12)]
    for name in files:
        pngs.write_png(out / name, 32, 24)
    strip = strips.add_image_strip(
        scene, "TF result", str(out), files, strip_time.span(src)[0], src.channel, "sRGB"
    )
    assert strip.channel == 4
    assert strip_time.span(strip) == strip_time.span(src)
    assert strip.colorspace_settings.name == "sRGB"
    assert [e.filename for e in strip.elements] == files
    assert len(strips_of(scene)) == 4


def test_markers_not_duplicated(ext, scene) -> None:
    strips, _, _ = _mods()
    strips.add_markers(scene, 10, [0, 4, 8])
    strips.add_markers(scene, 10, [0, 4, 8, 11])
    assert sorted((m.name, m.frame) for m in scene.timeline_markers) == [
        ("TF key 0", 10),
        ("TF key 11", 21),
        ("TF key 4", 14),
        ("TF key 8", 18),
    ]


def test_compat_helpers(ext, scene) -> None:
    _, _, compat = _mods()
    ed = scene.sequence_editor_create()
    assert len(compat.strips(ed)) == 0  # an empty collection must not fall through to `sequences`
    color = compat.new_color_strip(ed, "c", 1, 5, 10)
    assert strip_time.span(color) == compat.span(color) == (5, 15)
    ed.active_strip = color
    assert compat.active_strip(bpy.context, scene) == color
    assert compat.scene_of(bpy.context) is not None
