"""One child process with its output in files: the helper that every engine (or pip) process of the
extension goes through, the one-shot :class:`.task.ProcessTask` and the warm :class:`.warm.WarmEngine`
alike (plain Python, no bpy).

stdout and stderr go to files (a pipe that nobody drains can deadlock the child); :meth:`Child.read_lines`
reads what is new in the stdout file and splits it into whole lines, keeping a partial last line for
the next read. Every running child is listed in a PID file, so that a Blender that crashed leaves
nothing that the next start cannot end (:func:`reap_stale`). The log (stderr) starts with the command
line; :func:`log_tail` gives its last lines for messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

IS_WINDOWS = sys.platform == "win32"


def log_paths(log_dir: str, prefix: str, owner: object) -> tuple[str, str]:
    """A fresh (stdout file, log file) pair in `log_dir`, named after `prefix`, the time and `owner`."""
    os.makedirs(log_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(log_dir, f"{prefix}-{stamp}-{os.getpid()}-{id(owner) & 0xFFFF:04x}")
    return base + ".out", base + ".log"


def log_tail(path: str, lines: int = 20) -> str:
    """The last lines of a child's log file (its stderr), '' when there is none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Child:
    """A child process (one at a time: :meth:`spawn` again for the next command) whose stdout is
    appended to `stdout_path` and stderr to `log_path`; its stdin is a pipe for protocol lines."""

    def __init__(self, stdout_path: str, log_path: str, pid_dir: str = "") -> None:
        self.stdout_path = stdout_path
        self.log_path = log_path
        self.pid_dir = pid_dir
        self.argv: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: Any = None
        self._partial = b""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll(self) -> int | None:
        """The exit code once the child has ended; None while it runs (or if none started)."""
        return self.proc.poll() if self.proc is not None else None

    def spawn(self, argv: Sequence[str], cwd: str | None, env: dict[str, str] | None) -> None:
        """Start `argv` (the command line goes first into the log) and write its PID file; raises
        OSError when it cannot start. Only what it writes from now on is read."""
        self.close_reader()
        self._partial = b""
        self.argv = list(argv)
        with open(self.stdout_path, "ab") as out, open(self.log_path, "ab") as err:
            err.write(f"$ {' '.join(self.argv)}\n".encode())
            err.flush()
            self._reader = open(self.stdout_path, "rb")  # noqa: SIM115 (read on every tick)
            self._reader.seek(0, os.SEEK_END)
            kwargs: dict[str, Any] = {}
            if IS_WINDOWS:
                kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
            # The child keeps its own copies of the file descriptors; ours close here.
            try:
                self.proc = subprocess.Popen(
                    self.argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err, **kwargs
                )
            except OSError:
                self.proc = None
                self.close_reader()
                raise
        self._write_pid_file()

    # -- output ------------------------------------------------------------------------------------
    def read_lines(self, final: bool = False) -> list[str]:
        """The whole lines written to stdout since the last read; `final` (the child has exited)
        also returns a last line without its newline."""
        if self._reader is None:
            return []
        data = self._partial + self._reader.read()
        *complete, self._partial = data.split(b"\n")
        if final and self._partial:
            complete.append(self._partial)
            self._partial = b""
        return [raw.decode("utf-8", "replace") for raw in complete]

    def close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(OSError):
                self._reader.close()
            self._reader = None

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    # -- input and ending ----------------------------------------------------------------------------
    def send(self, line: str) -> bool:
        """Write one line to the child's stdin; False if the child is not there to read it."""
        proc = self.proc
        if proc is None or proc.poll() is not None or proc.stdin is None:
            return False
        try:
            proc.stdin.write((line + "\n").encode())
            proc.stdin.flush()
        except (OSError, ValueError):
            return False
        return True

    def close_stdin(self) -> None:
        """The end of stdin: the engine cancels what it runs and exits (as when Blender dies)."""
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()

    def terminate(self) -> None:
        """SIGTERM, which the engine answers by cancelling (not on Windows, where it is a hard kill)."""
        if self.proc is not None and not IS_WINDOWS:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    # -- PID files: no orphan engines, even after a crash --------------------------------------------
    def _pid_file(self) -> str:
        return os.path.join(self.pid_dir, f"{self.proc.pid}.pid") if self.proc else ""

    def _write_pid_file(self) -> None:
        if not self.pid_dir or self.proc is None:
            return
        with contextlib.suppress(OSError):
            os.makedirs(self.pid_dir, exist_ok=True)
            with open(self._pid_file(), "w", encoding="utf-8") as fh:
                json.dump({"pid": self.proc.pid, "argv": self.argv}, fh)

    def remove_pid_file(self) -> None:
        """The child has ended: it is no longer ours to reap."""
        if self.pid_dir and self.proc is not None:
            with contextlib.suppress(OSError):
                os.remove(self._pid_file())


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
