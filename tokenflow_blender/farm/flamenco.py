"""Talking to a Flamenco 3.x Manager over its REST API, with the standard library only (no bpy).

The extension submits a `tokenflow-video-edit` job (the job type in `farm/flamenco/`) and watches
it; everything here is plain values in, plain values out, so tests drive it against a stand-in
Manager. Field names follow Flamenco's OpenAPI (`pkg/api/flamenco-openapi.yaml`): a
`SubmittedJob` is POSTed to `/api/v3/jobs`, a `Job` comes back with an `id` and a `status`.
"""

from __future__ import annotations

import ipaddress
import json
import platform
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

# The job type's name is its file name without `.js` (Flamenco's filenameToJobType).
JOB_TYPE = "tokenflow-video-edit"
# Exactly the keys of JOB_TYPE.settings in farm/flamenco/tokenflow-video-edit.js.
SETTING_KEYS = (
    "job_file",
    "prompt",
    "model",
    "frame_count",
    "keyframe_stride",
    "chunk_size",
    "output",
    "cache_dir",
    "engine_python",
    "engine_dir",
)
# Manager variables the job type expects; the Manager replaces them per worker platform.
ENGINE_PYTHON_VARIABLE = "{tokenflow_python}"
ENGINE_DIR_VARIABLE = "{tokenflow_engine}"
DEFAULT_URL = "http://localhost:8080"
DEFAULT_PRIORITY = 50
TIMEOUT = 5.0  # seconds per request: a Manager on the LAN answers in milliseconds

# Flamenco job statuses (JobStatus in the OpenAPI); every other one means "still going".
COMPLETED, FAILED, CANCELED = "completed", "failed", "canceled"
CANCEL_REQUESTED = "cancel-requested"

WHERE_TO_SET = "Preferences > Add-ons > TokenFlow > Flamenco Manager"


class FlamencoError(RuntimeError):
    """A request that did not work; the message names the Manager and says what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status when the Manager answered, else None


# --- addresses ---------------------------------------------------------------------------------
def normalize_url(url: str) -> str:
    """`http(s)://host[:port]` without a trailing slash; raise FlamencoError for anything else."""
    text = url.strip().rstrip("/")
    if text and "://" not in text:
        text = "http://" + text  # "localhost:8080" is what people type
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not re.fullmatch(r"[\w.:-]+", parts.hostname or ""):
        raise FlamencoError(
            f"the Flamenco Manager address {url.strip()!r} is not a web address: set it in "
            f"{WHERE_TO_SET}, e.g. {DEFAULT_URL}"
        )
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise FlamencoError(f"the Flamenco Manager address {url.strip()!r} has a bad port: {exc}") from exc
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def is_local(url: str) -> bool:
    """True for a Manager on this machine or a private network, named by `localhost` or an IP
    literal: reaching it is not "online access" in Blender's sense (the internet). A host name
    other than localhost could be anywhere, so it counts as online."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# --- the submission ------------------------------------------------------------------------------
def job_settings(
    *,
    job_file: str,
    prompt: str,
    model: str,
    frame_count: int,
    keyframe_stride: int,
    chunk_size: int,
    output: str,
    cache_dir: str = "",
    engine_python: str = ENGINE_PYTHON_VARIABLE,
    engine_dir: str = ENGINE_DIR_VARIABLE,
) -> dict[str, Any]:
    """The job type's settings; keyword-only so that no two of them can be swapped silently."""
    settings = {
        "job_file": job_file,
        "prompt": prompt,
        "model": model,
        "frame_count": int(frame_count),
        "keyframe_stride": int(keyframe_stride),
        "chunk_size": int(chunk_size),
        "output": output,
        "cache_dir": cache_dir,
        "engine_python": engine_python,
        "engine_dir": engine_dir,
    }
    assert tuple(settings) == SETTING_KEYS
    return settings


def submitted_job(
    name: str,
    settings: dict[str, Any],
    *,
    metadata: dict[str, str] | None = None,
    worker_tag: str = "",
    priority: int = DEFAULT_PRIORITY,
    type_etag: str = "",
    submitter_platform: str | None = None,
) -> dict[str, Any]:
    """A Flamenco `SubmittedJob`. `submitter_platform` lets the Manager apply two-way variables
    (paths per operating system); Flamenco's own add-on sends `platform.system().lower()`.
    `worker_tag` is the tag's UUID (the OpenAPI's format); empty lets every worker take it."""
    job: dict[str, Any] = {
        "name": name,
        "type": JOB_TYPE,
        "priority": int(priority),
        "submitter_platform": submitter_platform or platform.system().lower(),
        "settings": settings,
        "metadata": {str(k): str(v) for k, v in (metadata or {}).items()},
    }
    if type_etag:
        job["type_etag"] = type_etag
    if worker_tag:
        job["worker_tag"] = worker_tag
    return job


# --- the client ----------------------------------------------------------------------------------
class Client:
    """A few calls of the Manager's API. Blocking: Blender calls it in a child process
    (:mod:`.calls`), never in its own process."""

    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        self.url = normalize_url(url)
        self.timeout = timeout
        # No proxy: a Manager lives on the studio's network, and a proxy from the environment
        # would swallow requests to 127.0.0.1 or 192.168.x.x.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def web_page(self, job_id: str) -> str:
        """Where a person sees the job (and its task logs) in the Manager's web interface."""
        return f"{self.url}/app/jobs/{job_id}"

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; the decoded answer (None for an empty one). Raise FlamencoError."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise FlamencoError(
                f"the Flamenco Manager at {self.url} answered {method} {path} with HTTP {exc.code}: "
                f"{_error_text(exc)}",
                status=exc.code,
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise FlamencoError(self._unreachable(exc)) from exc
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise FlamencoError(
                f"the server at {self.url} answered {path} with something that is not JSON: "
                "is that address a Flamenco Manager?"
            ) from exc

    def _unreachable(self, exc: BaseException) -> str:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused: nothing listens there"
        elif isinstance(reason, TimeoutError):
            why = f"no answer within {self.timeout:g} s"
        elif isinstance(reason, socket.gaierror):
            why = "unknown host name"
        else:
            why = str(reason) or type(reason).__name__
        return (
            f"cannot reach the Flamenco Manager at {self.url} ({why}): start the Manager, "
            f"or set its address in {WHERE_TO_SET}"
        )

    # -- the calls ------------------------------------------------------------------------------
    def version(self) -> dict[str, Any]:
        """GET /api/v3/version: proves that a Flamenco Manager answers at this address."""
        try:
            answer = self.request("GET", "/api/v3/version")
        except FlamencoError as exc:
            if exc.status is None:
                raise
            raise FlamencoError(
                f"the server at {self.url} is not a Flamenco 3 Manager (GET /api/v3/version answered "
                f"HTTP {exc.status}): check the address in {WHERE_TO_SET}",
                status=exc.status,
            ) from exc
        if not isinstance(answer, dict) or "version" not in answer:
            raise FlamencoError(
                f"the server at {self.url} is not a Flamenco 3 Manager (no version in its answer): "
                f"check the address in {WHERE_TO_SET}"
            )
        return answer

    def job_type(self, name: str = JOB_TYPE) -> dict[str, Any]:
        """GET /api/v3/jobs/type/{name}: the installed job type (its settings and etag)."""
        try:
            answer = self.request("GET", f"/api/v3/jobs/type/{urllib.parse.quote(name)}")
        except FlamencoError as exc:
            if exc.status != 404:
                raise
            raise FlamencoError(
                f"the Flamenco Manager at {self.url} has no '{name}' job type: copy "
                f"farm/flamenco/{name}.js (in the TokenFlow extension's folder) into the Manager's "
                "scripts/ folder and restart the Manager",
                status=404,
            ) from exc
        return answer if isinstance(answer, dict) else {}

    def worker_tag_id(self, tag: str) -> str:
        """A worker tag's UUID from its UUID or its name (GET /api/v3/worker-mgt/tags)."""
        if is_uuid(tag):
            return tag
        answer = self.request("GET", "/api/v3/worker-mgt/tags") or {}
        tags = (answer.get("tags") or []) if isinstance(answer, dict) else []
        for entry in tags:
            if entry.get("name") == tag and entry.get("id"):
                return str(entry["id"])
        names = ", ".join(sorted(str(t.get("name")) for t in tags)) or "none"
        raise FlamencoError(
            f"the Flamenco Manager at {self.url} has no worker tag {tag!r} (its tags: {names}); "
            "set 'Worker Tag' in the extension's preferences to one of them, or leave it empty"
        )

    def submit(self, job: dict[str, Any]) -> dict[str, Any]:
        """POST /api/v3/jobs: the Manager compiles the job into tasks and answers with the Job."""
        answer = self.request("POST", "/api/v3/jobs", job)
        if not isinstance(answer, dict) or not answer.get("id"):
            raise FlamencoError(f"the Flamenco Manager at {self.url} accepted the job but sent no job id")
        return answer

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /api/v3/jobs/{id}: the Job, with its `status` and `activity`."""
        answer = self.request("GET", f"/api/v3/jobs/{urllib.parse.quote(job_id)}")
        return answer if isinstance(answer, dict) else {}

    def tasks(self, job_id: str) -> list[dict[str, Any]]:
        """GET /api/v3/jobs/{id}/tasks: one summary (name, status) per task."""
        answer = self.request("GET", f"/api/v3/jobs/{urllib.parse.quote(job_id)}/tasks")
        return list(answer.get("tasks") or []) if isinstance(answer, dict) else []

    def set_status(self, job_id: str, status: str, reason: str) -> None:
        """POST /api/v3/jobs/{id}/setstatus (a JobStatusChange), e.g. `cancel-requested`."""
        self.request(
            "POST",
            f"/api/v3/jobs/{urllib.parse.quote(job_id)}/setstatus",
            {"status": status, "reason": reason},
        )


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The Manager's own message (its Error schema: code, message), else the HTTP reason."""
    try:
        body = exc.read().decode("utf-8", "replace")
    except OSError:
        body = ""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return re.sub(r"\s+", " ", body).strip()[:200] or str(exc.reason)
