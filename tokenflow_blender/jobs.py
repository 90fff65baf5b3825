"""The script surface: what a Python script (or a test) calls to follow the job it started.

A script starts a Preview or Propagate with its operator (`bpy.ops.sequencer.tokenflow_preview()`),
then :func:`wait` for it. Timers never fire in the bpy module, nor in `blender -b --python` while
the script runs, so :func:`wait` (or :func:`tick` in a loop of the script's own) moves the job on:
the same code path as Blender's timer. :func:`state` is `window_manager.tokenflow_job`, the job's
public state. The results themselves are in :mod:`.edit.results` (`last`, `read_manifest`) and the
takes in :mod:`.takes.manifest` (`scan`) and :mod:`.takes.listing` (`refresh`, `selected`, ...).
"""

from __future__ import annotations

import time
from typing import Any

from . import session
from .runs import registry
from .runs.task import wait as wait_for


def state() -> Any:
    """`window_manager.tokenflow_job`: status (IDLE, RUNNING, DONE, ERROR, CANCELLED), stage,
    progress, message, error, output, result_strip, quality, log_path, last_result."""
    return session.state()


def tick() -> bool:
    """One round of the timer: tick every task (and reap warm engines that were asked to exit);
    True while any runs."""
    return session.tick()


def cancel(slot: str = session.SLOT_EDIT) -> bool:
    task = registry.running(slot)
    if task is None:
        return False
    task.cancel()
    if slot == session.SLOT_EDIT:
        session.show_progress(task)
    return True


def wait(timeout: float | None = None, interval: float = 0.1) -> str:
    """Block until the Preview/Propagate ends and return its status (DONE, ERROR, CANCELLED).

    For scripts: timers never fire in the bpy module, nor in `blender -b --python` while the script
    runs, so this ticks the job itself. After `timeout` seconds the job is cancelled.
    """
    end = None if timeout is None else time.monotonic() + timeout
    while registry.running(session.SLOT_EDIT) is not None:
        tick()
        if end is not None and time.monotonic() > end:
            cancel()
            wait_for(registry.get(session.SLOT_EDIT), 30.0)
            break
        time.sleep(interval)
    return state().status
