"""A cache folder that cannot be written (read-only or full disk) costs the caching, never the edit;
cache files and folders get the permissions the umask gives normal files (shared farm caches)."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

import pytest
import torch

from engine.method.inversion import InversionCache, InversionSettings
from engine.model.fingerprint import INDEX_NAME, DigestIndex, files_digest
from tests.engine.conftest import run_in_process


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A tiny tmpfs under tmp_path, unmounted afterwards whatever happens."""
    mounted: list[Path] = []

    def make(name: str, size: str = "64k") -> Path:
        folder = tmp_path / name
        _mount_tmpfs(folder, size)
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def _read_only(folder: Path) -> Path:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    return folder / "cache"


def _full(folder: Path) -> Path:
    (folder / "cache").mkdir()
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last byte
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return folder / "cache"


@pytest.mark.parametrize("disk", ["read-only", "full"])
def test_unwritable_cache_warns_once_and_the_edit_succeeds(model, city16, tmp_path, tmpfs, caplog, disk):
    folder = tmpfs(disk)
    cache = _read_only(folder) if disk == "read-only" else _full(folder)
    with caplog.at_level(logging.WARNING, logger="engine"):
        code, events = run_in_process(
            model,
            frames=[str(f) for f in city16[:4]],
            output=str(tmp_path / "out"),
            prompt="a red car",
            cache_dir=str(cache),
        )
    assert code == 0, events.getvalue()
    (done,) = events.events("done")
    assert done["stats"]["cache_writes_failed"] == 4
    assert done["stats"]["inversion_unet_frames"] == 4 * 3
    assert len(done["files"]) == 4 and all(Path(f).is_file() for f in done["files"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "without caching" in warnings[0] and str(cache) in warnings[0]
    assert not list(folder.rglob("*.safetensors")) and not list(folder.rglob(".tmp-*"))


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o002, 0o664, 0o775), (0o022, 0o644, 0o755)])
def test_cache_files_get_the_umask_permissions(tmp_path, umask, file_mode, dir_mode):
    settings = InversionSettings("m", "torch.float32", 64, 64, 2, "a street", "{}")
    previous = os.umask(umask)
    try:
        cache = InversionCache(tmp_path / "shared")
        cache.put(settings, "f" * 64, [1, 2], torch.zeros(2, 4, 8, 8))
        weights = tmp_path / "weights.bin"
        weights.write_bytes(b"w")
        files_digest([("w", weights)], DigestIndex(tmp_path / "shared" / INDEX_NAME))
    finally:
        os.umask(previous)
    (entry,) = (tmp_path / "shared").glob("*/*.safetensors")
    assert entry.stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "shared" / INDEX_NAME).stat().st_mode & 0o777 == file_mode
    assert entry.parent.stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "shared").stat().st_mode & 0o777 == dir_mode
    assert cache.get(settings, "f" * 64, [1, 2], (2, 4, 8, 8)) is not None
