"""Talking to the caller: JSON-line events on stdout, cancellation from signals or stdin, progress."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, TextIO

from . import protocol
from .errors import Cancelled


class Emitter:
    """Writes protocol events to a stream, one JSON object a line, flushed at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.sent: list[dict[str, Any]] = []  # what was emitted, for callers that run in-process

    def __call__(self, event: str, **payload: Any) -> None:
        line = protocol.event_line(event, **payload)
        with self.lock:
            self.sent.append({"event": event, **payload})
            self.stream.write(line + "\n")
            self.stream.flush()


class CancelToken:
    """Set by SIGTERM / SIGINT or a `cancel` line on stdin; checked between UNet calls."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def cancel(self) -> None:
        self.event.set()

    def check(self) -> None:
        if self.event.is_set():
            raise Cancelled("cancelled by request; nothing was written")

    def listen(self, stdin: bool = True) -> None:
        """Install signal handlers (main thread only) and, if asked, a stdin reader thread."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.cancel())
        if stdin and sys.stdin is not None and not sys.stdin.closed:
            threading.Thread(target=self._read_stdin, name="cancel-listener", daemon=True).start()

    def _read_stdin(self) -> None:
        try:
            for line in sys.stdin:
                if line.strip().lower() == protocol.CANCEL_LINE:
                    self.cancel()
                    return
        except (OSError, ValueError):
            return


class Progress:
    """Counts UNet frame evaluations per stage and estimates the time left from their rate."""

    def __init__(self, emit: Emitter) -> None:
        self.emit = emit
        self.start = time.monotonic()
        self.planned: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.compute_start: float | None = None

    def plan(self, stage: str, frames: int) -> None:
        self.planned[stage] = self.planned.get(stage, 0) + frames
        self.done.setdefault(stage, 0)
        if self.compute_start is None:
            self.compute_start = time.monotonic()

    def stage(self, stage: str, step: int = 0, total: int = 1) -> None:
        """Announce a stage that is not counted in UNet frames (loading, decoding, writing)."""
        self.emit(
            protocol.EVENT_PROGRESS,
            stage=stage,
            step=step,
            total=total,
            elapsed=round(time.monotonic() - self.start, 2),
            eta=None,
        )

    def advance(self, stage: str, frames: int) -> None:
        now = time.monotonic()
        if self.compute_start is None:
            self.compute_start = now
        self.done[stage] = self.done.get(stage, 0) + frames
        done_all = sum(self.done.values())
        left = sum(self.planned.values()) - done_all
        rate = (now - self.compute_start) / max(done_all, 1)
        self.emit(
            protocol.EVENT_PROGRESS,
            stage=stage,
            step=self.done[stage],
            total=max(self.planned.get(stage, 0), self.done[stage]),
            elapsed=round(now - self.start, 2),
            eta=round(max(left, 0) * rate, 2),
        )
