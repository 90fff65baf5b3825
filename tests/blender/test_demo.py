"""scripts/demo.py, the README's main job, run as a user runs it (a bpy subprocess, the real engine,
a tiny shot): its output is lines a person reads, and a failed run (a model that cannot be loaded)
exits non-zero with the engine's message and leaves the last good .blend and contact sheet as
they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import engine_python
from .helpers import ROOT, digest

DEMO = ROOT / "scripts" / "demo.py"
# The smallest shot that still has keyframes and propagated frames.
SMALL = ["--frames", "3", "--width", "64", "--size", "64", "--steps", "2", "--stride", "2"]


def _demo(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO), "--out", str(out), *SMALL, "--device", "cpu", "--offline", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TOKENFLOW_ENGINE_PYTHON": str(engine_python())},
    )


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def good_demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A successful demo run with the tiny model it builds itself (as `bash scripts/demo.sh` does)."""
    if not engine_python().is_file():
        pytest.fail(f"no engine environment at {engine_python()}")
    root = tmp_path_factory.mktemp("demo")
    out = root / "out"
    done = _demo(out, "--tiny-model", str(root / "tiny-model"))
    return {"out": out, "done": done}


def test_demo_prints_only_lines_for_people(good_demo: dict[str, Any]) -> None:
    done, out = good_demo["done"], good_demo["out"]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (out / "tokenflow_demo.blend").is_file() and (out / "contact_sheet.png").is_file()
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert any("tiny random-weight model" in line for line in lines)
    assert not [line for line in lines if _is_json(line)], done.stdout


def test_failed_demo_keeps_the_last_good_one(good_demo: dict[str, Any], tmp_path: Path) -> None:
    out = good_demo["out"]
    assert good_demo["done"].returncode == 0, good_demo["done"].stderr[-3000:]
    kept = [out / "tokenflow_demo.blend", out / "contact_sheet.png"]
    before = digest(kept)
    results = sorted(p.name for p in (out / "tokenflow").iterdir())

    done = _demo(out, "--model", str(tmp_path / "no-such-model"))
    assert done.returncode != 0
    assert "no-such-model" in done.stderr, done.stderr[-3000:]  # the engine's message, for a person
    assert digest(kept) == before, "a failed demo replaced the last good .blend or contact sheet"
    assert sorted(p.name for p in (out / "tokenflow").iterdir()) == results
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "the run's own files remained"
