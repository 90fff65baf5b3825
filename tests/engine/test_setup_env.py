"""The environment setup refuses a disk that cannot hold the environment, before any download.

CI once failed 83 s in with pip's ``OSError: [Errno 28] No space left on device`` half-way through
installing bpy, which leaves a broken venv and an error far from its cause.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _copy_of_setup(tmp_path: Path) -> Path:
    """A project root holding only what setup_env.sh reads, so the test never touches real venvs."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "engine").mkdir()
    shutil.copy(ROOT / "scripts" / "setup_env.sh", tmp_path / "scripts" / "setup_env.sh")
    shutil.copy(ROOT / "engine" / "requirements.txt", tmp_path / "engine" / "requirements.txt")
    return tmp_path


def _run(root: Path, need_mb: int) -> subprocess.CompletedProcess[str]:
    # A stand-in interpreter that only says it was asked for a venv, so nothing is ever installed.
    fake = root / "fake-python"
    fake.write_text('#!/bin/sh\necho "fake python asked for: $*" >&2\nexit 1\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "TOKENFLOW_ENV_NEED_MB": str(need_mb), "PYTHON": str(fake)}
    return subprocess.run(
        ["bash", "scripts/setup_env.sh", "bpy-4.2"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_full_disk_is_refused_before_any_venv_is_made(tmp_path: Path) -> None:
    root = _copy_of_setup(tmp_path)
    result = _run(root, need_mb=10**9)
    assert result.returncode == 3, result.stderr
    assert "not enough disk space" in result.stderr
    assert "MB free, about 1000000000 MB needed" in result.stderr
    assert "Free space" in result.stderr
    assert "fake python" not in result.stderr
    assert not (root / ".venvs" / "bpy-4.2").exists()


def test_enough_disk_goes_on_to_make_the_venv(tmp_path: Path) -> None:
    # With room, the script passes the check and reaches venv creation (the stand-in refuses it).
    root = _copy_of_setup(tmp_path)
    result = _run(root, need_mb=1)
    assert "not enough disk space" not in result.stderr
    assert result.returncode != 3
    assert "fake python asked for: -m venv" in result.stderr
