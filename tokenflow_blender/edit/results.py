"""The last result the extension added, as public read-only state for scripts and pipeline tools.

`window_manager.tokenflow_job.last_result` shows it as JSON (a read-only property); the value
lives here, in plain Python, so it is never saved in a .blend and tests read it without a UI.
It is the engine's `done` event of the last Preview/Propagate whose strip was added (for a farm
job, the same fields read from the merged result): `output`, `files`, `indices`, `keyframes`,
`stats`, `metrics`. The durable record of every result is its folder's `tokenflow.json`
manifest, written by the engine with the frames (:func:`read_manifest`).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from ...engine import protocol

_last: dict[str, Any] | None = None


def record(done: dict[str, Any]) -> None:
    """Remember `done` as the last result (a copy: later changes to the caller's dict stay out)."""
    global _last
    _last = copy.deepcopy(done)


def clear() -> None:
    """Forget the last result: a new run started, so it would describe an older one."""
    global _last
    _last = None


def last() -> dict[str, Any] | None:
    """The last result's `done` event (a copy), or None."""
    return copy.deepcopy(_last)


def last_json() -> str:
    """The last result as a JSON string, or '' (what `tokenflow_job.last_result` shows)."""
    return json.dumps(_last, sort_keys=True) if _last is not None else ""


def read_manifest(folder: str) -> dict[str, Any]:
    """The `tokenflow.json` manifest of a result folder: files, indices, keyframes, sources, the job,
    stats and metrics. Raises OSError or ValueError when it is missing or unreadable."""
    with open(os.path.join(folder, protocol.MANIFEST), encoding="utf-8") as fh:
        return json.load(fh)
