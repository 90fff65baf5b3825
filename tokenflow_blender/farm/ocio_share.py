"""Blender's bundled OCIO config, copied once to shared storage so that farm workers can read it.

Every job names the OCIO config its colour space comes from. With `$OCIO` unset that is the config
inside this Blender's installation, a path farm workers (which run only the engine's Python) do not
have. A farm job therefore gets a copy of the config's folder (config.ocio and its LUT folders;
20-24 MB) under the shared output folder, named by a digest of its files so that one copy
serves every job made with the same Blender. A copy is checked file by file (size and sha256 against
its listing) before it is used; a damaged or partial one is replaced, never trusted. A copy is built
in a hidden temporary folder and renamed into place whole, so a full disk or a killed process leaves
no half copy under the final name; such leftovers are removed by a later submission once they are
an hour old (a younger one may be another submission's copy in progress). Stdlib only: it runs in the
farm task's child process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time

FOLDER = "tokenflow-ocio"  # under the farm job's output parent
LISTING = ".tokenflow-listing.json"  # written last: a copy without it is incomplete
LEFTOVER_PREFIXES = (".partial-", ".damaged-")
LEFTOVER_AGE = 3600.0  # seconds


class ShareError(OSError):
    """The config could not be copied to shared storage (with what to do about it)."""


def is_bundled(config: str, blender_local: str) -> bool:
    """Whether `config` lies inside this Blender's installation (not a studio config from $OCIO)."""
    if not config or config.startswith("ocio://") or not blender_local:
        return False
    try:
        return os.path.commonpath([os.path.realpath(config), os.path.realpath(blender_local)]) == (
            os.path.realpath(blender_local)
        )
    except ValueError:  # different drives on Windows
        return False


def _files(folder: str) -> list[str]:
    """Relative paths of every file under `folder` (hidden files and folders skipped), sorted."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return found


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def listing(folder: str) -> dict[str, list[object]]:
    """{relative path: [size, sha256]} of the folder's files."""
    out: dict[str, list[object]] = {}
    for rel in _files(folder):
        path = os.path.join(folder, rel)
        out[rel] = [os.path.getsize(path), _sha256(path)]
    return out


def _digest(files: dict[str, list[object]]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def intact(copy: str, files: dict[str, list[object]]) -> bool:
    """Whether `copy` holds exactly `files`, each with its size and sha256, and its listing says so."""
    try:
        with open(os.path.join(copy, LISTING), encoding="utf-8") as fh:
            if json.load(fh) != files:
                return False
        return listing(copy) == files
    except (OSError, ValueError):
        return False


def remove_leftovers(home: str, now: float | None = None) -> list[str]:
    """Remove temporary folders of killed submissions (an hour old or more); their names."""
    now = time.time() if now is None else now
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(home):
            if entry.name.startswith(LEFTOVER_PREFIXES) and now - entry.stat().st_mtime >= LEFTOVER_AGE:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
    return removed


def share(config: str, home: str) -> str:
    """The path of a checked copy of `config` (and everything in its folder) under `home`."""
    source = os.path.dirname(os.path.abspath(config))
    try:
        files = listing(source)
    except OSError as exc:
        raise ShareError(f"cannot read the OCIO config folder {source}: {exc.strerror or exc}") from exc
    copy = os.path.join(home, _digest(files))
    shared = os.path.join(copy, os.path.basename(config))
    remove_leftovers(home)
    if intact(copy, files):
        return shared
    tmp = ""
    try:
        os.makedirs(home, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".partial-", dir=home)
        for rel in files:
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(source, rel), os.path.join(tmp, rel))
        with open(os.path.join(tmp, LISTING), "w", encoding="utf-8") as fh:
            json.dump(files, fh, sort_keys=True)
        if not intact(tmp, files):  # the source changed while it was copied
            raise ShareError(f"the OCIO config folder {source} changed while it was copied; submit again")
        if os.path.lexists(copy):  # damaged or partial: move it aside, then drop it
            aside = tempfile.mkdtemp(prefix=".damaged-", dir=home)
            os.replace(copy, os.path.join(aside, "copy"))
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(tmp, copy)
            tmp = ""
        except OSError:
            if not intact(copy, files):  # another submission did not just put a good copy there
                raise
    except ShareError:
        raise
    except OSError as exc:
        raise ShareError(
            f"cannot copy Blender's colour config ({source}) to {home} for the farm's workers: "
            f"{exc.strerror or exc}; the output folder must be writable shared storage with room for it"
        ) from exc
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    return shared


def share_job(job_text: str, home: str) -> str:
    """The job's JSON with its `ocio_config` pointing at a shared copy (unchanged when `home` is '')."""
    if not home:
        return job_text
    job = json.loads(job_text)
    if not job.get("ocio_config"):
        return job_text
    job["ocio_config"] = share(job["ocio_config"], home)
    return json.dumps(job, indent=2)
