"""Errors the engine reports to its caller as an `error` event with a kind and a fixable message.

The one error hierarchy of the engine: every kind is an :class:`EngineError` (a job that fails
validation, :class:`engine.protocol.JobError`, is a :class:`BadInput`). Standard library only and
importing nothing of the engine, so that :mod:`engine.protocol` can build on it.
"""

from __future__ import annotations


class EngineError(Exception):
    """An error with a kind from protocol.EXIT_CODES and a message a person can act on."""

    kind = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(EngineError):
    kind = "bad_input"


class ModelError(EngineError):
    kind = "model"


class OutOfMemory(EngineError):
    kind = "out_of_memory"


class DiskError(EngineError):
    """The output (or cache) storage cannot take the result: read-only, full, or failing."""

    kind = "disk"


class Cancelled(EngineError):
    kind = "cancelled"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA / MPS / CPU allocation failures, which torch raises under several types."""
    text = str(exc).lower()
    return (
        type(exc).__name__ == "OutOfMemoryError"
        or "out of memory" in text
        or ("can't allocate memory" in text or "failed to allocate" in text)
    )
