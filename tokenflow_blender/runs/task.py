"""Running the engine (or pip) as a subprocess without ever blocking Blender: plain Python, no bpy.

A :class:`ProcessTask` starts one command after another with `subprocess.Popen`; stdout and
stderr go to files (a pipe that nobody drains can deadlock the child), and `tick()` reads what is
new, parses protocol events and moves progress into plain attributes. Blender calls `tick()` from
a timer on the main thread; tests call it in a loop. Cancelling is polite first (a `cancel` line
on stdin plus SIGTERM, which the engine answers within one denoising step by removing its
temporary output), then a kill after a timeout. Every running child is listed in a PID file, so
that a Blender that crashed leaves nothing that the next start cannot end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..engine import protocol
from . import planning

PENDING, RUNNING, DONE, ERROR, CANCELLED = "PENDING", "RUNNING", "DONE", "ERROR", "CANCELLED"
FINISHED = (DONE, ERROR, CANCELLED)
IS_WINDOWS = sys.platform == "win32"


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
        os.makedirs(self.log_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = os.path.join(self.log_dir, f"{self.kind}-{stamp}-{os.getpid()}-{id(self) & 0xFFFF:04x}")
        self.stdout_path = base + ".out"
        self.log_path = base + ".log"
        self._index = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout_file: Any = None
        self._stderr_file: Any = None
        self._reader: Any = None
        self._partial = b""
        self._cancel_at: float | None = None
        self._compute_t0: float | None = None

    # -- public ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state in (PENDING, RUNNING)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

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
            return self.running
        self._read_stdout()
        proc_alive = self._proc is not None and self._proc.poll() is None
        if self._cancel_at is not None and proc_alive and time.monotonic() >= self._cancel_at:
            self._kill()
        if self._proc is not None and self._proc.poll() is not None:
            self._read_stdout(final=True)
            self._step_finished(self._proc.returncode)
        return self.running

    def cancel(self, timeout: float | None = None) -> None:
        """Ask the child to stop (stdin line, then SIGTERM); kill it if it is still there later."""
        if not self._cancel_requested(timeout):
            return
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if proc.stdin:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write((protocol.CANCEL_LINE + "\n").encode())
                proc.stdin.flush()
        if not IS_WINDOWS:  # on Windows terminate() is a hard kill: the stdin line comes first
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)

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
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 16384))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

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
        self._close_files()
        self._partial = b""
        self._stdout_file = open(self.stdout_path, "ab")  # noqa: SIM115 (kept open for the child)
        self._stderr_file = open(self.log_path, "ab")  # noqa: SIM115
        self._stderr_file.write(f"$ {' '.join(step.argv)}\n".encode())
        self._stderr_file.flush()
        self._reader = open(self.stdout_path, "rb")  # noqa: SIM115
        self._reader.seek(0, os.SEEK_END)
        kwargs: dict[str, Any] = {}
        if IS_WINDOWS:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self._proc = subprocess.Popen(
                step.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=self._stdout_file,
                stderr=self._stderr_file,
                **kwargs,
            )
        except OSError as exc:
            self._proc = None
            self._finish(ERROR, f"cannot start {step.argv[0]}: {exc.strerror or exc}", kind="start")
            return
        self._write_pid_file()

    def _step_finished(self, code: int) -> None:
        self.returncode = code
        self._remove_pid_file()
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
        self._close_files()
        if self._proc and self._proc.stdin:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
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
        if self._proc and self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)

    def _close_files(self) -> None:
        for name in ("_stdout_file", "_stderr_file", "_reader"):
            fh = getattr(self, name)
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
                setattr(self, name, None)

    # -- output --------------------------------------------------------------------------------
    def _read_stdout(self, final: bool = False) -> None:
        if self._reader is None:
            return
        data = self._reader.read()
        if not data and not final:
            return
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        if final and self._partial:
            complete.append(self._partial)
            self._partial = b""
        for raw in complete:
            self._on_line(raw.decode("utf-8", "replace"))

    def _on_line(self, line: str) -> None:
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

    # -- PID files: no orphan engines, even after a crash --------------------------------------
    def _pid_file(self) -> str:
        return os.path.join(self.pid_dir, f"{self._proc.pid}.pid") if self._proc else ""

    def _write_pid_file(self) -> None:
        if not self.pid_dir or self._proc is None:
            return
        with contextlib.suppress(OSError):
            os.makedirs(self.pid_dir, exist_ok=True)
            with open(self._pid_file(), "w", encoding="utf-8") as fh:
                json.dump({"pid": self._proc.pid, "argv": self.steps[self._index].argv}, fh)

    def _remove_pid_file(self) -> None:
        if self.pid_dir and self._proc is not None:
            with contextlib.suppress(OSError):
                os.remove(self._pid_file())


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


# --- the tasks that are running, by slot ("edit", "install", "check", "farm") -----------------
def wait(task: Task, timeout: float, interval: float = 0.05) -> bool:
    """Tick `task` until it ends or `timeout` passes (blocking: tests, quitting). True if it ended."""
    end = time.monotonic() + timeout
    while task.tick():
        if time.monotonic() >= end:
            return False
        time.sleep(interval)
    return True


class Task(Protocol):
    """What the registry and the timer need of a task: a ProcessTask or a farm_task.FarmTask."""

    state: str
    message: str
    on_event: Any
    on_finish: Any

    @property
    def running(self) -> bool: ...

    def tick(self) -> bool: ...

    def cancel(self, timeout: float | None = None) -> None: ...

    def shutdown(self, timeout: float = 5.0) -> None: ...


_TASKS: dict[str, Task] = {}


def get(slot: str) -> Task | None:
    """The task in a slot (running or the last finished one)."""
    return _TASKS.get(slot)


def running(slot: str) -> Task | None:
    task = _TASKS.get(slot)
    return task if task is not None and task.running else None


def put(slot: str, task: Task) -> Task:
    if running(slot):
        raise RuntimeError(f"a {slot} task is already running")
    _TASKS[slot] = task
    return task


def tick_all() -> bool:
    """Tick every running task; True while any still runs."""
    alive = False
    for task in list(_TASKS.values()):
        if task.running:
            alive = task.tick() or alive
    return alive


def shutdown_all(timeout: float = 5.0, quiet: bool = True) -> None:
    """End every running child (unregister, quit): the engine must not outlive Blender.

    `quiet` drops the callbacks first: while quitting or unregistering nothing may touch bpy.
    Engine runs are asked to stop all at once, then waited for; a farm task only stops watching
    (its `shutdown`): the farm job is not Blender's to end.
    """
    tasks = [t for t in _TASKS.values() if t.running]
    for task in tasks:
        if quiet:
            task.on_event = task.on_finish = None
        if isinstance(task, ProcessTask):
            task.cancel(timeout=timeout)
    for task in tasks:
        task.shutdown(timeout)


def forget_all() -> None:
    shutdown_all()
    _TASKS.clear()


def reap_stale(pid_dir: str) -> list[int]:
    """End engines that a crashed Blender left behind (listed in PID files); return their PIDs.

    A PID is only signalled when the process is still one of ours: on Linux its command line must
    still be the recorded one; elsewhere the file is just removed (PIDs get reused).
    """
    ended: list[int] = []
    try:
        names = [n for n in os.listdir(pid_dir) if n.endswith(".pid")]
    except OSError:
        return ended
    for name in names:
        path = os.path.join(pid_dir, name)
        try:
            with open(path, encoding="utf-8") as fh:
                record = json.load(fh)
            pid = int(record["pid"])
            argv = [str(a) for a in record["argv"]]
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                os.remove(path)
            continue
        if pid != os.getpid() and _is_same_process(pid, argv):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
                ended.append(pid)
        with contextlib.suppress(OSError):
            os.remove(path)
    return ended


def _is_same_process(pid: int, argv: Sequence[str]) -> bool:
    cmdline: list[str] = []
    for _ in range(20):  # a process that has only just exec'd shows an empty command line briefly
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
        except OSError:
            return False
        if cmdline:
            break
        time.sleep(0.01)
    return len(argv) > 1 and cmdline[1:] == list(argv[1:])
