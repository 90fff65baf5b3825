"""Strip helpers on trimmed, offset, moved and reversed strips: exactly the frames the timeline shows."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy
import pytest

from . import pngs
from .helpers import MODULE, add_image_strip, strips_of


@pytest.fixture
def seq(tmp_path: Path) -> list[Path]:
    return pngs.write_sequence(tmp_path / "seq", 12, 32, 24)


def _mods():
    pkg = sys.modules[f"{MODULE}.tokenflow_blender"]
    return pkg.strips, pkg.planning, pkg.compat


def _names(paths: list[str]) -> list[str]:
    return [os.path.basename(p) for p in paths]


def test_untrimmed(ext, scene, seq) -> None:
    strips, _, _ = _mods()
    strip = add_image_strip(scene, seq, start=10)
    frames = strips.visible_frames(strip)
    assert frames == [str(p) for p in seq]
    assert all(os.path.isabs(p) for p in frames)


@pytest.mark.parametrize(
    ("settings", "start", "first", "count"),
    [
        ({"frame_offset_start": 3}, 13, 3, 9),
        ({"frame_offset_end": 4}, 10, 0, 8),
        ({"frame_offset_start": 2, "frame_offset_end": 5}, 12, 2, 5),
        ({"animation_offset_start": 2}, 10, 2, 10),
        ({"animation_offset_start": 2, "animation_offset_end": 3}, 10, 2, 7),
        (
            {
                "animation_offset_start": 2,
                "animation_offset_end": 3,
                "frame_offset_start": 1,
                "frame_offset_end": 1,
            },
            11,
            3,
            5,
        ),
    ],
)
def test_trimmed_and_offset(ext, scene, seq, settings, start, first, count) -> None:
    strips, _, _ = _mods()
    strip = add_image_strip(scene, seq, start=10)
    for name, value in settings.items():
        setattr(strip, name, value)
    assert strip.frame_final_start == start
    frames = strips.visible_frames(strip)
    assert _names(frames) == [p.name for p in seq[first : first + count]]
    shot = strips.read_shot(strip)
    assert shot.start == start and len(shot.frames) == count and shot.end == strip.frame_final_end


def test_moved_and_reversed(ext, scene, seq) -> None:
    strips, _, _ = _mods()
    strip = add_image_strip(scene, seq, start=10)
    strip.frame_offset_start = 1
    strip.frame_offset_end = 2
    strip.frame_start = 40
    assert strip.frame_final_start == 41
    assert _names(strips.visible_frames(strip)) == [p.name for p in seq[1:10]]
    strip.use_reverse_frames = True
    assert _names(strips.visible_frames(strip)) == [p.name for p in reversed(seq[2:11])]


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
        scene, "TF result", str(out), files, src.frame_final_start, src.channel, "sRGB"
    )
    assert strip.channel == 4
    assert (strip.frame_final_start, strip.frame_final_end) == (src.frame_final_start, src.frame_final_end)
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
    assert (color.frame_final_start, color.frame_final_end) == (5, 15)
    ed.active_strip = color
    assert compat.active_strip(bpy.context, scene) == color
    assert compat.scene_of(bpy.context) is not None
