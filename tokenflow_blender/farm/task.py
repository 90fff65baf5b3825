"""Submitting a job to a Flamenco Manager and watching it without blocking Blender (no bpy).

A :class:`FarmTask` keeps the contract of :class:`..runs.task.ProcessTask` (start, `tick()` that
returns True while running, cancel, shutdown; `state`, `message`, `progress`), so the registry and
Blender's timer drive it like an engine run. The requests of each step run in a short-lived child
process (:mod:`.calls`, which says why not a thread); `tick()` on the main thread picks up its
answer and starts the next step, one at a time, polling every `poll_interval` seconds. A Manager
that hangs therefore stalls nothing but this task, and a step that outlives its time-outs is ended.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...engine import protocol
from ..runs.task import CANCELLED, DONE, ERROR, PENDING, RUNNING, wait
from . import calls, flamenco

POLL_INTERVAL = 3.0
LOST_AFTER = 300.0  # seconds without an answer before giving up on a submitted job
CANCEL_REASON = "Cancelled from Blender (TokenFlow)"


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
    ocio_home: str = ""  # where the job's OCIO config is shared for the workers ('' : it already is)

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
        self._call: calls.Call | None = None
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
        self._call = self._request(
            "submit", self.job, self.worker_tag, self.job_file, self.job_text, self.ocio_home
        )
        return self

    def tick(self) -> bool:
        """Take in a finished request and start the next one. True while running."""
        if not self.running:
            return False
        call = self._call
        if call is not None:
            if not call.done:
                if time.monotonic() - call.started > self._call_limit():
                    call.kill()  # its own time-outs should have ended it: a hung request
                return True
            self._call = None
            getattr(self, f"_after_{call.phase}")(call)
        if self.running and self._call is None:
            if self._cancel_wanted and self.job_id:
                self._call = self._request("cancel", self.job_id, CANCEL_REASON)
            elif self.job_id and time.monotonic() >= self._next_poll:
                self._call = self._request("poll", self.job_id)
        return self.running

    def cancel(self, timeout: float | None = None) -> None:
        """Ask the Manager to cancel the job (`cancel-requested`); nothing is added afterwards.
        Before the job is submitted, the submission is dropped instead."""
        if not self.running or self._cancel_wanted:
            return
        self._cancel_wanted = True
        self.message = "Cancelling the farm job..."
        if self._call is not None and self._call.phase == "submit":
            self._call.cancel_submission()
        elif self._call is None and self.job_id:
            self._call = self._request("cancel", self.job_id, CANCEL_REASON)

    def wait(self, timeout: float, interval: float = 0.05) -> bool:
        return wait(self, timeout, interval)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop watching (quitting Blender, opening another file, unregistering). The farm job is
        not cancelled: it belongs to the farm now, and its frames land in `output` regardless."""
        call = self._call
        if not self.running:
            return
        submitting = call is not None and call.phase == "submit"
        if call is not None:
            # A submission or a cancel in flight ends first (the message says where things are);
            # a poll's answer no longer matters.
            if call.phase == "poll" or not call.wait(timeout):
                call.kill()
            self._call = None
            if submitting and call.value is not None:
                self._after_submit(call)
                if not self.running:
                    return
        if self.job_id:
            what = f"Stopped watching farm job {self.job_id}; it goes on, its frames will be in {self.output}"
        elif submitting and isinstance(call.error, calls.CallError):
            what = (
                "Stopped while submitting: the job may have reached the Manager; look for it in the "
                f"Manager's web interface ({self.client.url}); its frames would be in {self.output}"
            )
        else:
            what = "Stopped before the job was submitted"
        self._finish(CANCELLED, what)

    # -- requests (child processes: plain values only) ---------------------------------------------
    def _request(self, phase: str, *args: Any) -> calls.Call:
        return calls.Call(phase, self.client.url, self.client.timeout, *args)

    def _call_limit(self) -> float:
        """Seconds a step may take: its requests' time-outs (submit makes four), and a margin."""
        return 4 * self.client.timeout + 10.0

    # -- answers (main thread) ---------------------------------------------------------------------
    def _after_submit(self, call: calls.Call) -> None:
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

    def _after_poll(self, call: calls.Call) -> None:
        now = time.monotonic()
        self._next_poll = now + self.poll_interval
        error: BaseException | None = call.error
        result = None
        if error is None and str((call.value[0] or {}).get("status") or "") == flamenco.COMPLETED:
            try:
                result = read_result(self.output, self.frames)  # here: this computer must see it
            except ResultError as exc:
                error = exc
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
        job, tasks = call.value
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

    def _after_cancel(self, call: calls.Call) -> None:
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
    path = os.path.join(output, protocol.MANIFEST)
    if not os.path.isfile(path):
        raise ResultError(
            f"the farm job completed, but {output} holds no {protocol.MANIFEST} on this computer: the output "
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
