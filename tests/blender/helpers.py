"""Helpers for the extension's tests (imported after conftest has set HOME and loaded bpy)."""

from __future__ import annotations

import array
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import addon_utils
import bpy
import pytest

from . import strip_time

ROOT = Path(__file__).resolve().parents[2]
EXT_ID = "tokenflow"
REPO = "tokenflow_tests"  # the local repository (its folder name is its module name)
MODULE = f"bl_ext.{REPO}.{EXT_ID}"


def enable_extension(repo: Path) -> Any:
    if not any(r.module == REPO for r in bpy.context.preferences.extensions.repos):
        bpy.ops.preferences.extension_repo_add(
            name=REPO, type="LOCAL", custom_directory=str(repo), use_custom_directory=True
        )
    addon_utils.enable(MODULE, default_set=True, handle_error=_raise)
    return sys.modules[MODULE]


def disable_extension() -> None:
    addon_utils.disable(MODULE, default_set=True, handle_error=_raise)


def _raise(exc: BaseException) -> None:
    raise exc


def run_op(name: str, scene: Any, **kwargs: Any) -> set[str]:
    """Call `bpy.ops.sequencer.<name>` with `scene` as the context's scene."""
    group, op = name.split(".")
    with bpy.context.temp_override(scene=scene):
        return getattr(getattr(bpy.ops, group), op)(**kwargs)


# --- scene helpers -------------------------------------------------------------------------------
def strips_of(scene: Any) -> Any:
    ed = scene.sequence_editor
    if ed is None:
        return []
    return list(ed.strips_all if hasattr(ed, "strips_all") else ed.sequences_all)


def add_image_strip(
    scene: Any, frames: list[Path], channel: int = 2, start: int = 1, name: str = "shot"
) -> Any:
    ed = scene.sequence_editor or scene.sequence_editor_create()
    coll = ed.strips if hasattr(ed, "strips") else ed.sequences
    strip = coll.new_image(name, str(frames[0]), channel, start)
    for f in frames[1:]:
        strip.elements.append(f.name)
    strip.colorspace_settings.name = "sRGB"
    ed.active_strip = strip
    return strip


def snapshot(scene: Any) -> dict[str, Any]:
    """Strips (name, channel, range, files) and markers: to check that nothing changed."""
    return {
        "strips": sorted((s.name, s.channel, *strip_time.span(s), s.type) for s in strips_of(scene)),
        "markers": sorted((m.name, m.frame) for m in scene.timeline_markers),
    }


def raw_pixels(path: str) -> tuple[int, int, array.array]:
    """Raw pixel values of a file (RGBA floats, rows bottom-up), read without colour conversion."""
    img = bpy.data.images.load(path)
    try:
        img.colorspace_settings.name = "Non-Color"
        width, height = img.size[0], img.size[1]
        buf = array.array("f", [0.0]) * (width * height * 4)
        img.pixels.foreach_get(buf)
        return width, height, buf
    finally:
        bpy.data.images.remove(img)


def digest(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def wait(pkg: Any, slot: str = "edit", timeout: float = 240.0) -> Any:
    """Tick the job controller until the task in `slot` ends (what the timer does in the UI)."""
    task = pkg.runs.registry.get(slot)
    assert task is not None
    end = time.monotonic() + timeout
    while pkg.jobs.tick() or task.running:
        if time.monotonic() > end:
            task.shutdown(2.0)
            pytest.fail(f"the {slot} task did not finish in {timeout} s; log:\n{task.log_tail(40)}")
        time.sleep(0.05)
    return task


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie still answers kill(0); it is gone if /proc says so.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
