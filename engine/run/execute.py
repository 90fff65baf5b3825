"""Run one job of either kind, report it as events and return the exit code.

Beside both run kinds (:class:`~.runner.Run`, :class:`~.variations.VariationRun`), so that neither
imports the other's caller: `variations` builds on `runner`, and only this module knows both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import protocol
from ..errors import EngineError, OutOfMemory, is_out_of_memory
from ..model.loading import Model
from . import preflight
from .events import CancelToken, Emitter
from .outputs import withdraw
from .runner import Run
from .variations import VariationRun

log = logging.getLogger(__name__)


def execute(
    job: protocol.Job,
    emit: Emitter,
    cancel: CancelToken,
    model: Model | None = None,
    loader: Callable[[protocol.Job], Model] | None = None,
    inversions: Any = None,
    ready: preflight.Ready | None = None,
) -> int:
    """Run a job, report it as events, and return the process exit code.

    `ready` is the result of :func:`preflight.check` when the caller ran it already (the command
    line does, before importing this module); otherwise the run checks the job itself. `loader`
    and `inversions` are the warm engine's (engine/serve.py): its loaded model and memory cache.
    """
    started = time.monotonic()
    try:
        run_class = VariationRun if job.variations else Run  # variations share one load and inversion
        done = run_class(job, emit, cancel, model, loader, inversions, ready).execute()
    except EngineError as exc:
        if exc.kind == "cancelled":
            emit(protocol.EVENT_CANCELLED, message=exc.message)
        else:
            emit(protocol.EVENT_ERROR, kind=exc.kind, message=exc.message)
        return protocol.EXIT_CODES[exc.kind]
    except Exception as exc:
        if is_out_of_memory(exc):
            err = OutOfMemory(
                f"out of memory ({exc.__class__.__name__}); lower the chunk size (now {job.chunk_size}), "
                f"the working size (now {job.size}) or raise the keyframe stride (now {job.keyframe_stride})"
            )
            emit(protocol.EVENT_ERROR, kind=err.kind, message=err.message)
            return protocol.EXIT_OUT_OF_MEMORY
        log.exception("internal error")
        emit(protocol.EVENT_ERROR, kind="internal", message=f"{exc.__class__.__name__}: {exc}")
        return protocol.EXIT_INTERNAL
    done["seconds"] = round(time.monotonic() - started, 2)
    emit(protocol.EVENT_DONE, **done)
    if getattr(emit, "broken", False) and done.get("output"):
        # Nobody heard `done` (stdout closed): a result folder must never exist without it.
        withdraw(Path(done["output"]))
        log.warning("stdout is closed, so the result could not be announced; it was removed")
        return protocol.EXIT_CANCELLED
    return protocol.EXIT_OK
