"""Write a whole file atomically, with the permissions a normal file gets under the umask.

Readers (other farm chunks, later runs) see either the old file or the complete new one, never half
of it. `tempfile.mkstemp` would create 0600 files that the rest of a shared farm cache's group cannot
read; `os.open(..., 0o666)` lets the umask decide, as for any file the user creates.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder; raise OSError on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
