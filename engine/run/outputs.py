"""Claiming an output folder before any work: it must be new, writable, and no other run's.

A run writes into `.<name>.tmp-<host>-<pid>` beside its destination and renames that folder into
place when complete. Before the model loads, :func:`claim` checks the path (no existing folder,
no file or dangling link on the way), takes a lock that dies with the process (`flock` on
`.<name>.tmp-lock/lock`: named like the temporary folders, so that whoever cleans those after a
killed run, such as the Blender extension, removes it too), removes temporary folders of runs
that were killed on this host, and creates the temporary folder (which proves the disk takes a
write). Standard library only: nothing heavy is imported before a bad path is refused.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
from pathlib import Path

from ..errors import BadInput, DiskError, EngineError

log = logging.getLogger(__name__)
LOCK_SUFFIX = ".tmp-lock"

# errno values that say the storage, not the path, is the problem.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC)}
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)$")


def host_name() -> str:
    """This machine's name as it goes into temporary folder names (shared farm storage)."""
    name = socket.gethostname() or "localhost"
    return re.sub(r"[^A-Za-z0-9.-]", "_", name)


def temp_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.tmp-{host_name()}-{os.getpid()}"


def storage_error(exc: OSError, path: Path, doing: str) -> EngineError:
    """An OSError on `path` as an error a person can act on: `disk` for the storage, else `bad_input`."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DiskError(
            f"cannot {doing} {path}: {reason} (the disk is full); free some space or choose a folder "
            "on another disk"
        )
    if exc.errno == errno.EROFS:
        return DiskError(
            f"cannot {doing} {path}: {reason} (a read-only disk); choose a folder on a writable disk"
        )
    if exc.errno in DISK_ERRNOS:
        return DiskError(
            f"cannot {doing} {path}: {reason}; check the disk or choose a folder on another disk"
        )
    return BadInput(f"cannot {doing} {path}: {reason}; choose a folder you can write to")


def pid_alive(pid: int) -> bool:
    """True if a process with this id runs on this machine (or might: no permission to ask)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(parent: Path, own_name: str) -> list[Path]:
    """Remove temporary folders of killed runs in `parent`; return what was removed.

    A folder is stale when its process is gone from this host. A folder named by another host is
    left alone (that host's run may be alive on shared storage). An old-style name without a host
    is removed only for our own destination, whose lock we hold, when its pid is gone.
    """
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    me, here = os.getpid(), host_name()
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        pid, host = int(match["pid"]), match["host"]
        if pid == me and host in (None, here):
            continue
        if host is None and match["name"] != own_name:
            continue
        if host not in (None, here) or pid_alive(pid):
            continue
        log.warning("removing %s, left by a run (pid %d) that no longer runs", entry, pid)
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    removed += [lock for lock in entries if _remove_unheld_lock(lock, own_name)]
    return removed


def _remove_unheld_lock(folder: Path, own_name: str) -> bool:
    """Remove a `.<name>.tmp-lock` folder that no process holds (a killed run's); True if removed."""
    if not folder.name.endswith(LOCK_SUFFIX) or folder.name == f".{own_name}{LOCK_SUFFIX}":
        return False
    path = folder / "lock"
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        if not _read_holder(fd).startswith("pid ") or not _try_lock(fd):
            return False  # not ours, or its run is alive
        os.unlink(path)  # unlinked while held: a run about to lock it sees the swap and retries
        with contextlib.suppress(OSError):
            folder.rmdir()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _check_parents(dest: Path) -> None:
    """Name the first thing on the way to `dest` that is not a folder (a file, a dangling link)."""
    for folder in reversed(dest.parents):
        if os.path.isdir(folder):
            continue
        if os.path.islink(folder):
            raise BadInput(
                f"{folder} (on the way to the output {dest}) is a symbolic link to "
                f"{os.readlink(folder)}, which does not exist; fix the link or choose another folder"
            )
        if os.path.lexists(folder):
            raise BadInput(
                f"{folder} (on the way to the output {dest}) is a file, not a folder; choose another output"
            )
        return  # missing from here on: created by the caller


class OutputLock:
    """An exclusive lock on `.<name>.tmp-lock/lock` beside the destination, released when the
    process dies (a regular file opened for writing: `flock` works on NFS too)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.folder = dest.parent / f".{dest.name}{LOCK_SUFFIX}"
        self.path = self.folder / "lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        for _ in range(10):  # another run may remove the file between our open and our lock
            try:
                self.folder.mkdir(exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:
                continue  # its folder was just removed by the run that held it
            except OSError as exc:
                raise storage_error(exc, self.dest.parent, "write into the output's folder") from exc
            if not _try_lock(fd):
                holder = _read_holder(fd)
                os.close(fd)
                raise BadInput(
                    f"the output {self.dest} is already being written by "
                    f"another run ({holder}); wait for it to finish or choose another folder"
                )
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                break
            os.close(fd)
        else:
            raise BadInput(f"could not lock {self.path}: other runs keep replacing it; try again")
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"pid {os.getpid()} on {host_name()}\n".encode())
        except OSError as exc:
            self.release()
            raise storage_error(exc, self.dest.parent, "write into the output's folder") from exc

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # unlinked while held: the next run locks a fresh file
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # fails harmlessly if the next run has already put its file there
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: a byte-range lock that also dies with the process
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except (OSError, AttributeError):
        text = ""
    return text or "pid unknown"


class Destination:
    """A claimed output: the final path, its lock, and the temporary folder the run writes into."""

    def __init__(self, output: str) -> None:
        self.path = Path(output).expanduser().absolute()
        self.temp = temp_path(self.path)
        self.lock = OutputLock(self.path)
        self._created: list[Path] = []

    def claim(self) -> Destination:
        """Check, lock and prepare the destination; raise BadInput / DiskError naming the path."""
        dest = self.path
        refuse_existing(dest)
        _check_parents(dest)
        missing = [p for p in reversed(dest.parents) if not os.path.lexists(p)]
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, missing[0] if missing else dest.parent, "create the folder") from exc
        self._created = missing
        try:
            self.lock.acquire()
            refuse_existing(dest)  # finished by another run while we waited for the lock
            remove_stale_temps(dest.parent, dest.name)
            shutil.rmtree(self.temp, ignore_errors=True)
            try:
                self.temp.mkdir()
                (self.temp / ".probe").write_bytes(b"tokenflow")  # a full disk may still take a mkdir
                (self.temp / ".probe").unlink()
            except OSError as exc:
                raise storage_error(exc, dest.parent, "write the result into") from exc
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Remove the temporary folder (if still there), the lock, and folders we created for nothing."""
        shutil.rmtree(self.temp, ignore_errors=True)
        self.lock.release()
        if not self.path.exists():
            for folder in reversed(self._created):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        self._created = []


def refuse_existing(dest: Path) -> None:
    """The destination must not exist: results never overwrite anything."""
    if os.path.islink(dest) and not os.path.exists(dest):
        raise BadInput(
            f"the output {dest} is a symbolic link to {os.readlink(dest)}, which does not exist; "
            "remove the link or choose a new folder"
        )
    if os.path.lexists(dest):
        raise BadInput(
            f"the output folder {dest} already exists; results never overwrite, choose a new folder"
        )


def disk_full(folder: Path, written: int, done: int, total: int, exc: OSError) -> EngineError:
    """ENOSPC while writing a result: name the folder and the space the whole result needs."""
    if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return storage_error(exc, folder, "write the result into")
    per_frame = written / max(done, 1)
    needed = per_frame * total
    try:
        free = shutil.disk_usage(folder).free
        free_text = f", {_mb(free)} free"
    except OSError:
        free_text = ""
    return DiskError(
        f"the disk of {folder} is full after {done} of {total} frames: the result needs about "
        f"{_mb(needed)} ({_mb(per_frame)} a frame{free_text}); free some space or choose an output "
        "folder on another disk. Nothing was written."
    )


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def withdraw(dest: Path) -> None:
    """Take a finished result back out of sight (renamed away first, so it vanishes at once)."""
    hidden = temp_path(dest)
    try:
        os.rename(dest, hidden)
    except OSError:
        hidden = dest
    shutil.rmtree(hidden, ignore_errors=True)
