"""Talking to the caller: JSON-line events on stdout, cancellation from signals or stdin, progress."""

from __future__ import annotations

import _thread
import array
import contextlib
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .. import protocol
from ..errors import Cancelled

log = logging.getLogger(__name__)


class Emitter:
    """Writes protocol events to a stream, one JSON object a line, flushed at once.

    A stream that can no longer be written (its reader is gone: EPIPE, a closed file) marks the
    emitter `broken` and calls `on_broken` once (the command line cancels the run: nobody would
    hear its result); later events are dropped rather than raising in the middle of the work.
    """

    def __init__(self, stream: TextIO | None = None, on_broken: Callable[[], None] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.sent: list[dict[str, Any]] = []  # what was emitted, for callers that run in-process
        self.on_broken = on_broken
        self.broken = False

    def __call__(self, event: str, **payload: Any) -> None:
        line = protocol.event_line(event, **payload)
        with self.lock:
            self.sent.append({"event": event, **payload})
            if self.broken:
                return
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError) as exc:  # EPIPE / a full disk / a closed stream
                self._break(exc)

    def _break(self, exc: BaseException) -> None:
        self.broken = True
        log.warning("cannot write events any more (%s): stopping the run", exc)
        if self.stream is sys.stdout:
            _silence_stdout()
        if self.on_broken:
            self.on_broken()


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so that Python's exit-time flush of stdout does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def stdin_is_lifeline() -> bool:
    """True if stdin is a pipe or socket with a writer: its end (EOF) then means the caller's
    process is gone (a crashed or killed Blender closes its end of the pipe by dying).

    EOF on /dev/null, a regular file or a terminal means nothing (farm workers, CI, shells), and
    neither does a pipe that was already closed when the engine started (a harness that gives no
    input): only a writer that goes away while the engine runs is a caller that died."""
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return False
    return not _closed_already(fd)


def _closed_already(fd: int) -> bool:
    """A pipe at EOF now: readable at once with no bytes waiting (POSIX; elsewhere assume open)."""
    try:
        import fcntl
        import select
        import termios

        readable, _, _ = select.select([fd], [], [], 0)
        if not readable:
            return False
        waiting = array.array("i", [0])
        fcntl.ioctl(fd, termios.FIONREAD, waiting, True)
        return waiting[0] == 0
    except (ImportError, OSError, ValueError):
        return False


class _Interrupted(BaseException):
    """Raised by a cancel inside :meth:`CancelToken.interruptible`; a BaseException (as
    KeyboardInterrupt) so that the `except Exception` fallbacks of model loaders do not swallow it."""


class CancelToken:
    """Set by SIGTERM / SIGINT, a `cancel` line on stdin, or the caller's end of stdin closing;
    checked between UNet calls. Inside :meth:`interruptible` (imports, model loading: long
    stretches without checks) a cancel interrupts the main thread at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = "cancelled by request; nothing was written"
        self._interruptible = 0
        self._signals = False

    def cancel(self, reason: str = "") -> None:
        if reason and not self.event.is_set():
            self.reason = reason
        self.event.set()
        if (
            self._interruptible
            and self._signals
            and threading.current_thread() is not threading.main_thread()
        ):
            _thread.interrupt_main(signal.SIGTERM)  # runs _on_signal in the main thread

    def check(self) -> None:
        if self.event.is_set():
            raise Cancelled(self.reason)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self.check()
        self._interruptible += 1
        try:
            yield
        except _Interrupted:
            raise Cancelled(self.reason) from None
        finally:
            self._interruptible -= 1
        self.check()

    def _on_signal(self, *_: Any) -> None:
        self.cancel()
        if self._interruptible:  # the main thread is inside an interruptible stretch
            raise _Interrupted()

    def listen(self, stdin: bool = True) -> None:
        """Install signal handlers (main thread only) and, if asked, a stdin reader thread."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._signals = True
        if stdin and sys.stdin is not None and not sys.stdin.closed:
            lifeline = stdin_is_lifeline()
            threading.Thread(
                target=self._read_stdin, args=(lifeline,), name="cancel-listener", daemon=True
            ).start()

    def _read_stdin(self, lifeline: bool) -> None:
        try:
            for line in sys.stdin:
                if line.strip().lower() == protocol.CANCEL_LINE:
                    self.cancel()
                    return
        except (OSError, ValueError):
            pass
        if lifeline:
            self.cancel(CALLER_GONE)


CALLER_GONE = (
    "stopped: the engine's stdin closed, so the process that started it (e.g. Blender) is gone; "
    "nothing was written"
)


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
