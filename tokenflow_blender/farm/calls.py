"""The Flamenco requests of a farm task, each run in a short-lived child process (no bpy).

Why a process and not a thread: `bpy.ops` releases the GIL while an operator runs, and Blender
then reads a `temp_override` context dictionary from C after checking only that *some* thread holds
the GIL (`PyC_IsInterpreterActive`). A Python thread of ours that holds the GIL at that moment and
lets go of it a moment later crashes Blender (seen in Blender 5.0 here: `_PyErr_Fetch` with no
thread state under `WM_event_add_notifier`). A child process shares no GIL, so nothing of ours
runs Python in Blender's process while Blender's C code does.

The parent side is :class:`Call` (start, `done`, `value` / `error`, `wait`, `kill`); the child side
is this file run as a script: it reads its request from a JSON file, runs one phase (:data:`PHASES`)
against the Manager and writes its answer to another file, atomically. A child outlives its
parent by at most the requests' time-outs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

if __package__:
    from . import flamenco, ocio_share
else:  # run as a script by Call: this folder is on sys.path
    import flamenco  # type: ignore[no-redef]
    import ocio_share  # type: ignore[no-redef]

CANCEL_FILE = "cancel"  # in the call's folder: the parent wants no job submitted any more


# --- the phases (child side) -----------------------------------------------------------------------
def submit(
    client: flamenco.Client,
    folder: str,
    job: dict[str, Any],
    worker_tag: str,
    job_file: str,
    job_text: str,
    ocio_home: str = "",
) -> list[Any]:
    """Check the Manager and its job type, write the engine job file, submit; [job as sent, Job].

    With `ocio_home`, the job's OCIO config is first copied there (ocio_share) and the job file names
    the copy: the workers cannot read a config inside this Blender's installation."""
    client.version()
    job_type = client.job_type()
    known = {s.get("key") for s in job_type.get("settings") or [] if isinstance(s, dict)}
    missing = [k for k in job["settings"] if k not in known]
    if missing:
        raise flamenco.FlamencoError(
            f"the Flamenco Manager at {client.url} has an older '{flamenco.JOB_TYPE}' job type "
            f"(no setting {', '.join(missing)}): copy farm/flamenco/{flamenco.JOB_TYPE}.js from the "
            "TokenFlow extension's folder into its scripts/ folder again and restart the Manager"
        )
    job = dict(job)
    if job_type.get("etag"):
        job["type_etag"] = str(job_type["etag"])
    if worker_tag:
        job["worker_tag"] = client.worker_tag_id(worker_tag)
    if os.path.exists(os.path.join(folder, CANCEL_FILE)):  # cancelled while we asked around
        raise flamenco.FlamencoError("cancelled before submitting")
    try:
        job_text = ocio_share.share_job(job_text, ocio_home)
    except ocio_share.ShareError as exc:
        raise flamenco.FlamencoError(str(exc)) from exc
    _write_job_file(job_file, job_text)
    try:
        answer = client.submit(job)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(job_file)  # a job the Manager never took leaves nothing behind
        raise
    return [job, answer]


def poll(client: flamenco.Client, folder: str, job_id: str) -> list[Any]:
    """[Job, its tasks while it is active (else None)]."""
    job = client.job(job_id)
    tasks = None
    if str(job.get("status") or "") == "active":
        with contextlib.suppress(flamenco.FlamencoError):  # progress is a nicety
            tasks = client.tasks(job_id)
    return [job, tasks]


def cancel(client: flamenco.Client, folder: str, job_id: str, reason: str) -> None:
    client.set_status(job_id, flamenco.CANCEL_REQUESTED, reason)


PHASES = {"submit": submit, "poll": poll, "cancel": cancel}


def _write_job_file(job_file: str, job_text: str) -> None:
    try:
        os.makedirs(os.path.dirname(job_file), exist_ok=True)
        with open(job_file, "x", encoding="utf-8") as fh:  # never overwrite another job's
            fh.write(job_text)
    except OSError as exc:
        raise flamenco.FlamencoError(
            f"cannot write the job file {job_file}: {exc.strerror or exc}; the output folder "
            "must be writable shared storage"
        ) from exc


def main(request_path: str, answer_path: str) -> int:
    """Child: run the request in `request_path`, write {"value": ...} or {"error": ..., "status": ...}."""
    with open(request_path, encoding="utf-8") as fh:
        req = json.load(fh)
    try:
        client = flamenco.Client(req["url"], timeout=float(req["timeout"]))
        answer: dict[str, Any] = {
            "value": PHASES[req["phase"]](client, os.path.dirname(request_path), *req["args"])
        }
    except flamenco.FlamencoError as exc:
        answer = {"error": str(exc), "status": exc.status}
    except Exception as exc:  # reported to the artist with its type
        answer = {"error": f"{type(exc).__name__}: {exc}", "status": None, "unexpected": True}
    tmp = answer_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(answer, fh)
    os.replace(tmp, answer_path)
    return 0


# --- the parent side -------------------------------------------------------------------------------
class CallError(flamenco.FlamencoError):
    """A child that ended without an answer (killed, crashed, no Python): not the Manager's word."""


class Call:
    """One phase in a child process; when `done`, its `value` or its `error` (a FlamencoError)."""

    def __init__(self, phase: str, url: str, timeout: float, *args: Any, python: str = "") -> None:
        self.phase = phase
        self.value: Any = None
        self.error: flamenco.FlamencoError | None = None
        self.started = time.monotonic()
        self._proc: subprocess.Popen[bytes] | None = None
        self._folder = ""
        python = python or sys.executable
        try:
            self._folder = tempfile.mkdtemp(prefix=f"tokenflow-farm-{phase}-")
            self._answer = os.path.join(self._folder, "answer.json")
            request = os.path.join(self._folder, "request.json")
            with open(request, "w", encoding="utf-8") as fh:
                json.dump({"phase": phase, "url": url, "timeout": timeout, "args": list(args)}, fh)
            with open(os.path.join(self._folder, "stderr.txt"), "wb") as err:
                # -E -s: no PYTHON* variables, no user site; this file's folder is first on sys.path.
                self._proc = subprocess.Popen(
                    [python, "-E", "-s", os.path.abspath(__file__), request, self._answer],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
        except OSError as exc:  # a full temporary disk, no Python at sys.executable
            if self._folder:
                shutil.rmtree(self._folder, ignore_errors=True)
            self.error = CallError(f"cannot start the {phase} request ({python}): {exc.strerror or exc}")
        self._collected = self._proc is None

    @property
    def done(self) -> bool:
        if not self._collected and self._proc is not None and self._proc.poll() is not None:
            self._collect()
        return self._collected

    @property
    def returncode(self) -> int | None:
        """The child's exit code once it has ended (None while it runs, or if it never started)."""
        return None if self._proc is None else self._proc.poll()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the answer; True if there is one now."""
        if self._proc is not None and not self._collected:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
        return self.done

    def cancel_submission(self) -> None:
        """Ask a submit in flight to submit nothing if it has not got that far (see :func:`submit`)."""
        if not self._collected:
            with contextlib.suppress(OSError), open(os.path.join(self._folder, CANCEL_FILE), "w"):
                pass

    def kill(self) -> None:
        """End the child now (a request whose answer no longer matters); idempotent."""
        if self._proc is not None and not self._collected:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            self._collect()

    def _collect(self) -> None:
        self._collected = True
        try:
            with open(self._answer, encoding="utf-8") as fh:
                answer = json.load(fh)
        except (OSError, ValueError):
            code = self._proc.returncode if self._proc is not None else None
            tail = ""
            with contextlib.suppress(OSError), open(os.path.join(self._folder, "stderr.txt"), "rb") as fh:
                tail = fh.read()[-600:].decode("utf-8", "replace").strip()
            self.error = CallError(
                f"the {self.phase} request process ended without an answer (exit code "
                f"{code}){': ' + tail if tail else ''}"
            )
        else:
            if "error" in answer:
                self.error = flamenco.FlamencoError(str(answer["error"]), status=answer.get("status"))
            else:
                self.value = answer.get("value")
        shutil.rmtree(self._folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
