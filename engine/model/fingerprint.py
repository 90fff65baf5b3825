"""Content digests of model files, remembered so that a multi-GB checkpoint is read only once.

The inversion cache is keyed by the model's identity: a digest of every weight and config file it
was loaded from. Hashing a 5 GB checkpoint takes seconds, so each file's digest is remembered in a
small JSON index keyed by (absolute path, size, mtime_ns, ctime_ns, inode) and reused while all of
these are unchanged. The trade-off: a file whose content changes while all five stay the same keeps
its old digest. Tools cannot set ctime (a kernel stamp renewed by every write), so that takes a
change within one clock tick of the last hash; delete the index file to force every file re-hashed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..cache.atomic_write import write_atomic

log = logging.getLogger(__name__)
HASH = "sha256"  # chosen by measurement: bench/fingerprint_bench.py
INDEX_NAME = "file-digests.json"
INDEX_FORMAT = 1
MAX_ENTRIES = 5000  # about 1 MB of JSON


def hash_file(path: Path) -> str:
    """The hex digest of a file's bytes (read in blocks; hashlib releases the GIL while hashing)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, HASH).hexdigest()


def _well_formed(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("digest"), str)
        and len(entry["digest"]) == hashlib.new(HASH).digest_size * 2
        and isinstance(entry.get("stat"), list)
    )


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class DigestIndex:
    """Remembered file digests in a JSON file; `path=None` remembers them for this process only.

    A missing, unreadable or foreign index is ignored (and rebuilt), never trusted; a failure to
    write it costs a re-hash next time, never the run.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.hashed = 0  # files read in full by this index (the rest came from the index)
        self._entries: dict[str, dict] = self._read() if path else {}
        self._dirty = False

    def _read(self) -> dict[str, dict]:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != INDEX_FORMAT or data.get("hash") != HASH:
                return {}
            entries = data["files"]
            return {k: v for k, v in entries.items() if _well_formed(v)}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring the unreadable file-digest index %s (%s); it is rebuilt", self.path, exc)
            return {}

    def digest(self, file: Path) -> str:
        """The file's content digest: remembered while its stat signature holds, else read in full."""
        key = str(Path(file).resolve())  # hub snapshots are symlinks to blobs: key the blob
        signature = _signature(os.stat(key))
        entry = self._entries.get(key)
        if entry and entry["stat"] == signature:
            return entry["digest"]
        digest = hash_file(Path(key))
        self.hashed += 1
        if _signature(os.stat(key)) == signature:  # not remembered if the file changed while read
            self._entries[key] = {"stat": signature, "digest": digest}
            self._dirty = True
        return digest

    def save(self) -> None:
        """Write the index if it learnt something, merged with what other processes wrote meanwhile.

        A farm's shared cache folder holds the index of several machines, so entries are not dropped
        because their path is missing here; the oldest go beyond MAX_ENTRIES.
        """
        if not (self.path and self._dirty):
            return
        merged = self._read()
        for key, entry in self._entries.items():
            merged.pop(key, None)
            merged[key] = entry  # newest last
        kept = dict(list(merged.items())[-MAX_ENTRIES:])
        data = json.dumps({"format": INDEX_FORMAT, "hash": HASH, "files": kept}, indent=0)
        try:
            write_atomic(self.path, data.encode())
            self._dirty = False
        except OSError as exc:
            log.info("could not remember file digests in %s (%s); re-hashed next time", self.path, exc)


def files_digest(files: Iterable[tuple[str, Path]], index: DigestIndex, extra: object = None) -> str:
    """One digest over named files' contents (names are relative: a moved model keeps its identity)."""
    listing = {name: index.digest(path) for name, path in sorted(files)}
    index.save()
    text = json.dumps({"hash": HASH, "files": listing, "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def folder_files(folder: Path, prefix: str = "") -> list[tuple[str, Path]]:
    """Every file under a folder, recursively, named by its relative path; hidden files are skipped."""
    found = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                path = Path(root) / name
                found.append((prefix + path.relative_to(folder).as_posix(), path))
    return found
