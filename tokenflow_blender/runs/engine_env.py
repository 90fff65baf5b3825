"""The engine's Python environment: where it is, how to start it, how to install it (no bpy).

Blender's own Python never gets torch: the engine runs from a separate virtual environment that
"Install engine" creates with pip in the extension's user folder (or any Python the user points
the preferences at). Everything here takes plain paths so that tests can drive it.
"""

from __future__ import annotations

import os
import sys

from .task import Step

ENV_PYTHON = "TOKENFLOW_ENGINE_PYTHON"  # overrides the default when the preference is empty
VENV_FOLDER = "engine-venv"

NOT_INSTALLED = (
    "The engine is not installed: open Preferences > Add-ons > TokenFlow and press 'Install engine', "
    "or set 'Engine Python' to a Python that has torch and diffusers"
)


def extension_root() -> str:
    """The folder that holds `engine/` (the extension root): the engine's working directory."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def venv_python(venv: str) -> str:
    if sys.platform == "win32":
        return os.path.join(venv, "Scripts", "python.exe")
    return os.path.join(venv, "bin", "python")


def resolve_python(preference: str, managed_venv: str) -> str:
    """The engine's interpreter: the preference if set, else $TOKENFLOW_ENGINE_PYTHON, else the
    extension's own environment. The path may not exist yet; see :func:`check_python`."""
    if preference.strip():
        return os.path.abspath(os.path.expanduser(preference.strip()))
    env = os.environ.get(ENV_PYTHON, "").strip()
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return venv_python(managed_venv)


def check_python(python: str) -> str:
    """An empty string when `python` can be started, else the message that says how to fix it."""
    if not os.path.isfile(python):
        return f"{NOT_INSTALLED} (no Python at {python})"
    if not os.access(python, os.X_OK):
        return f"{python} is not executable; point 'Engine Python' at the engine environment's python"
    return ""


def engine_env(root: str, online: bool) -> dict[str, str]:
    """The child's environment: the extension root importable, unbuffered, offline when Blender is."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONNOUSERSITE"] = "1"  # the user's site-packages must not shadow the engine's
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not online:  # Blender's "Allow Online Access" is off: never reach for the model hub
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def engine_argv(python: str, *args: str) -> list[str]:
    return [python, "-m", "engine", *args]


def install_steps(base_python: str, venv: str, requirements: str, torch_index_url: str = "") -> list[Step]:
    """Create the engine environment with pip: venv, pip, torch (optionally from a PyTorch index
    for a given CUDA / ROCm build), the engine's requirements, then `engine check` to prove it."""
    python = venv_python(venv)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    torch = [*pip, "torch"]
    if torch_index_url.strip():
        torch += ["--index-url", torch_index_url.strip()]
    return [
        Step("Creating environment", [base_python, "-m", "venv", venv], 0.05),
        Step("Updating pip", [*pip, "--upgrade", "pip"], 0.05),
        Step("Installing torch", torch, 0.55),
        Step("Installing diffusers", [*pip, "-r", requirements], 0.3),
        Step("Checking engine", engine_argv(python, "check"), 0.05),
    ]


def base_python() -> str:
    """Blender's own interpreter, used only to create the engine's virtual environment."""
    return sys.executable
