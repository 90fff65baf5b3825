"""A stand-in Flamenco 3 Manager on 127.0.0.1 for the farm tests (standard library only).

It answers the few calls the extension makes, with Flamenco's field names (pkg/api/
flamenco-openapi.yaml), and refuses a submission whose settings are not exactly the keys that
farm/flamenco/tokenflow-video-edit.js declares, as a Manager with that job type would.

The Manager runs in its own process (this file as a script): a server thread inside Blender's
process could take the GIL while `bpy.ops` runs Blender's C code, which crashes Blender (see
tokenflow_blender/farm/calls.py). Tests hold a :class:`FakeManager`, which starts that process and
reads and sets its state through `/_test/...` requests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
JOB_TYPE_FILE = ROOT / "farm" / "flamenco" / "tokenflow-video-edit.js"
JOB_TYPE = JOB_TYPE_FILE.stem  # Flamenco names a job type after its file
ETAG = "etag-0123"
GPU_TAG = {"id": "6f1d3c4e-7a52-4f5e-9a43-2d7f0b9a1c11", "name": "gpu", "description": "GPU workers"}
REQUIRED = ("name", "type", "priority", "submitter_platform")  # SubmittedJob's required fields


def job_type_settings(path: Path = JOB_TYPE_FILE) -> list[str]:
    """The setting keys of JOB_TYPE.settings in the job type's JavaScript, in order."""
    text = path.read_text(encoding="utf-8")
    block = text[text.index("settings: [") : text.index("],", text.index("settings: ["))]
    return re.findall(r'\{\s*key:\s*"(\w+)"', block)


class FakeManager:
    """The test's handle on a stand-in Manager process: its `url`, what it recorded (`submitted`,
    `jobs`, `status_changes`, `refused`), and job statuses and tasks set as the farm would."""

    def __init__(self, has_job_type: bool = True, is_flamenco: bool = True) -> None:
        flags = [f"--has-job-type={int(has_job_type)}", f"--is-flamenco={int(is_flamenco)}"]
        self._proc = subprocess.Popen(
            [sys.executable, "-E", "-s", __file__, *flags], stdout=subprocess.PIPE, text=True
        )
        self.url = self._proc.stdout.readline().strip()  # the server prints its address when ready
        if not self.url.startswith("http://"):
            self._proc.kill()
            raise RuntimeError(f"the stand-in Manager did not start: {self.url!r}")

    def _control(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + "/_test/" + path, data=data, method="POST" if data else "GET")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def _state(self, name: str) -> Any:
        return self._control("state")[name]

    @property
    def submitted(self) -> list[dict[str, Any]]:
        return self._state("submitted")

    @property
    def refused(self) -> list[str]:
        return self._state("refused")

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self._state("jobs")

    @property
    def status_changes(self) -> list[tuple[str, dict[str, Any]]]:
        return [(job_id, change) for job_id, change in self._state("status_changes")]

    def set_status(self, job_id: str, status: str, activity: str = "") -> None:
        self._control("status", {"job_id": job_id, "status": status, "activity": activity})

    def set_tasks(self, job_id: str, tasks: list[dict[str, Any]]) -> None:
        self._control("tasks", {"job_id": job_id, "tasks": tasks})

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()


class Manager:
    """The stand-in itself (in its own process): records submissions and status changes."""

    def __init__(self, has_job_type: bool = True, is_flamenco: bool = True) -> None:
        self.keys = job_type_settings()
        self.has_job_type = has_job_type
        self.is_flamenco = is_flamenco
        self.submitted: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, list[dict[str, Any]]] = {}
        self.status_changes: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def control(self, method: str, what: str, body: Any) -> tuple[int, Any]:
        """The tests' side door: read the recorded state, set a job's status or tasks."""
        with self.lock:
            if (method, what) == ("GET", "state"):
                return 200, {
                    "submitted": self.submitted,
                    "refused": self.refused,
                    "jobs": self.jobs,
                    "status_changes": self.status_changes,
                }
            if (method, what) == ("POST", "status"):
                self.jobs[body["job_id"]].update(status=body["status"], activity=body["activity"])
                return 200, None
            if (method, what) == ("POST", "tasks"):
                self.tasks[body["job_id"]] = body["tasks"]
                return 200, None
        return 404, {"code": 404, "message": f"no test control {what!r}"}

    # -- the API --------------------------------------------------------------------------------
    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.startswith("/_test/"):
            return self.control(method, path[len("/_test/") :], body)
        if not self.is_flamenco:
            return 404, "<html>not found</html>"
        if (method, path) == ("GET", "/api/v3/version"):
            return 200, {"version": "3.6-fake", "shortversion": "3.6", "name": "Test Manager", "git": "fake"}
        if (method, path) == ("GET", f"/api/v3/jobs/type/{JOB_TYPE}") and self.has_job_type:
            settings = [{"key": k, "type": "string"} for k in self.keys]
            return 200, {
                "name": JOB_TYPE,
                "label": "TokenFlow Video Edit",
                "settings": settings,
                "etag": ETAG,
            }
        if method == "GET" and path.startswith("/api/v3/jobs/type/"):
            return 404, {"code": 404, "message": "no such job type known"}
        if (method, path) == ("GET", "/api/v3/worker-mgt/tags"):
            return 200, {"tags": [GPU_TAG]}
        if (method, path) == ("POST", "/api/v3/jobs"):
            return self._submit(body)
        match = re.fullmatch(r"/api/v3/jobs/([0-9a-f-]{36})(/tasks|/setstatus)?", path)
        if match is None or match.group(1) not in self.jobs:
            return 404, {"code": 404, "message": f"no such thing: {path}"}
        job_id, sub = match.groups()
        with self.lock:
            if method == "GET" and sub is None:
                return 200, dict(self.jobs[job_id])
            if method == "GET" and sub == "/tasks":
                return 200, {"tasks": list(self.tasks.get(job_id, []))}
            if method == "POST" and sub == "/setstatus":
                if set(body) != {"status", "reason"}:
                    return 400, {"code": 400, "message": "a JobStatusChange has status and reason"}
                self.status_changes.append((job_id, body))
                self.jobs[job_id]["status"] = body["status"]
                return 204, None
        return 405, {"code": 405, "message": "method not allowed"}

    def _submit(self, job: dict[str, Any]) -> tuple[int, Any]:
        problem = ""
        missing = [k for k in REQUIRED if k not in job]
        if missing:
            problem = f"missing {missing}"
        elif job["type"] != JOB_TYPE or not self.has_job_type:
            problem = f"unknown job type {job['type']!r}"
        elif job.get("type_etag", ETAG) != ETAG:
            return 412, {"code": 412, "message": "rejecting job because its settings are outdated"}
        elif list(job.get("settings", {})) != self.keys:
            problem = f"settings {sorted(job.get('settings', {}))} are not the job type's {sorted(self.keys)}"
        elif "worker_tag" in job and job["worker_tag"] != GPU_TAG["id"]:
            problem = f"unknown worker tag {job['worker_tag']!r}"
        if problem:
            self.refused.append(problem)
            return 400, {"code": 400, "message": problem}
        job_id = str(uuid.uuid4())
        stored = {**job, "id": job_id, "status": "queued", "activity": "", "created": "now", "updated": "now"}
        with self.lock:
            self.submitted.append(job)
            self.jobs[job_id] = stored
        return 200, dict(stored)


def _handler(manager: Manager) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a stuck client cannot hold a server thread for longer

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                status, answer = 400, {"code": 400, "message": "not JSON"}
            else:
                status, answer = manager.answer(method, self.path, body)
            data = (
                b""
                if answer is None
                else (answer if isinstance(answer, str) else json.dumps(answer)).encode()
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str]) -> None:
    """Serve until terminated; print the address once listening (FakeManager waits for it)."""
    flags = dict(a.lstrip("-").split("=", 1) for a in argv)
    manager = Manager(flags.get("has-job-type", "1") == "1", flags.get("is-flamenco", "1") == "1")
    print(manager.url, flush=True)
    manager.server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main(sys.argv[1:])
