"""The extension as Blender sees it: manifest, validator, build, register / unregister, no ML imports."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import bpy
import pytest
import tomllib

from .helpers import MODULE, ROOT, disable_extension, enable_extension

OPERATORS = (
    "sequencer.tokenflow_preview",
    "sequencer.tokenflow_propagate",
    "sequencer.tokenflow_cancel",
    "sequencer.tokenflow_show_log",
    "preferences.tokenflow_install_engine",
    "preferences.tokenflow_check_engine",
)


def _ext_cli() -> tuple[Path, Path]:
    scripts = Path(bpy.utils.system_resource("SCRIPTS"))
    cli = scripts / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    tags = scripts / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    assert cli.is_file(), cli
    return cli, tags


def _op_exists(idname: str) -> bool:
    group, name = idname.split(".")
    try:
        getattr(getattr(bpy.ops, group), name).get_rna_type()
    except KeyError:
        return False
    return True


def test_manifest_keys() -> None:
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text())
    assert manifest["id"] == "tokenflow"
    assert manifest["blender_version_min"] == "4.2.0"
    assert manifest["type"] == "add-on"
    assert "Sequencer" in manifest["tags"]
    assert set(manifest["permissions"]) == {"files", "network"}
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    excluded = manifest["build"]["paths_exclude_pattern"]
    for folder in ("/tests/", "/bench/", "/scripts/"):
        assert folder in excluded
    assert len(manifest["tagline"]) <= 64 and manifest["tagline"][-1].isalnum()


def test_validator_accepts_manifest() -> None:
    cli, tags = _ext_cli()
    done = subprocess.run(
        [sys.executable, str(cli), "validate", str(ROOT), "--valid-tags", str(tags)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_build_ships_engine_not_tests(tmp_path: Path) -> None:
    cli, tags = _ext_cli()
    done = subprocess.run(
        [
            sys.executable,
            str(cli),
            "build",
            "--source-dir",
            str(ROOT),
            "--output-dir",
            str(tmp_path),
            "--valid-tags",
            str(tags),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (archive,) = tmp_path.glob("*.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert "engine/protocol.py" in names and "engine/__main__.py" in names
    assert "engine/requirements.txt" in names
    assert "tokenflow_blender/runs/task.py" in names and "ui/panels.py" in names
    assert "farm/flamenco/tokenflow-video-edit.js" in names  # the Manager's job type, for the farm
    for prefix in ("tests/", "bench/", "scripts/", ".venvs/", ".ci/", ".git/"):
        assert not any(n.startswith(prefix) for n in names), prefix
    assert not any("__pycache__" in n for n in names)


def test_registered(ext) -> None:
    assert MODULE in bpy.context.preferences.addons
    for idname in OPERATORS:
        assert _op_exists(idname), idname
    assert hasattr(bpy.types, "SEQUENCER_PT_tokenflow")
    assert hasattr(bpy.types.Scene, "tokenflow")
    assert hasattr(bpy.types.WindowManager, "tokenflow_job")
    prefs = bpy.context.preferences.addons[MODULE].preferences
    assert prefs.default_model and prefs.device == "auto"
    panel = bpy.types.SEQUENCER_PT_tokenflow
    assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == (
        "SEQUENCE_EDITOR",
        "UI",
        "TokenFlow",
    )


def test_user_folders_outside_extension(ext) -> None:
    pkg = sys.modules[f"{MODULE}.tokenflow_blender"]
    cache = pkg.settings.preferences.cache_dir()
    assert os.path.isdir(cache)
    assert not cache.startswith(str(ROOT))
    assert os.environ["HOME"] in cache


def test_unregister_and_register_again(ext, repo_dir) -> None:
    disable_extension()
    assert MODULE not in bpy.context.preferences.addons
    for idname in OPERATORS:
        assert not _op_exists(idname), idname
    assert not hasattr(bpy.types, "SEQUENCER_PT_tokenflow")
    assert not hasattr(bpy.types.Scene, "tokenflow")
    enable_extension(repo_dir)
    for idname in OPERATORS:
        assert _op_exists(idname), idname
    assert hasattr(bpy.types.Scene, "tokenflow")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", ["tokenflow_blender", "ui"])
def test_blender_side_never_imports_ml_stack(folder: str) -> None:
    files = list((ROOT / folder).rglob("*.py"))
    assert files
    for path in files:
        bad = _imports(path) & {"torch", "diffusers", "numpy", "transformers", "cv2", "PIL"}
        assert not bad, f"{path.name} imports {bad}"
    root_init = _imports(ROOT / "__init__.py")
    assert not root_init & {"torch", "numpy"}
