"""scripts/api_changes.py: what two bpy modules' RNA differ in, limited to the names the code uses.

The dump itself needs two Blender environments (the developers' tool, run by hand); the comparison
and the scan of the code are plain Python, tested here on descriptions shaped like the dump's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("api_changes", ROOT / "scripts" / "api_changes.py")
api_changes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api_changes)


def _api(props: dict, funcs: dict, ops: dict, app: list[str]) -> dict:
    return {
        "version": "x",
        "types": {"ImageStrip": {"props": props, "funcs": funcs}},
        "ops": ops,
        "modules": {"app": app, "utils": [], "path": []},
    }


OLD = _api(
    {
        "frame_final_start": {"type": "INT", "readonly": False},
        "blend_type": {"type": "ENUM", "readonly": False, "items": ["ADD", "CROSS"]},
        "channel": {"type": "INT", "readonly": False},
    },
    {"strip_elem_from_frame": [["frame", "INT", True]]},
    {"render.render": ["animation", "write_still"]},
    ["background", "version"],
)
NEW = _api(
    {
        "left_handle": {"type": "INT", "readonly": False},
        "blend_type": {"type": "ENUM", "readonly": False, "items": ["ADD", "OVER"]},
        "channel": {"type": "INT", "readonly": True},
    },
    {"strip_elem_from_frame": [["frame", "INT", True], ["hold", "BOOLEAN", False]]},
    {"render.render": ["animation"]},
    ["version"],
)


def test_every_kind_of_change_is_reported() -> None:
    lines = api_changes.changes(OLD, NEW, None)
    assert "ImageStrip.frame_final_start: removed" in lines
    assert "ImageStrip.left_handle: added" in lines
    assert "ImageStrip.blend_type: items removed ['CROSS']" in lines
    assert "ImageStrip.channel: changed {'readonly': (False, True)}" in lines
    assert "ImageStrip.strip_elem_from_frame(): arguments ['frame'] -> ['frame', 'hold']" in lines
    assert "bpy.ops.render.render: properties removed ['write_still'], added []" in lines
    assert "bpy.app.background: removed" in lines


def test_only_the_names_in_use_are_kept() -> None:
    lines = api_changes.changes(OLD, NEW, {"frame_final_start", "render"})
    assert lines == [
        "ImageStrip.frame_final_start: removed",
        "bpy.ops.render.render: properties removed ['write_still'], added []",
    ]
    assert api_changes.changes(OLD, OLD, None) == []


def test_the_scan_finds_what_the_extension_reads() -> None:
    names = api_changes.used_names(api_changes.CODE)
    assert {"left_handle", "strip_elem_from_frame", "timeline_markers", "render"} <= names
    assert "frame_final_start" in names  # compat.span's fallback for 4.2-5.0
