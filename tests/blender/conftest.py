"""Fixtures for the extension's tests inside the real bpy module (Blender 4.2 LTS to 5.2 LTS).

The extension is loaded as a real extension (a local repository plus `addon_utils.enable`) under
a temporary HOME, so user preferences are never touched. Timers never fire in the module, so tests
tick the job controller themselves. The end-to-end tests drive the real engine subprocess from the
engine environment with a tiny random-weight model and real frames; both are prepared by one
background subprocess that starts with the session, while the quick tests run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# A private HOME before bpy is imported: Blender reads its user folders from it.
_HOME = Path(tempfile.mkdtemp(prefix="tokenflow-home-"))
os.environ["HOME"] = str(_HOME)
for _var in (
    "BLENDER_USER_CONFIG",
    "BLENDER_USER_SCRIPTS",
    "BLENDER_USER_RESOURCES",
    "BLENDER_USER_EXTENSIONS",
):
    os.environ.pop(_var, None)
os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for a model hub from a test
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import bpy  # noqa: E402

bpy.context.preferences.use_preferences_save = False  # never write preferences, not even the temporary ones

from .helpers import EXT_ID, MODULE, REPO, ROOT, disable_extension, enable_extension  # noqa: E402


def engine_python() -> Path:
    env = os.environ.get("TOKENFLOW_ENGINE_PYTHON")
    return Path(env) if env else ROOT / ".venvs" / "engine" / "bin" / "python"


# --- assets made by the engine environment (tiny model, real frames), in the background -----
_ASSETS = Path(tempfile.mkdtemp(prefix="tokenflow-assets-"))
_PREPARE = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.clips import clip_path, extract_frames
from engine.model.tiny_model import make_tiny_model
out = Path(sys.argv[2])
extract_frames("cityCC0.mpg", out / "city12", 12, start=40, width=96)
make_tiny_model(out / "tiny")
make_tiny_model(out / "tiny-xl", family="sdxl")
make_tiny_model(out / "tiny-v", family="sd2-v")
print(json.dumps({"movie": str(clip_path("cityCC0.mpg"))}))
"""
_prepare: subprocess.Popen[str] | None = None


def pytest_configure(config: pytest.Config) -> None:
    # Blender 5.2 warns on names that 6.0 removes (frame_final_*, the offsets, ...): the extension's
    # own code (module bl_ext.*) must not use them, so there such a warning fails the test. The
    # tests themselves may still read the older names where a version has nothing else.
    config.addinivalue_line(
        "filterwarnings", r"error:.*expected to be removed in Blender:DeprecationWarning:bl_ext\."
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    global _prepare
    if engine_python().is_file():
        _prepare = subprocess.Popen(
            [str(engine_python()), "-c", _PREPARE, str(ROOT), str(_ASSETS)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _prepare is not None and _prepare.poll() is None:
        _prepare.kill()
    shutil.rmtree(_ASSETS, ignore_errors=True)
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def assets() -> dict[str, Any]:
    """{"frames": [12 PNG paths, 96x54], "model": tiny model folder (and "model_xl", "model_v": its SDXL
    and SD 2.x v-prediction twins), "movie": a real .mpg}."""
    if _prepare is None:
        pytest.skip(f"no engine environment at {engine_python()}: run `bash scripts/setup_env.sh engine`")
    out, err = _prepare.communicate(timeout=300)
    if _prepare.returncode != 0:
        pytest.fail(f"preparing the tiny model and frames failed:\n{err[-3000:]}")
    info = json.loads(out.strip().splitlines()[-1])
    frames = sorted((_ASSETS / "city12").glob("*.png"))
    assert len(frames) == 12
    return {
        "frames": frames,
        "model": _ASSETS / "tiny",
        "model_xl": _ASSETS / "tiny-xl",  # SDXL's layout (engine/model/tiny_model.py)
        "model_v": _ASSETS / "tiny-v",  # SD 2.x's 768 v-prediction layout
        "movie": Path(info["movie"]),
    }


# --- the extension -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def repo_dir() -> Path:
    """A local extension repository holding this checkout as the extension `tokenflow`."""
    repo = _HOME / REPO  # the repository module name is the folder name
    repo.mkdir(exist_ok=True)
    link = repo / EXT_ID
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    return repo


@pytest.fixture(scope="session")
def ext(repo_dir: Path) -> Iterator[Any]:
    """The enabled extension's root module (`bl_ext.tokenflow_tests.tokenflow`)."""
    module = enable_extension(repo_dir)
    os.environ["TOKENFLOW_ENGINE_PYTHON"] = str(engine_python())
    yield module
    if MODULE in sys.modules and MODULE in bpy.context.preferences.addons:
        disable_extension()


@pytest.fixture(autouse=True, scope="module")
def no_warm_engine_between_modules() -> Iterator[None]:
    """Each test module starts without a warm engine: a model and inversions that one module's jobs
    left loaded in memory must not decide another module's figures (cache hits, model loads)."""
    yield
    pkg = sys.modules.get(f"{MODULE}.tokenflow_blender")
    if pkg is not None:
        pkg.runs.warm.shutdown_all()


@pytest.fixture
def tf(ext: Any) -> Any:
    """The extension's Blender package (`tokenflow_blender`), its job state reset."""
    pkg = sys.modules[f"{MODULE}.tokenflow_blender"]
    assert pkg.runs.registry.running("edit") is None, "a previous test left a job running"
    st = bpy.context.window_manager.tokenflow_job
    for name in ("status", "error", "message", "log_path", "output", "result_strip", "stage"):
        setattr(st, name, "IDLE" if name == "status" else "")
    return pkg


@pytest.fixture
def scene(ext: Any) -> Iterator[Any]:
    """A fresh, empty scene, made the window's scene (what operators see as context.scene)."""
    sc = bpy.data.scenes.new(f"test-{time.monotonic_ns()}")
    sc.render.fps = 24
    window = bpy.context.window
    old = window.scene if window else None
    if window:
        window.scene = sc
    yield sc
    if window and old is not None:
        window.scene = old
    bpy.data.scenes.remove(sc)
