"""What the panel says of the chosen model: its family and the working size a run will use (no bpy).

Read with the engine's own detection (engine/model/family.py, standard library only: configs and
safetensors headers, never weights), remembered per path and modification time, since the panel
redraws often. A hub id is described once its configs are in the hub cache (after a first run).
"""

from __future__ import annotations

import os
from functools import lru_cache

from ...engine import errors
from ...engine.model import family


def _stamp(model: str) -> float:
    path = os.path.expanduser(model)
    target = os.path.join(path, "model_index.json") if os.path.isdir(path) else path
    try:
        return os.stat(target).st_mtime
    except OSError:
        return 0.0


@lru_cache(maxsize=32)
def _describe(model: str, stamp: float) -> tuple[str, int, str]:
    try:
        found = family.detect(model)
    except errors.EngineError as exc:
        return "", 0, str(exc)
    if found is None:
        return "", 0, ""
    return found.label, found.native_size, ""


def describe(model: str, size: int) -> tuple[str, str]:
    """(a one-line description, a refusal or "") for the panel, e.g. "SDXL, working size 1024 (native)"."""
    label, native, problem = _describe(model, _stamp(model))
    if problem:
        return "", problem
    if not label:
        return f"Family known after the first run; working size {size or 'native'}", ""
    if size:
        return f"{label} (native {native}), working size {size}", ""
    return f"{label}, working size {native} (native)", ""
