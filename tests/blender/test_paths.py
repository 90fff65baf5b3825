"""Result and preview strips survive moving the project folder: with Blender's "Default to Relative
Paths" on (its default) and the .blend saved, the extension stores their folders relative to the
.blend ('//...'); with it off, absolute. Each Blender session is its own bpy subprocess (saving and
opening files would change this test session's main file)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from .helpers import MODULE
from .pngs import write_sequence

ADD_RESULTS = """
import json, os, sys
import bpy, addon_utils
bpy.context.preferences.use_preferences_save = False
bpy.ops.preferences.extension_repo_add(
    name={repo!r}, type="LOCAL", custom_directory={repo_dir!r}, use_custom_directory=True
)
addon_utils.enable({module!r}, default_set=True)
jobs = sys.modules[{module!r} + ".tokenflow_blender.jobs"]
apply = sys.modules[{module!r} + ".tokenflow_blender.edit.apply"]
bpy.context.preferences.filepaths.use_relative_paths = {relative!r}
bpy.ops.wm.save_as_mainfile(filepath={blend!r})
scene = bpy.context.scene
names = {{}}
for stage, output in (("propagate", {result!r}), ("preview", {preview!r})):
    files = sorted(os.path.join(output, f) for f in os.listdir(output))
    ctx = {{"scene": scene.name, "source": "shot", "start": 1, "channel": 1, "count": 3,
           "colorspace": "sRGB", "prompt": "snow", "stage": stage}}
    indices = [0, 2] if stage == "preview" else [0, 1, 2]
    done = {{"event": "done", "output": output, "files": files, "indices": indices,
            "keyframes": [0, 2], "stats": {{}}, "metrics": None}}
    apply.apply_result(ctx, done, output)
    names[stage] = jobs.state().result_strip
bpy.ops.wm.save_mainfile()
print("RESULT", json.dumps(names))
"""

REOPEN = """
import json, os
import bpy
bpy.ops.wm.open_mainfile(filepath={blend!r})
ed = bpy.context.scene.sequence_editor
strips = ed.strips_all if hasattr(ed, "strips_all") else ed.sequences_all
found = {{}}
for stage, name in {names!r}.items():
    strip = strips[name]
    folder = bpy.path.abspath(strip.directory)
    found[stage] = {{"directory": strip.directory,
                    "files": [os.path.isfile(os.path.join(folder, e.filename)) for e in strip.elements]}}
print("RESULT", json.dumps(found))
"""


def _blender(script: str, home: Path, **values: Any) -> dict[str, Any]:
    """Run `script` (formatted with `values`) in a fresh bpy process; return what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script.format(**values))],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "HOME": str(home)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _edit_then_move(tmp_path: Path, repo_dir: Path, relative: bool) -> tuple[Path, Path, dict[str, Any]]:
    """Save a project, add a result and a preview through the extension, save, move the project
    folder (copy it elsewhere, delete the original) and reopen it."""
    project = tmp_path / "project"
    result = project / "tokenflow" / "shot-propagate-snow"
    preview = project / "tokenflow" / "shot-preview-snow"
    write_sequence(result, 3, stem="frame")
    write_sequence(preview, 2, stem="frame")
    names = _blender(
        ADD_RESULTS,
        tmp_path / "home",
        repo=repo_dir.name,
        repo_dir=str(repo_dir),
        module=MODULE,
        relative=relative,
        blend=str(project / "edit.blend"),
        result=str(result),
        preview=str(preview),
    )
    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(project, moved)
    shutil.rmtree(project)
    found = _blender(REOPEN, tmp_path / "home", blend=str(moved / "edit.blend"), names=names)
    return project, moved, found


def test_results_survive_moving_the_project(ext: Any, repo_dir: Path, tmp_path: Path) -> None:
    _, _, found = _edit_then_move(tmp_path, repo_dir, relative=True)
    assert found["propagate"]["directory"] == "//tokenflow/shot-propagate-snow/"
    assert found["preview"]["directory"] == "//tokenflow/shot-preview-snow/"
    for stage in ("propagate", "preview"):
        assert found[stage]["files"] and all(found[stage]["files"]), found


def test_paths_stay_absolute_when_the_preference_is_off(ext: Any, repo_dir: Path, tmp_path: Path) -> None:
    project, _, found = _edit_then_move(tmp_path, repo_dir, relative=False)
    assert found["propagate"]["directory"] == str(project / "tokenflow" / "shot-propagate-snow") + os.sep
    assert found["preview"]["directory"] == str(project / "tokenflow" / "shot-preview-snow") + os.sep
    assert not any(found["propagate"]["files"])  # the absolute path points where the project was


def test_output_folder_says_it_takes_blend_relative_paths(ext: Any) -> None:
    """Where the API has the flag (4.5+), the Output property carries it (else 4.5+ warns about '//');
    where it has none (4.2), registering did not fail for lack of it."""
    import bpy

    prop = bpy.types.Scene.bl_rna.properties["tokenflow"].fixed_type.bl_rna.properties["output_dir"]
    if "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties:
        assert prop.is_path_supports_blend_relative
    else:
        assert bpy.app.version < (4, 5, 0)  # the one version without the flag
    assert prop.subtype == "DIR_PATH"
