"""The warm engine, `python -m engine serve`, as a real subprocess: one process, job after job.

Each test drives the server through its stdin and reads its events; the model is the tiny
random-weight one and the jobs are a few real frames at 64 px with 2-3 steps.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from engine import protocol
from engine.cache.memo import Bounded, tensor_bytes
from tests.engine.conftest import ROOT, engine_command

WAIT = 240.0  # a guard against a hang, not a measurement


class Serve:
    """A `python -m engine serve` child with its events on a queue."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            engine_command("serve", *args),
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = protocol.parse_event(line)
            if event is not None:
                self.events.put(event)
        self.events.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def next(self) -> dict[str, Any] | None:
        return self.events.get(timeout=WAIT)

    def until(self, *kinds: str) -> list[dict[str, Any]]:
        """Events up to and including the first of `kinds` (fails if the process ends first)."""
        seen: list[dict[str, Any]] = []
        while True:
            event = self.next()
            assert event is not None, f"the server ended while waiting for {kinds}: {seen[-3:]}"
            seen.append(event)
            if event["event"] in kinds:
                return seen

    def job(self, **fields: Any) -> list[dict[str, Any]]:
        """Send a job and return its events up to the `ready` that follows it."""
        self.send(json.dumps(fields))
        return self.until(protocol.EVENT_READY)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def _job(frames: list[Path], model: Path, out: Path, **fields: Any) -> dict[str, Any]:
    base = dict(
        frames=[str(f) for f in frames],
        output=str(out),
        prompt="a watercolor painting",
        source_prompt="a city street",
        model=str(model),
        device="cpu",
        cache_dir=str(out.parent / "cache"),
        steps=2,
        size=64,
        keyframe_stride=4,
        chunk_size=4,
        stage="preview",
    )
    return {**base, **fields}


def _into_unet_work(server: Serve) -> None:
    """Read events until the job's first UNet call (inversion or denoising)."""
    while True:
        event = server.next()
        assert event is not None and event["event"] not in ("done", "error", "ready"), event
        if event["event"] == protocol.EVENT_PROGRESS and event["stage"] in ("inversion", "keyframes"):
            return


@pytest.fixture(scope="module")
def server():
    srv = Serve("--idle-timeout", "0")
    first = srv.next()
    assert first is not None and first["event"] == protocol.EVENT_READY
    assert first["model"] is None and first["loads"] == 0
    yield srv
    srv.close()


def test_two_jobs_in_one_process_load_the_model_once(server, tiny_model_dir, city16, tmp_path):
    frames = city16[:6]
    first = server.job(**_job(frames, tiny_model_dir, tmp_path / "a"))
    ready1 = first[-1]
    assert first[-2]["event"] == "done", first[-3:]
    second = server.job(**_job(frames, tiny_model_dir, tmp_path / "b", prompt="a snowy street"))
    done2, ready2 = second[-2], second[-1]
    assert done2["event"] == "done" and Path(done2["output"]).is_dir()
    assert ready2["pid"] == ready1["pid"] == server.proc.pid
    assert ready2["loads"] == ready1["loads"] and ready1["model"] == str(tiny_model_dir)
    assert ready2["jobs"] == ready1["jobs"] + 1
    # The same events as a one-shot run, the started event included.
    assert [e["event"] for e in second if e["event"] in ("started", "keyframes", "preview")] == [
        "started",
        "keyframes",
        "preview",
    ]
    # The second edit inverted nothing: its inversions came from memory (nothing read twice).
    assert done2["stats"]["inversion_unet_frames"] == 0 and done2["stats"]["cache_misses"] == 0
    assert ready2["inversions"] >= 2 and ready2["prompts"] >= 3


def test_a_bad_line_gets_an_error_and_the_server_stays_ready(server, tiny_model_dir, city16, tmp_path):
    for line in ("this is no job", json.dumps({"frames": [], "output": "x", "prompt": "p"}), "[1, 2]"):
        server.send(line)
        events = server.until(protocol.EVENT_READY)
        assert [e["event"] for e in events] == ["error", "ready"], events
        assert events[0]["kind"] == "bad_input" and events[0]["message"]
    events = server.job(**_job(city16[:4], tiny_model_dir, tmp_path / "ok"))
    assert events[-2]["event"] == "done" and events[-1]["pid"] == server.proc.pid


def test_another_model_is_loaded_in_place_of_the_first(server, tiny_model_dir, city16, tmp_path):
    from engine.model.tiny_model import make_tiny_model

    other = make_tiny_model(tmp_path / "other", seed=7)
    frames = city16[:4]
    before = server.job(**_job(frames, tiny_model_dir, tmp_path / "a"))[-1]
    switched = server.job(**_job(frames, other, tmp_path / "b"))
    ready = switched[-1]
    assert switched[-2]["event"] == "done"
    assert ready["model"] == str(other) and ready["loads"] == before["loads"] + 1
    back = server.job(**_job(frames, tiny_model_dir, tmp_path / "c"))[-1]
    assert back["model"] == str(tiny_model_dir) and back["loads"] == before["loads"] + 2
    assert back["pid"] == before["pid"]


def test_cancel_stops_the_job_not_the_process(server, tiny_model_dir, city16, tmp_path):
    out = tmp_path / "long"
    long_job = _job(city16[:8], tiny_model_dir, out, stage="propagate", steps=400)
    server.send(json.dumps(long_job))
    _into_unet_work(server)
    server.send(protocol.CANCEL_LINE)
    events = server.until(protocol.EVENT_READY)
    assert [e["event"] for e in events[-2:]] == ["cancelled", "ready"]
    assert events[-1]["pid"] == server.proc.pid and server.proc.poll() is None
    assert not out.exists() and not list(tmp_path.glob(".long.tmp-*"))
    # A cancel while idle is harmless; the next job runs in the same process.
    server.send(protocol.CANCEL_LINE)
    after = server.job(**_job(city16[:4], tiny_model_dir, tmp_path / "next"))
    assert after[-2]["event"] == "done" and after[-1]["pid"] == server.proc.pid


def test_end_of_stdin_cancels_the_job_and_exits(tiny_model_dir, city16, tmp_path):
    srv = Serve("--idle-timeout", "0")
    try:
        assert srv.next()["event"] == protocol.EVENT_READY
        out = tmp_path / "eof"
        srv.send(json.dumps(_job(city16[:8], tiny_model_dir, out, stage="propagate", steps=400)))
        _into_unet_work(srv)
        srv.proc.stdin.close()  # the caller is gone
        assert srv.proc.wait(WAIT) == 0
        rest = []
        while (event := srv.next()) is not None:
            rest.append(event["event"])
        assert "cancelled" in rest and "done" not in rest
        assert not out.exists() and not list(tmp_path.glob(".eof.tmp-*"))
    finally:
        srv.close()


def test_unload_and_idle_timeout_exit(tmp_path):
    idle = Serve("--idle-timeout", "1")
    unload = Serve("--idle-timeout", "0")
    try:
        assert idle.next()["event"] == protocol.EVENT_READY
        assert unload.next()["event"] == protocol.EVENT_READY
        unload.send(protocol.UNLOAD_LINE)
        assert unload.proc.wait(WAIT) == 0
        assert idle.proc.wait(WAIT) == 0  # nothing sent, stdin still open: the idle timeout ends it
        assert idle.next() is None
    finally:
        idle.close()
        unload.close()


def test_bounded_memory_drops_the_least_recently_used():
    import torch

    memo = Bounded(3 * 4 * 16, tensor_bytes)  # three 16-float tensors
    for name in "abc":
        memo.put(name, torch.zeros(16))
    assert memo.get("a") is not None  # a is now the most recent
    memo.put("d", torch.zeros(16))
    assert "b" not in memo and {"a", "c", "d"} <= {k for k in "abcd" if k in memo}
    memo.put("huge", torch.zeros(1000))  # larger than the whole cache: not kept, nothing dropped
    assert "huge" not in memo and len(memo) == 3
