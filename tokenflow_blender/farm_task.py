"""Submitting a job to a Flamenco Manager and watching it without blocking Blender (no bpy).

A :class:`FarmTask` keeps the contract of :class:`.controller.ProcessTask` (start, `tick()` that
returns True while running, cancel, shutdown; `state`, `message`, `progress`), so the registry and
Blender's timer drive it like an engine run. Each HTTP request runs in a short-lived daemon
thread that touches only plain values; `tick()` on the main thread picks up its answer and starts
the next request, one at a time, polling every `poll_interval` seconds. A Manager that hangs
therefore stalls nothing but this task.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import controller, flamenco
from .controller import CANCELLED, DONE, ERROR, PENDING, RUNNING

MANIFEST = "tokenflow.json"  # what the engine (engine/runner.py, engine/merge.py) writes with a result
POLL_INTERVAL = 3.0
LOST_AFTER = 300.0  # seconds without an answer before giving up on a submitted job
CANCEL_REASON = "Cancelled from Blender (TokenFlow)"


class _Call:
    """One blocking function in a daemon thread; when `done`, its `value` or its `error`."""

    def __init__(self, phase: str, fn: Callable[[], Any]) -> None:
        self.phase = phase
        self.value: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True, name=f"tokenflow-{phase}")
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as exc:  # handed to the main thread, which reports it
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass(eq=False)  # identity: tasks are registry entries, not values
class FarmTask:
    """Write the engine job file, submit the Flamenco job, poll it, read its result.

    `job` is the SubmittedJob without `worker_tag` and `type_etag` (they need the Manager);
    `worker_tag` is a tag's name or UUID. `frames` are the shot's frames, to check that the
    result on disk belongs to this job. Callbacks get the task itself, on the main thread.
    """

    client: flamenco.Client
    job: dict[str, Any]
    job_file: str
    job_text: str
    output: str
    frames: list[str]
    worker_tag: str = ""
    poll_interval: float = POLL_INTERVAL
    lost_after: float = LOST_AFTER
    on_event: Callable[[FarmTask], None] | None = None
    on_finish: Callable[[FarmTask], None] | None = None
    context: dict[str, Any] = field(default_factory=dict)  # what the caller needs at the end

    kind: str = "farm"
    state: str = PENDING
    stage: str = ""  # the Flamenco job status once submitted
    progress: float = 0.0  # completed tasks / tasks
    message: str = ""
    error_kind: str = ""
    job_id: str = ""
    web_page: str = ""
    submitted: dict[str, Any] | None = None  # the SubmittedJob as sent
    result: dict[str, Any] | None = None  # like the engine's `done` event, from the manifest

    def __post_init__(self) -> None:
        self._call: _Call | None = None
        self._next_poll = 0.0
        self._last_answer = time.monotonic()
        self._cancel_wanted = False

    # -- the ProcessTask contract ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state in (PENDING, RUNNING)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_wanted

    def start(self) -> FarmTask:
        self.state = RUNNING
        self.stage = "submitting"
        self.message = f"Contacting the Flamenco Manager at {self.client.url}..."
        self._call = _Call("submit", self._submit)
        return self

    def tick(self) -> bool:
        """Take in a finished request and start the next one. True while running."""
        if not self.running:
            return False
        call = self._call
        if call is not None:
            if not call.done:
                return True
            self._call = None
            getattr(self, f"_after_{call.phase}")(call)
        if self.running and self._call is None:
            if self._cancel_wanted and self.job_id:
                self._call = _Call("cancel", self._cancel)
            elif self.job_id and time.monotonic() >= self._next_poll:
                self._call = _Call("poll", self._poll)
        return self.running

    def cancel(self, timeout: float | None = None) -> None:
        """Ask the Manager to cancel the job (`cancel-requested`); nothing is added afterwards.
        Before the job is submitted, the submission is dropped instead."""
        if not self.running or self._cancel_wanted:
            return
        self._cancel_wanted = True
        self.message = "Cancelling the farm job..."
        if self._call is None and self.job_id:
            self._call = _Call("cancel", self._cancel)

    def wait(self, timeout: float, interval: float = 0.05) -> bool:
        return controller.wait(self, timeout, interval)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop watching (quitting Blender, opening another file, unregistering). The farm job is
        not cancelled: it belongs to the farm now, and its frames land in `output` regardless."""
        call = self._call
        if not self.running:
            return
        if call is not None and call.phase == "submit":
            call.join(timeout)  # a submission in flight ends first: the message says where things are
            if call.done:
                self._call = None
                self._after_submit(call)
                if not self.running:
                    return
        if self.job_id:
            what = f"Stopped watching farm job {self.job_id}; it goes on, its frames will be in {self.output}"
        else:
            what = "Stopped before the job was submitted"
        self._finish(CANCELLED, what)

    # -- requests (worker threads: plain values only) ----------------------------------------------
    def _submit(self) -> tuple[dict[str, Any], dict[str, Any]]:
        client = self.client
        client.version()
        job_type = client.job_type()
        known = {s.get("key") for s in job_type.get("settings") or [] if isinstance(s, dict)}
        missing = [k for k in self.job["settings"] if k not in known]
        if missing:
            raise flamenco.FlamencoError(
                f"the Flamenco Manager at {client.url} has an older '{flamenco.JOB_TYPE}' job type "
                f"(no setting {', '.join(missing)}): copy farm/flamenco/{flamenco.JOB_TYPE}.js from the "
                "TokenFlow extension's folder into its scripts/ folder again and restart the Manager"
            )
        job = dict(self.job)
        if job_type.get("etag"):
            job["type_etag"] = str(job_type["etag"])
        if self.worker_tag:
            job["worker_tag"] = client.worker_tag_id(self.worker_tag)
        if self._cancel_wanted:  # cancelled while we asked around: submit nothing, write nothing
            raise flamenco.FlamencoError("cancelled before submitting")
        self._write_job_file()
        try:
            answer = client.submit(job)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(self.job_file)  # a job the Manager never took leaves nothing behind
            raise
        return job, answer

    def _write_job_file(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.job_file), exist_ok=True)
            with open(self.job_file, "x", encoding="utf-8") as fh:  # never overwrite another job's
                fh.write(self.job_text)
        except OSError as exc:
            raise flamenco.FlamencoError(
                f"cannot write the job file {self.job_file}: {exc.strerror or exc}; the output folder "
                "must be writable shared storage"
            ) from exc

    def _poll(self) -> tuple[dict[str, Any], list[dict[str, Any]] | None, dict[str, Any] | None]:
        job = self.client.job(self.job_id)
        status = str(job.get("status") or "")
        tasks = None
        if status == "active":
            with contextlib.suppress(flamenco.FlamencoError):  # progress is a nicety
                tasks = self.client.tasks(self.job_id)
        result = read_result(self.output, self.frames) if status == flamenco.COMPLETED else None
        return job, tasks, result

    def _cancel(self) -> None:
        self.client.set_status(self.job_id, flamenco.CANCEL_REQUESTED, CANCEL_REASON)

    # -- answers (main thread) ---------------------------------------------------------------------
    def _after_submit(self, call: _Call) -> None:
        if call.error is not None:
            if self._cancel_wanted:
                self._finish(CANCELLED, "Cancelled: nothing was submitted")
            else:
                self._finish(ERROR, _text(call.error, "submitting the farm job failed"), kind="submit")
            return
        job, answer = call.value
        self.submitted = job
        self.job_id = str(answer["id"])
        self.web_page = self.client.web_page(self.job_id)
        self._last_answer = time.monotonic()
        self._show_status(answer, None)

    def _after_poll(self, call: _Call) -> None:
        now = time.monotonic()
        self._next_poll = now + self.poll_interval
        error = call.error
        if error is not None:
            if isinstance(error, ResultError):
                self._finish(ERROR, str(error), kind="result")
            elif isinstance(error, flamenco.FlamencoError) and error.status == 404:
                self._finish(
                    ERROR,
                    f"the Flamenco Manager at {self.client.url} no longer knows farm job {self.job_id} "
                    f"(deleted?); its frames, if any, are in {self.output}",
                    kind="lost",
                )
            elif isinstance(error, flamenco.FlamencoError) and now - self._last_answer < self.lost_after:
                self.message = f"No answer from the Manager (retrying): {error}"  # a restart, a busy database
                self._emit()
            else:
                self._finish(
                    ERROR,
                    _text(error, "watching the farm job failed")
                    + f"; farm job {self.job_id} may still run, its frames will be in {self.output}",
                    kind="lost",
                )
            return
        self._last_answer = now
        job, tasks, result = call.value
        status = str(job.get("status") or "")
        if self._cancel_wanted and status in (flamenco.COMPLETED, flamenco.FAILED, flamenco.CANCELED):
            self._finish(
                CANCELLED, f"Cancelled: the farm job had already ended ({status}); nothing was added"
            )
        elif status == flamenco.COMPLETED:
            self.stage, self.result = status, result
            self._finish(DONE, f"Farm job {self.job_id} completed")
        elif status == flamenco.FAILED:
            activity = str(job.get("activity") or "").strip()
            self._finish(
                ERROR,
                "the farm job failed on the Flamenco Manager"
                + (f" ({activity})" if activity else "")
                + f": see its task logs at {self.web_page}; nothing was added",
                kind="failed",
            )
        elif status == flamenco.CANCELED:
            self._finish(CANCELLED, f"Farm job {self.job_id} was cancelled on the Manager: nothing was added")
        else:
            self._show_status(job, tasks)

    def _after_cancel(self, call: _Call) -> None:
        if call.error is not None:
            self._finish(
                ERROR,
                _text(call.error, "cancelling failed")
                + f"; cancel farm job {self.job_id} in the Manager's web interface: {self.web_page}",
                kind="cancel",
            )
        else:
            self._finish(CANCELLED, f"Cancel requested for farm job {self.job_id}: nothing was added")

    def _show_status(self, job: dict[str, Any], tasks: list[dict[str, Any]] | None) -> None:
        self.stage = str(job.get("status") or "queued")
        if tasks:
            done = sum(1 for t in tasks if t.get("status") == flamenco.COMPLETED)
            self.progress = max(self.progress, done / len(tasks))
        activity = str(job.get("activity") or "").strip()
        if not self._cancel_wanted:
            self.message = f"Farm job {self.stage}" + (f": {activity}" if activity else "")
        self._emit()

    def _emit(self) -> None:
        if self.on_event:
            self.on_event(self)

    def _finish(self, state: str, message: str, kind: str = "") -> None:
        self.state = state
        self.message = message
        if kind:
            self.error_kind = kind
        if state == DONE:
            self.progress = 1.0
        if self.on_finish:
            self.on_finish(self)


class ResultError(flamenco.FlamencoError):
    """The job completed but its result is not usable here (not shared, not this shot's)."""


def _text(error: BaseException, what: str) -> str:
    if isinstance(error, flamenco.FlamencoError):
        return str(error)
    return f"{what}: {type(error).__name__}: {error}"


def read_result(output: str, frames: list[str]) -> dict[str, Any]:
    """The merged result in `output` as the engine's `done` event would describe it.

    The merge task writes `output` atomically with its manifest; here it must be visible at the
    same path and hold these frames (compared by name: workers may mount the share elsewhere).
    """
    path = os.path.join(output, MANIFEST)
    if not os.path.isfile(path):
        raise ResultError(
            f"the farm job completed, but {output} holds no {MANIFEST} on this computer: the output "
            "folder must be on storage that this computer and the workers see under the same path"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ResultError(f"cannot read {path}: {exc}") from exc
    sources = [os.path.basename(str(s)) for s in manifest.get("sources") or []]
    if manifest.get("stage") != "propagate" or sources != [os.path.basename(f) for f in frames]:
        raise ResultError(
            f"{output} holds another result (stage {manifest.get('stage')!r}, {len(sources)} frames), "
            f"not this shot's {len(frames)} frames"
        )
    files = [str(f) for f in manifest.get("files") or []]
    return {
        "output": output,
        "files": files,
        "indices": manifest.get("indices", list(range(len(files)))),
        "keyframes": manifest.get("keyframes") or [],
        "stats": {"chunks": len(manifest.get("chunks") or [])},
        "metrics": None,  # the chunks' own measurements are not the shot's
    }
