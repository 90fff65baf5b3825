"""The warm engine from Blender's side: one `python -m engine serve` kept between jobs (no bpy).

A one-shot engine run imports torch and loads the model before its first UNet call; for a prompt
tweak that fixed cost is most of the wait. A :class:`WarmEngine` is one long-lived engine process:
job lines go to its stdin, its stdout goes to a file read incrementally (a :class:`.process.Child`,
as for :class:`.task.ProcessTask`), and each job is a :class:`WarmJob`, a ProcessTask with the
same public surface, so the panel's progress and result code serves both.

Lifetime: one engine per Blender session (the model switch happens inside the engine). It exits
on "Unload Model" (an `unload` line), when Blender quits (atexit: stdin closed, then a kill),
when the extension is disabled, after its idle timeout (the engine's own clock), and when
Blender crashes (the engine reads the end of its stdin pipe). Its PID file lets the next start
reap an engine that survived anyway (:func:`.process.reap_stale`). Cancel stops the job, not the
process; an engine that does not answer a cancel in time is killed. A crash ends the job it was
running as an error (reported once, with the log's last line) and the next job starts a fresh engine.
"""

from __future__ import annotations

import time
from typing import Any

from ...engine import protocol
from . import process
from .task import CANCELLED, DONE, ERROR, ProcessTask

CRASH = "crash"  # the error kind of a job whose engine died under it
_TERMINAL = (protocol.EVENT_DONE, protocol.EVENT_ERROR, protocol.EVENT_CANCELLED)


class WarmEngine:
    """One engine process in `serve` mode, fed job lines, its events dispatched to the current job."""

    def __init__(
        self, argv: list[str], cwd: str | None, env: dict[str, str] | None, log_dir: str, pid_dir: str = ""
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.pid_dir = pid_dir
        self.stdout_path, self.log_path = process.log_paths(log_dir, "engine", self)
        self.job: WarmJob | None = None
        self.ready: dict[str, Any] | None = None  # the last `ready` event
        self.returncode: int | None = None
        self._child = process.Child(self.stdout_path, self.log_path, pid_dir)

    # -- the process -----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def alive(self) -> bool:
        return self._child.alive

    def start(self) -> None:
        """Start the process (raises OSError when the interpreter cannot start)."""
        self._child.spawn(self.argv, self.cwd, self.env)

    def send(self, line: str) -> bool:
        """Write one line to the engine's stdin; False if the engine is not there to read it."""
        return self._child.send(line)

    def submit(self, job: WarmJob, line: str) -> None:
        """Give the engine a job; an engine that is gone is replaced by a fresh one first."""
        if not self.alive:
            self.start()
        self.job = job
        if not self.send(line):  # died since the last look: report it on this job
            self.tick()

    def close_stdin(self) -> None:
        """The end of stdin: the engine cancels a running job and exits (as when Blender dies)."""
        self._child.close_stdin()

    def unload(self) -> None:
        """Ask the engine to exit, freeing the model's memory (it cancels a running job first)."""
        self.send(protocol.UNLOAD_LINE)
        self.close_stdin()

    def kill(self) -> None:
        self._child.kill()

    def shutdown(self, timeout: float = 3.0) -> None:
        """End the engine now: end of stdin (it cancels and cleans), a short wait, then a kill."""
        if self._child.proc is None:
            return
        self.close_stdin()
        end = time.monotonic() + timeout
        while self.alive and time.monotonic() < end:
            self.tick()
            time.sleep(0.05)
        self.kill()
        self.tick()

    # -- output ------------------------------------------------------------------------------------
    def tick(self) -> bool:
        """Read new events, hand them to the job, notice an exit. True while the process lives."""
        if self._child.proc is None:
            return False
        self._read()
        code = self._child.poll()
        if code is not None and self.returncode is None:
            self._read(final=True)
            self._exited(code)
        return self.alive

    def _read(self, final: bool = False) -> None:
        for line in self._child.read_lines(final):
            self._on_line(line)

    def _on_line(self, line: str) -> None:
        event = protocol.parse_event(line)
        if event is not None and event["event"] == protocol.EVENT_READY:
            self.ready = event
            job = self.job
            # The engine's first `ready` (after starting) can come before the job's events.
            if job is not None and any(e["event"] in _TERMINAL for e in job.events):
                self.job = None
                job.finished_by_engine()
            return
        if self.job is not None:
            self.job.handle_line(line)

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._child.remove_pid_file()
        self._child.close_reader()
        self.close_stdin()
        job, self.job = self.job, None
        if job is not None:
            job.engine_died(code)

    def log_tail(self, lines: int = 20) -> str:
        return self._child.log_tail(lines)


class WarmJob(ProcessTask):
    """One job on a :class:`WarmEngine`, with a ProcessTask's public surface (progress, cancel...)."""

    def __init__(self, engine: WarmEngine, line: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self.line = line
        self.log_path = engine.log_path  # "Show Log" shows the engine's log
        self.stdout_path = engine.stdout_path

    @property
    def pid(self) -> int | None:  # type: ignore[override]
        """The engine's pid once the job was sent to it (none while a matte is still rendering)."""
        return self.engine.pid if self._index >= 0 else None

    def start(self) -> WarmJob:
        super().start()  # a preparation (matte frames to render) runs first, in tick()
        return self

    def _next_step(self) -> None:
        """Send the job line to the warm engine, where a one-shot task would start a process."""
        self._index = 0
        self.stage = self.steps[0].label
        try:
            self.engine.submit(self, self.line)
        except OSError as exc:
            self._finish(ERROR, f"cannot start {self.engine.argv[0]}: {exc.strerror or exc}", kind="start")

    def _tick_child(self) -> None:
        """The engine's new events come to this job through the engine's own tick."""
        self.engine.tick()
        if self.running and self._cancel_at is not None and time.monotonic() >= self._cancel_at:
            self.engine.kill()  # it did not answer the cancel in time: the next job starts afresh
            self.engine.tick()

    def cancel(self, timeout: float | None = None) -> None:
        """Ask the engine to stop this job (a `cancel` line); it stays loaded for the next one."""
        if not self._cancel_requested(timeout):
            return
        if self.prepare is None:  # still preparing: nothing was sent, the next tick ends the task
            self.engine.send(protocol.CANCEL_LINE)

    def shutdown(self, timeout: float = 5.0) -> None:
        if not self.running:
            return
        self.cancel(timeout=timeout)
        if not self.wait(timeout + 1.0):
            self.engine.kill()
            self.engine.tick()

    def _kill(self) -> None:
        self.engine.kill()

    # -- called by the engine ------------------------------------------------------------------
    def finished_by_engine(self) -> None:
        """The engine is ready again: the job ended with its last event."""
        self.returncode = 0
        kinds = {e["event"] for e in self.events}
        if protocol.EVENT_CANCELLED in kinds or self._cancel_at is not None:
            self._finish(CANCELLED, "Cancelled")
        elif self.error_kind:
            self._finish(ERROR, self.message, kind=self.error_kind)
        elif self.result is not None:
            self._finish(DONE, self.message or "Done")
        else:
            self._finish(ERROR, "the engine ended the job without a result", kind="internal")

    def engine_died(self, code: int) -> None:
        """The engine exited under this job: a cancel that had to kill it, or a crash."""
        self.returncode = code
        if self._cancel_at is not None:
            self._finish(CANCELLED, "Cancelled")
            return
        tail = self.engine.log_tail(8).splitlines()
        self._finish(
            ERROR,
            f"the engine stopped unexpectedly (exit code {code})"
            + (f": {tail[-1]}" if tail else "")
            + "; the next job starts a fresh engine",
            kind=CRASH,
        )


# --- the session's engine --------------------------------------------------------------------------
_ENGINE: WarmEngine | None = None
_EXITING: list[WarmEngine] = []  # asked to exit, not yet reaped


def current() -> WarmEngine | None:
    """The session's engine if its process is alive."""
    return _ENGINE if _ENGINE is not None and _ENGINE.alive else None


def engine_for(
    argv: list[str], cwd: str | None, env: dict[str, str] | None, log_dir: str, pid_dir: str = ""
) -> WarmEngine:
    """The session's engine for this command line, or a new one (not started yet).

    An engine started with another command line (Python, idle timeout) or environment (online or
    not) is asked to exit first. Models and devices switch inside one engine (see engine/serve.py).
    """
    global _ENGINE
    old = _ENGINE
    if old is not None and old.alive and old.argv == argv and old.cwd == cwd and _same_env(old.env, env):
        return old
    if old is not None:
        old.unload()
        _EXITING.append(old)
    _ENGINE = WarmEngine(argv, cwd, env, log_dir, pid_dir)
    return _ENGINE


def _same_env(a: dict[str, str] | None, b: dict[str, str] | None) -> bool:
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONPATH")
    return all((a or {}).get(k) == (b or {}).get(k) for k in keys)


def unload() -> bool:
    """The "Unload Model" button: the session's engine exits (freeing GPU memory); False if none ran."""
    global _ENGINE
    engine, _ENGINE = current(), None
    if engine is None:
        return False
    engine.unload()
    _EXITING.append(engine)
    return True


def tick_all() -> bool:
    """Reap engines that were asked to exit; True while one is still exiting."""
    for engine in list(_EXITING):
        if not engine.tick():
            _EXITING.remove(engine)
    return bool(_EXITING)


def shutdown_all(timeout: float = 3.0) -> None:
    """Blender quits or the extension is disabled: every engine gets the end of its stdin (it
    cancels and cleans up), then the stragglers are killed. Never leaves a process behind."""
    global _ENGINE
    engines = [e for e in [_ENGINE, *_EXITING] if e is not None]
    _ENGINE = None
    _EXITING.clear()
    for engine in engines:
        engine.close_stdin()
    end = time.monotonic() + timeout
    for engine in engines:
        engine.shutdown(max(0.0, end - time.monotonic()))
