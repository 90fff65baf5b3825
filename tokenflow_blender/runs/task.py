"""Running the engine (or pip) as a subprocess without ever blocking Blender: plain Python, no bpy.

A :class:`ProcessTask` starts one command after another (each a :class:`.process.Child`: stdout
and stderr in files, a PID file), and `tick()` reads what is new, parses protocol events and moves
progress into plain attributes. Blender calls `tick()` from a timer on the main thread; tests
call it in a loop. Cancelling is polite first (a `cancel` line on stdin plus SIGTERM, which the
engine answers within one denoising step by removing its temporary output), then a kill after a
timeout. :func:`wait` ticks any task (this one, a warm
job, a farm or conversion task: the :class:`Task` protocol) until it ends.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...engine import protocol
from ..sequencer import planning
from . import process

PENDING, RUNNING, DONE, ERROR, CANCELLED = "PENDING", "RUNNING", "DONE", "ERROR", "CANCELLED"
FINISHED = (DONE, ERROR, CANCELLED)


@dataclass
class Step:
    """One command of a task: a label for the progress bar and its argv."""

    label: str
    argv: list[str]
    weight: float = 1.0  # share of the task's progress bar


@dataclass(eq=False)  # identity: tasks are registry entries, not values
class ProcessTask:
    """A sequence of subprocess commands with events, progress, cancel and clean-up.

    `output` (an engine run's destination folder) lets the task remove the engine's temporary
    folder and any result when the run ends without success. Callbacks get the task itself.
    """

    kind: str
    steps: list[Step]
    log_dir: str
    cwd: str | None = None
    env: dict[str, str] | None = None
    output: str = ""
    pid_dir: str = ""
    cancel_timeout: float = 10.0
    on_event: Callable[[ProcessTask, dict[str, Any]], None] | None = None
    on_finish: Callable[[ProcessTask], None] | None = None
    context: dict[str, Any] = field(default_factory=dict)  # what the caller needs at the end
    # In-process work before the first command (rendering matte frames in Blender), one slice per
    # tick so that the UI stays live and Cancel works: returns (done, total); raising ends the task.
    prepare: Callable[[], tuple[int, int]] | None = None
    prepare_label: str = "Preparing"

    state: str = PENDING
    stage: str = ""
    progress: float = 0.0  # 0..1 over the whole task
    eta: float | None = None
    message: str = ""
    error_kind: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None  # the `done` (or `check`) event
    returncode: int | None = None
    lines: list[str] = field(default_factory=list)  # stdout lines that were not events (pip)

    def __post_init__(self) -> None:
        self.stdout_path, self.log_path = process.log_paths(self.log_dir, self.kind, self)
        self._index = -1
        self._child = process.Child(self.stdout_path, self.log_path, self.pid_dir)
        self._cancel_at: float | None = None
        self._compute_t0: float | None = None

    # -- public ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state in (PENDING, RUNNING)

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def step_index(self) -> int:
        """The index of the command that runs now (-1 before the first)."""
        return self._index

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_at is not None

    def start(self) -> ProcessTask:
        """Start the first command; an executable that cannot start ends the task as an error."""
        self.state = RUNNING
        if self.prepare is None:
            self._next_step()
        else:
            self.stage = self.prepare_label
        return self

    def tick(self) -> bool:
        """Read new output, update progress, finish when the child exits. True while running."""
        if not self.running:
            return False
        if self.prepare is not None:
            self._prepare_slice()
        else:
            self._tick_child()
        return self.running

    def _tick_child(self) -> None:
        """Read the child's new output; kill it once a cancel has waited too long; notice its exit."""
        self._read_stdout()
        if self._cancel_at is not None and self._child.alive and time.monotonic() >= self._cancel_at:
            self._kill()
        code = self._child.poll()
        if code is not None:
            self._read_stdout(final=True)
            self._step_finished(code)

    def cancel(self, timeout: float | None = None) -> None:
        """Ask the child to stop (stdin line, then SIGTERM); kill it if it is still there later."""
        if not self._cancel_requested(timeout):
            return
        if not self._child.alive:
            return
        self._child.send(protocol.CANCEL_LINE)  # on Windows terminate() is a hard kill: this comes first
        self._child.terminate()

    def _cancel_requested(self, timeout: float | None) -> bool:
        """Note the cancel and when to give up waiting for it; False if the task already ended."""
        if not self.running:
            return False
        if self._cancel_at is None:
            self._cancel_at = time.monotonic() + (self.cancel_timeout if timeout is None else timeout)
            self.message = "Cancelling..."
        return True

    def wait(self, timeout: float, interval: float = 0.05) -> bool:
        return wait(self, timeout, interval)

    def shutdown(self, timeout: float = 5.0) -> None:
        """End the task now, whatever it is doing: polite cancel, a short wait, then kill."""
        if not self.running:
            return
        self.cancel(timeout=timeout)
        if not self.wait(timeout + 1.0):
            self._kill()
            self.wait(2.0)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the child's stderr (the engine's log)."""
        return process.log_tail(self.log_path, lines)

    def _prepare_slice(self) -> None:
        """One slice of the in-process preparation; the first command starts when it is done."""
        if self._cancel_at is not None:
            self._finish(CANCELLED, "Cancelled")
            return
        assert self.prepare is not None
        try:
            done, total = self.prepare()
        except Exception as exc:  # the preparation's message is the task's error
            self._finish(ERROR, f"{self.prepare_label}: {exc}", kind="prepare")
            return
        self.message = f"{self.prepare_label} {done}/{total}"
        if self.on_event:
            event = {"event": "prepare", "stage": self.prepare_label, "step": done, "total": total}
            self.on_event(self, event)
        if done >= total:
            self.prepare = None
            self._next_step()

    # -- steps -------------------------------------------------------------------------------
    def _next_step(self) -> None:
        self._index += 1
        step = self.steps[self._index]
        self.stage = step.label
        try:
            self._child.spawn(step.argv, self.cwd, self.env)
        except OSError as exc:
            self._finish(ERROR, f"cannot start {step.argv[0]}: {exc.strerror or exc}", kind="start")

    def _step_finished(self, code: int) -> None:
        self.returncode = code
        self._child.remove_pid_file()
        last = self._index == len(self.steps) - 1
        cancelled = any(e["event"] == protocol.EVENT_CANCELLED for e in self.events)
        if self._cancel_at is not None or cancelled:
            self._finish(CANCELLED, "Cancelled")
        elif self.error_kind:
            self._finish(ERROR, self.message, kind=self.error_kind)
        elif code != 0:
            tail = self.log_tail(8)
            self._finish(
                ERROR,
                f"{self.stage} failed (exit code {code})" + (f": {tail.splitlines()[-1]}" if tail else ""),
                kind="exit",
            )
        elif not last:
            self._next_step()
        else:
            self._finish(DONE, self.message or "Done")

    def _finish(self, state: str, message: str, kind: str = "") -> None:
        self.state = state
        self.message = message
        if kind:
            self.error_kind = kind
        self._child.close_reader()
        self._child.close_stdin()
        if state == DONE:
            self.progress = 1.0
            self.eta = 0.0
        elif self.output:
            self._clean_output()
        if self.on_finish:
            self.on_finish(self)

    def _clean_output(self) -> None:
        """After a cancel, an error or a kill: no temporary folder and no partial result remain."""
        for path in planning.temp_folders(self.output):
            shutil.rmtree(path, ignore_errors=True)
        if self.state == CANCELLED and os.path.isdir(self.output):
            shutil.rmtree(self.output, ignore_errors=True)  # finished as the cancel arrived

    def _kill(self) -> None:
        self._child.kill()

    # -- output --------------------------------------------------------------------------------
    def _read_stdout(self, final: bool = False) -> None:
        for line in self._child.read_lines(final):
            self.handle_line(line)

    def handle_line(self, line: str) -> None:
        """One line of the child's stdout: a protocol event, or text (pip) kept as the message."""
        event = protocol.parse_event(line)
        if event is None:
            if line.strip():
                self.lines.append(line.rstrip())
                del self.lines[:-200]
                self.message = line.strip()[:200]
            return
        self.events.append(event)
        kind = event["event"]
        weight_done = sum(s.weight for s in self.steps[: self._index])
        weight_all = sum(s.weight for s in self.steps) or 1.0
        if kind == protocol.EVENT_PROGRESS:
            stage = str(event.get("stage", ""))
            total = max(1, int(event.get("total") or 1))
            step = min(int(event.get("step") or 0), total)
            self.stage = stage
            self.eta = event.get("eta")
            here = self.steps[self._index].weight * self._fraction(stage, step / total, event)
            self.progress = max(self.progress, min(1.0, (weight_done + here) / weight_all))
            self.message = f"{stage.capitalize()} {step}/{total}"
        elif kind == protocol.EVENT_STARTED:
            self.message = (
                f"Running on {event.get('device', '?')} ({event.get('dtype', '?')}), "
                f"{event.get('frames', '?')} frames at {event.get('width', '?')}x{event.get('height', '?')}"
            )
        elif kind in (protocol.EVENT_DONE, protocol.EVENT_CHECK):
            self.result = event
        elif kind == protocol.EVENT_ERROR:
            self.error_kind = str(event.get("kind") or "internal")
            self.message = str(event.get("message") or "the engine reported an error without a message")
        elif kind == protocol.EVENT_CANCELLED:
            self.message = str(event.get("message") or "Cancelled")
        if self.on_event:
            self.on_event(self, event)

    def _fraction(self, stage: str, stage_fraction: float, event: dict[str, Any]) -> float:
        """Where a progress event puts this step's bar (0..1).

        The denoising stages interleave (keyframes, then propagation, at every step), so their
        share comes from the engine's own estimate of the time left over all planned UNet work:
        done / (done + left) = spent / (spent + eta).
        """
        if stage not in _COMPUTE_STAGES or event.get("eta") is None:
            return _stage_fraction(stage, stage_fraction)
        elapsed = float(event.get("elapsed") or 0.0)
        if self._compute_t0 is None:
            self._compute_t0 = elapsed
        spent = max(elapsed - self._compute_t0, 0.0)
        eta = max(float(event["eta"]), 0.0)
        done = spent / (spent + eta) if spent + eta > 0 else stage_fraction
        low, high = _COMPUTE_SPAN
        return low + (high - low) * done


# Where the stages of an engine run fall on one progress bar. The UNet stages (inversion and
# denoising) share one span, filled from the engine's time-left estimate.
_COMPUTE_STAGES = ("inversion", "keyframes", "propagate", "per-frame", "preview")
_COMPUTE_SPAN = (0.08, 0.95)
_STAGE_SPANS = {
    "read": (0.0, 0.02),
    "load": (0.02, 0.08),
    **{stage: _COMPUTE_SPAN for stage in _COMPUTE_STAGES},
    "decode": (0.95, 0.97),
    "write": (0.97, 1.0),
    "evaluate": (0.97, 1.0),
}


def _stage_fraction(stage: str, fraction: float) -> float:
    low, high = _STAGE_SPANS.get(stage, (0.0, 1.0))
    return low + (high - low) * max(0.0, min(1.0, fraction))


# --- any task -------------------------------------------------------------------------------------
def wait(task: Task, timeout: float, interval: float = 0.05) -> bool:
    """Tick `task` until it ends or `timeout` passes (blocking: tests, quitting). True if it ended."""
    end = time.monotonic() + timeout
    while task.tick():
        if time.monotonic() >= end:
            return False
        time.sleep(interval)
    return True


class Task(Protocol):
    """What the registry and the timer need of a task: a ProcessTask, a farm.task.FarmTask or a
    sequencer.convert.ConvertTask."""

    state: str
    message: str
    on_event: Any
    on_finish: Any

    @property
    def running(self) -> bool: ...

    def tick(self) -> bool: ...

    def cancel(self, timeout: float | None = None) -> None: ...

    def shutdown(self, timeout: float = 5.0) -> None: ...
