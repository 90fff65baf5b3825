"""The plain job controller against small stand-in children (fast; the real engine is in test_engine_e2e)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .helpers import MODULE, process_gone


@pytest.fixture
def ctl(ext):
    return sys.modules[f"{MODULE}.tokenflow_blender.runs.task"]


@pytest.fixture
def process(ext):
    return sys.modules[f"{MODULE}.tokenflow_blender.runs.process"]


@pytest.fixture
def registry(ext):
    return sys.modules[f"{MODULE}.tokenflow_blender.runs.registry"]


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _task(ctl, tmp_path: Path, *argvs: list[str], **kwargs):
    steps = [ctl.Step(f"step {i}", argv) for i, argv in enumerate(argvs)]
    return ctl.ProcessTask(kind="test", steps=steps, log_dir=str(tmp_path / "logs"), **kwargs)


EVENTS = """
import json, sys
def ev(**kw): print(json.dumps(kw), flush=True)
print("a stray line")
ev(event="started", device="cpu", dtype="float32", frames=3, width=64, height=64)
ev(event="progress", stage="inversion", step=1, total=2, elapsed=0.1, eta=1.0)
ev(event="progress", stage="inversion", step=2, total=2, elapsed=0.2, eta=0.5)
print("some log", file=sys.stderr)
ev(event="done", output="/x", files=["/x/a.png"], keyframes=[0], stats={"inversion_unet_frames": 0})
"""


def test_events_progress_and_done(ctl, tmp_path) -> None:
    seen, finished = [], []
    task = _task(
        ctl,
        tmp_path,
        _child(EVENTS),
        on_event=lambda t, e: seen.append(e["event"]),
        on_finish=finished.append,
    )
    task.start()
    assert task.wait(30)
    assert task.state == ctl.DONE and task.returncode == 0 and finished == [task]
    assert seen == ["started", "progress", "progress", "done"]
    assert task.result["stats"]["inversion_unet_frames"] == 0
    assert task.progress == 1.0 and task.lines == ["a stray line"]
    assert "some log" in task.log_tail()


def test_error_event(ctl, tmp_path) -> None:
    code = """
    import json, sys
    print(json.dumps({"event": "error", "kind": "model", "message": "no model at /nope; give a folder"}))
    sys.exit(5)
    """
    task = _task(ctl, tmp_path, _child(code)).start()
    assert task.wait(30)
    assert (task.state, task.error_kind, task.returncode) == (ctl.ERROR, "model", 5)
    assert task.message == "no model at /nope; give a folder"


def test_crash_without_event_reports_the_log(ctl, tmp_path) -> None:
    task = _task(ctl, tmp_path, _child("import sys; print('Traceback: boom', file=sys.stderr); sys.exit(1)"))
    task.start()
    assert task.wait(30)
    assert task.state == ctl.ERROR and "exit code 1" in task.message and "boom" in task.message


def test_cannot_start(ctl, tmp_path) -> None:
    task = _task(ctl, tmp_path, [str(tmp_path / "no-such-python"), "-V"]).start()
    assert task.state == ctl.ERROR and task.error_kind == "start" and "cannot start" in task.message


def test_steps_run_in_order_and_stop_at_a_failure(ctl, tmp_path) -> None:
    mark = tmp_path / "order.txt"
    write = "import sys; open(sys.argv[1], 'a').write(sys.argv[2])"
    ok = _task(ctl, tmp_path, _child(write) + [str(mark), "a"], _child(write) + [str(mark), "b"]).start()
    assert ok.wait(30) and ok.state == ctl.DONE and mark.read_text() == "ab"
    bad = _task(ctl, tmp_path, _child("raise SystemExit(2)"), _child(write) + [str(mark), "c"]).start()
    assert bad.wait(30) and bad.state == ctl.ERROR and bad.stage == "step 0" and mark.read_text() == "ab"


STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ignores SIGTERM and the stdin line: must be killed
out = sys.argv[1]
os.makedirs(os.path.join(os.path.dirname(out), "." + os.path.basename(out) + ".tmp-%d" % os.getpid()))
print('{"event": "progress", "stage": "keyframes", "step": 1, "total": 9, "eta": 9}', flush=True)
time.sleep(120)
"""

POLITE = """
import os, shutil, sys, threading, json
out = sys.argv[1]
tmp = os.path.join(os.path.dirname(out), "." + os.path.basename(out) + ".tmp-%d" % os.getpid())
os.makedirs(tmp)
print(json.dumps({"event": "progress", "stage": "inversion", "step": 1, "total": 9}), flush=True)
for line in sys.stdin:
    if line.strip() == "cancel":
        shutil.rmtree(tmp)
        print(json.dumps({"event": "cancelled", "message": "cancelled by request"}), flush=True)
        sys.exit(3)
"""


@pytest.mark.parametrize("script", ["polite", "stubborn"])
def test_cancel(ctl, tmp_path, script) -> None:
    out = tmp_path / "result"
    code = POLITE if script == "polite" else STUBBORN
    task = _task(ctl, tmp_path, _child(code) + [str(out)], output=str(out), cancel_timeout=1.0).start()
    deadline = time.monotonic() + 30
    while not task.events and time.monotonic() < deadline:
        task.tick()
        time.sleep(0.02)
    assert task.events, task.log_tail()
    pid = task.pid
    task.cancel()
    assert task.wait(30)
    assert task.state == ctl.CANCELLED
    assert process_gone(pid)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["logs"]  # no temporary folder left


def test_pid_files_and_reaping(ctl, process, tmp_path) -> None:
    pid_dir = tmp_path / "run"
    task = _task(ctl, tmp_path, _child("import time; time.sleep(30)"), pid_dir=str(pid_dir)).start()
    assert (pid_dir / f"{task.pid}.pid").is_file()
    task.shutdown(timeout=1.0)
    assert not task.running and not list(pid_dir.iterdir())
    # A child that a crashed Blender left behind: its PID file lets the next start end it.
    argv = _child("import time; time.sleep(60)")
    orphan = subprocess.Popen(argv)
    (pid_dir / f"{orphan.pid}.pid").write_text(json.dumps({"pid": orphan.pid, "argv": argv}))
    (pid_dir / "999999.pid").write_text(json.dumps({"pid": 999999, "argv": ["x", "y"]}))
    (pid_dir / "bad.pid").write_text("garbage")
    try:
        assert process.reap_stale(str(pid_dir)) == [orphan.pid]
        assert orphan.wait(10) != 0
    finally:
        if orphan.poll() is None:
            orphan.kill()
    assert not list(pid_dir.iterdir())
    # A PID that now belongs to another program is never signalled.
    other = subprocess.Popen(_child("import time; time.sleep(60)"))
    (pid_dir / f"{other.pid}.pid").write_text(
        json.dumps({"pid": other.pid, "argv": ["python", "-m", "engine"]})
    )
    try:
        assert process.reap_stale(str(pid_dir)) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_registry_refuses_a_second_task_in_a_slot(ctl, registry, tmp_path) -> None:
    task = _task(ctl, tmp_path, _child("import time; time.sleep(30)")).start()
    try:
        registry.put("unit-test", task)
        with pytest.raises(RuntimeError, match="already running"):
            registry.put("unit-test", _task(ctl, tmp_path, _child("pass")))
        assert registry.running("unit-test") is task
    finally:
        registry.shutdown_all(timeout=1.0)
    assert not task.running and registry.running("unit-test") is None
