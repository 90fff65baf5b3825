"""Submit to Farm against a stand-in Flamenco Manager on 127.0.0.1: the submitted job, the real
engine commands the job type runs (prepare, two chunks, merge), the result back as a strip; a
Manager that is not running, a failed job, a cancel, and refusals before anything is written."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bpy
import pytest

from . import pngs, strip_time
from .conftest import engine_python
from .fake_flamenco import ETAG, GPU_TAG, JOB_TYPE, FakeManager, job_type_settings
from .helpers import MODULE, ROOT, add_image_strip, digest, raw_pixels, run_op, snapshot, strips_of

START, CHANNEL = 5, 2
SUBMIT, CANCEL = "sequencer.tokenflow_submit_farm", "sequencer.tokenflow_cancel_farm"


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def manager() -> Iterator[FakeManager]:
    fake = FakeManager()
    yield fake
    fake.close()


@pytest.fixture
def farm(tf) -> Iterator[Any]:
    """The extension package with the farm state reset; no farm task outlives a test."""
    prefs = bpy.context.preferences.addons[MODULE].preferences
    saved = (prefs.farm_manager_url, prefs.farm_worker_tag, prefs.farm_cache_dir)
    st = bpy.context.window_manager.tokenflow_job
    for name in ("farm_status", "farm_stage", "farm_message", "farm_job_id", "farm_web_page", "quality"):
        setattr(st, name, "")
    st.farm_progress = 0.0
    yield tf
    task = tf.runs.registry.running("farm")
    if task is not None:
        task.on_event = task.on_finish = None
        task.shutdown(1.0)
    prefs.farm_manager_url, prefs.farm_worker_tag, prefs.farm_cache_dir = saved


def _shot(scene: Any, frames: list[Path], out: Path, model: str = "unused-model") -> Any:
    strip = add_image_strip(scene, frames, channel=CHANNEL, start=START, name="city")
    s = scene.tokenflow
    s.prompt, s.source_prompt, s.model = "a watercolor painting", "a city street", model
    s.steps, s.size, s.keyframe_stride, s.chunk_size, s.farm_chunk_size = 2, 64, 4, 4, 8
    out.mkdir(exist_ok=True)
    s.output_dir = str(out) + os.sep
    return strip


@pytest.fixture
def flat(tmp_path: Path) -> list[Path]:
    """Twelve small PNG frames (no engine needed: the farm is a stand-in)."""
    return pngs.write_sequence(tmp_path / "seq", 12, 32, 24)


def _prefs(url: str, tag: str = "") -> None:
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.farm_manager_url, prefs.farm_worker_tag = url, tag


def _tick_until(tf, done: Callable[[], bool], timeout: float = 20.0) -> None:
    """What Blender's timer does, until `done()` (the bpy module never fires timers)."""
    end = time.monotonic() + timeout
    while not done():
        tf.jobs.tick()
        assert time.monotonic() < end, f"timed out; farm task says: {tf.runs.registry.get('farm').message}"
        time.sleep(0.02)


def _submit(tf, scene: Any) -> Any:
    assert run_op(SUBMIT, scene) == {"FINISHED"}
    task = tf.runs.registry.get("farm")
    task.poll_interval = 0.05
    _tick_until(tf, lambda: bool(task.job_id) or not task.running)
    return task


def _state() -> Any:
    return bpy.context.window_manager.tokenflow_job


def _free_port() -> int:
    """A port where nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the farm's part, as the job type runs it --------------------------------------------------------
def _chunk_ranges(count: int, chunk_size: int, stride: int) -> list[tuple[int, int]]:
    """chunkRanges() of the job type."""
    size = max(stride, -(-chunk_size // stride) * stride)
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def _run_farm_tasks(settings: dict[str, Any], cwd: Path) -> None:
    """prepare (--stage invert), the chunks (in parallel, as two workers would), merge."""
    python, launch = str(engine_python()), str(ROOT / "engine" / "launch.py")
    common = ["--prompt", settings["prompt"], "--model", settings["model"]]
    if settings["cache_dir"]:
        common += ["--cache-dir", settings["cache_dir"]]
    job_file, output = settings["job_file"], settings["output"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [python, launch, *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def check(proc: subprocess.Popen[str]) -> None:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{proc.args}: {out[-1000:]}{err[-3000:]}"

    check(run(["run", job_file, "--stage", "invert", *common]))
    ranges = _chunk_ranges(settings["frame_count"], settings["chunk_size"], settings["keyframe_stride"])
    dirs = [f"{output}.chunks/{a:06d}-{b:06d}" for a, b in ranges]
    chunks = [
        run(["run", job_file, "--frame-range", f"{a}:{b}", "--output", d, *common])
        for (a, b), d in zip(ranges, dirs, strict=True)
    ]
    for proc in chunks:
        check(proc)
    check(run(["merge", "--out", output, *dirs]))


# --- the tests ---------------------------------------------------------------------------------------
def test_submit_run_on_the_farm_and_import(farm, scene, assets, manager, tmp_path) -> None:
    tf, frames = farm, assets["frames"]
    out = tmp_path / "shared"
    strip = _shot(scene, frames, out, model=str(assets["model"]))
    _prefs(manager.url, tag="gpu")
    cache = tmp_path / "shared-cache"
    bpy.context.preferences.addons[MODULE].preferences.farm_cache_dir = str(cache)
    before_digest, before = digest(frames), snapshot(scene)

    task = _submit(tf, scene)
    assert task.running and task.job_id, task.message
    assert bpy.app.timers.is_registered(tf.session._timer)  # in Blender the timer ticks it
    (payload,) = manager.submitted
    assert payload["type"] == JOB_TYPE == "tokenflow-video-edit"
    assert payload["priority"] == 50 and payload["submitter_platform"] == platform.system().lower()
    assert payload["worker_tag"] == GPU_TAG["id"] and payload["type_etag"] == ETAG
    assert payload["metadata"]["tokenflow.strip"] == "city"
    assert payload["metadata"]["tokenflow.model"].startswith("SD 1.x")  # the family the workers will read
    settings = payload["settings"]
    assert list(settings) == job_type_settings()
    assert (settings["frame_count"], settings["keyframe_stride"], settings["chunk_size"]) == (12, 4, 8)
    assert (settings["engine_python"], settings["engine_dir"]) == ("{tokenflow_python}", "{tokenflow_engine}")
    assert settings["prompt"] == "a watercolor painting" and settings["model"] == str(assets["model"])
    output = Path(settings["output"])
    assert output.parent == out and not output.exists()
    assert settings["job_file"] == f"{output}.job.json"
    protocol = sys.modules[f"{MODULE}.engine.protocol"]
    job = protocol.Job.from_json(Path(settings["job_file"]).read_text())  # validates as the engine does
    assert (
        job.frames
        == [str(f) for f in frames]
        == [str(Path(strip.directory) / e.filename) for e in strip.elements]
    )
    assert (job.stage, job.device, job.evaluate, job.frame_range) == ("propagate", "auto", False, None)
    assert (job.prompt, job.model, job.steps, job.size) == (settings["prompt"], settings["model"], 2, 64)
    assert job.cache_dir == settings["cache_dir"] == str(cache)
    # The workers run only the engine's Python: the job names a checked copy of Blender's own OCIO
    # config on the shared output storage, not the config inside this Blender's installation.
    shared_config = Path(job.ocio_config)
    assert shared_config.parent.parent == out / "tokenflow-ocio" and shared_config.name == "config.ocio"
    bundled = Path(bpy.utils.resource_path("LOCAL"), "datafiles", "colormanagement")
    assert shared_config.read_bytes() == (bundled / "config.ocio").read_bytes()
    assert (shared_config.parent / "luts").is_dir()
    st = _state()
    assert (st.farm_status, st.farm_stage, st.farm_job_id) == ("RUNNING", "queued", task.job_id)

    # The farm works: the job goes active, its tasks run the real engine, then it completes.
    manager.set_status(task.job_id, "active", "running chunks")
    manager.set_tasks(
        task.job_id, [{"name": "prepare", "status": "completed"}, {"name": "chunk", "status": "active"}]
    )
    _tick_until(tf, lambda: st.farm_stage == "active" and st.farm_progress == 0.5)
    assert "running chunks" in st.farm_message
    _run_farm_tasks(settings, tmp_path)
    assert len(list(cache.rglob("*.safetensors"))) >= 12  # the prepare task filled the shared cache
    assert snapshot(scene) == before, "nothing is added before the Manager says the job completed"
    manager.set_status(task.job_id, "completed")
    _tick_until(tf, lambda: not task.running)

    assert task.state == "DONE", task.message
    assert st.farm_status == "DONE" and st.error == "" and st.farm_message.startswith("Result added")
    result = next(s for s in strips_of(scene) if s.name == st.result_strip)
    assert result.name.startswith("TF city: a watercolor")
    assert strip_time.span(result) == (START, START + 12)
    assert result.channel == CHANNEL + 1 and result.colorspace_settings.name == "sRGB"
    assert [e.filename for e in result.elements] == [f.stem + ".png" for f in frames]
    assert Path(bpy.path.abspath(result.directory)) == output
    manifest = json.loads((output / "tokenflow.json").read_text())
    assert manifest["job"]["ocio_config"] == str(shared_config)
    keys = manifest["keyframes"]
    assert keys == task.result["keyframes"] and (keys[0], keys[-1], len(keys)) == (0, 11, 4)
    assert sorted((m.name, m.frame) for m in scene.timeline_markers) == sorted(
        (f"TF key {k}", START + k) for k in keys
    )
    assert digest(frames) == before_digest, "the source frames must stay byte-identical"
    # the farm's result is a take of the strip, listed and selected as a local run's would be
    assert manifest["job"]["extra"]["take"]["source"] == "city"
    pg = scene.tokenflow_takes
    listed = pg.takes[pg.index]
    assert (Path(listed.folder), listed.source, listed.kind) == (output, "city", "shot")


def test_a_farm_job_limited_by_an_image_matte(farm, scene, assets, manager, tmp_path) -> None:
    """The matte's files go to the workers; every chunk keeps the source outside the matte."""
    tf, frames = farm, assets["frames"]
    out = tmp_path / "shared"
    strip = _shot(scene, frames, out, model=str(assets["model"]))
    roto = [pngs.write_split(tmp_path / "roto" / f"roto_{i + 1:04d}.png", 96, 54, 24) for i in range(12)]
    add_image_strip(scene, roto, channel=CHANNEL + 2, start=START, name="roto")
    scene.sequence_editor.active_strip = strip
    scene.tokenflow.matte = "roto"
    _prefs(manager.url)
    task = _submit(tf, scene)
    assert task.running and task.job_id, task.message
    settings = manager.submitted[0]["settings"]
    protocol = sys.modules[f"{MODULE}.engine.protocol"]
    job = protocol.Job.from_json(Path(settings["job_file"]).read_text())
    assert job.matte == [str(p) for p in roto] and job.matte_channel == "auto"
    _run_farm_tasks(settings, tmp_path)  # two chunks: frames 0-7 and 8-11
    manager.set_status(task.job_id, "completed")
    _tick_until(tf, lambda: not task.running)
    assert task.state == "DONE", task.message
    output = Path(settings["output"])
    changed = 0
    for src in frames:
        width, height, ref = raw_pixels(str(src))
        _, _, got = raw_pixels(str(output / src.name))
        for y in range(height):
            row = y * width * 4
            outside = slice(row + 48 * 4, row + width * 4)  # columns 48-95, far from the matte's 0-23
            assert got[outside] == ref[outside], (src.name, y)
            changed += sum(
                abs(a - b) > 0.01
                for a, b in zip(got[row : row + 24 * 4], ref[row : row + 24 * 4], strict=True)
            )
    assert changed > 100, "the edit changed nothing inside the matte"


def test_manager_not_running(farm, scene, flat, tmp_path) -> None:
    out = tmp_path / "shared"
    _shot(scene, flat, out)
    url = f"http://127.0.0.1:{_free_port()}"
    _prefs(url)
    before = snapshot(scene)
    assert run_op(SUBMIT, scene) == {"FINISHED"}  # the request runs in the background
    task = farm.runs.registry.get("farm")
    _tick_until(farm, lambda: not task.running, timeout=15)
    st = _state()
    assert task.state == "ERROR" and st.farm_status == "ERROR"
    assert url in st.error and "start the Manager" in st.error and "Preferences" in st.error
    assert snapshot(scene) == before
    assert list(out.iterdir()) == [], "no job file may be left behind"


def test_farm_job_fails(farm, scene, flat, tmp_path, manager) -> None:
    _shot(scene, flat, tmp_path / "shared")
    _prefs(manager.url)
    before = snapshot(scene)
    task = _submit(farm, scene)
    assert "worker_tag" not in manager.submitted[0]  # no tag set: any worker
    manager.set_status(task.job_id, "failed", "Task chunk-0-7 failed: out of memory")
    _tick_until(farm, lambda: not task.running)
    st = _state()
    assert task.state == "ERROR" and st.farm_status == "ERROR"
    assert "failed" in st.error and "out of memory" in st.error and f"{manager.url}/app/jobs/" in st.error
    assert snapshot(scene) == before


def test_cancel_a_farm_job(farm, scene, flat, tmp_path, manager) -> None:
    _shot(scene, flat, tmp_path / "shared")
    _prefs(manager.url)
    before = snapshot(scene)
    task = _submit(farm, scene)
    manager.set_status(task.job_id, "active")
    assert run_op(CANCEL, scene) == {"FINISHED"}
    _tick_until(farm, lambda: not task.running)
    assert manager.status_changes == [
        (task.job_id, {"status": "cancel-requested", "reason": "Cancelled from Blender (TokenFlow)"})
    ]
    st = _state()
    assert task.state == "CANCELLED" and st.farm_status == "CANCELLED" and st.error == ""
    assert "nothing was added" in st.farm_message
    manager.set_status(task.job_id, "completed")  # whatever the farm does next, nothing comes back
    for _ in range(5):
        farm.jobs.tick()
    assert snapshot(scene) == before


def test_quitting_stops_watching_but_leaves_the_farm_job(farm, scene, flat, tmp_path, manager) -> None:
    _shot(scene, flat, tmp_path / "shared")
    _prefs(manager.url)
    task = _submit(farm, scene)
    farm.runs.registry.shutdown_all(timeout=1.0)  # what quitting Blender and unregistering do
    assert task.state == "CANCELLED" and "goes on" in task.message and task.output in task.message
    assert manager.status_changes == [] and manager.jobs[task.job_id]["status"] == "queued"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("no-job-type", "copy farm/flamenco/tokenflow-video-edit.js"),
        ("not-flamenco", "is not a Flamenco 3 Manager"),
        ("unknown-tag", "no worker tag 'cpu-only'"),
    ],
    ids=["no-job-type", "not-flamenco", "unknown-tag"],
)
def test_manager_refuses_before_a_job_file_is_written(farm, scene, flat, tmp_path, kind, expected) -> None:
    fake = FakeManager(has_job_type=kind != "no-job-type", is_flamenco=kind != "not-flamenco")
    try:
        out = tmp_path / "shared"
        _shot(scene, flat, out)
        _prefs(fake.url, tag="cpu-only" if kind == "unknown-tag" else "")
        task = _submit(farm, scene)
        assert task.state == "ERROR" and expected in _state().error, _state().error
        assert fake.submitted == [] and list(out.iterdir()) == []
    finally:
        fake.close()


def test_config_that_cannot_be_shared_stops_the_submission(farm, scene, flat, tmp_path, manager) -> None:
    out = tmp_path / "shared"
    _shot(scene, flat, out)
    _prefs(manager.url)
    (out / "tokenflow-ocio").write_text("a file where the shared config folder should go")
    task = _submit(farm, scene)
    error = _state().error
    assert task.state == "ERROR" and "cannot copy Blender's colour config" in error, error
    assert str(out / "tokenflow-ocio") in error and "writable shared storage" in error
    assert manager.submitted == [] and sorted(p.name for p in out.iterdir()) == ["tokenflow-ocio"]


def _refused(tf, scene: Any, match: str) -> str:
    before = snapshot(scene)
    with pytest.raises(RuntimeError, match=match):
        run_op(SUBMIT, scene)
    assert tf.runs.registry.running("farm") is None
    assert snapshot(scene) == before
    return _state().error


def test_refusals_before_anything_is_sent(farm, scene, flat, tmp_path) -> None:
    out = tmp_path / "shared"
    _shot(scene, flat, out)
    # Online access off (the bpy module's default) and a Manager that is not local: refused.
    assert not bpy.app.online_access
    _prefs("http://farm.example.com:8080")
    msg = _refused(farm, scene, "online access is off")
    assert "farm.example.com" in msg and "Allow Online Access" in msg
    _prefs("not a url at all")
    assert "Preferences" in _refused(farm, scene, "is not a web address")
    # An unsaved file's results would go to the user folder, which no worker sees.
    _prefs(f"http://127.0.0.1:{_free_port()}")
    scene.tokenflow.output_dir = "//tokenflow/"
    assert "Save the .blend" in _refused(farm, scene, "Save the .blend")
    # Resample keyframes would make every chunk carry the whole shot: refused, with the way out.
    scene.tokenflow.output_dir = str(out) + os.sep
    scene.tokenflow.keyframe_mode = "resample"
    try:
        assert "set Keyframe Mode to 'Fixed'" in _refused(farm, scene, "farm would gain nothing")
    finally:
        scene.tokenflow.keyframe_mode = "fixed"
    assert list(out.iterdir()) == []


def test_flamenco_plain_parts(farm, tmp_path) -> None:
    fl = farm.farm.flamenco
    assert tuple(job_type_settings()) == fl.SETTING_KEYS, "flamenco.py and the job type disagree"
    for url in ("http://localhost:8080", "http://127.0.0.1:1", "http://192.168.1.10:8080", "http://[::1]:80"):
        assert fl.is_local(url), url
    for url in ("http://farm.example.com:8080", "https://8.8.8.8", "http://flamenco:8080"):
        assert not fl.is_local(url), url
    assert fl.normalize_url(" localhost:8080/ ") == "http://localhost:8080"
    with pytest.raises(fl.FlamencoError, match="bad port"):
        fl.normalize_url("http://localhost:99999")
    settings = fl.job_settings(
        job_file="/s/a.job.json",
        prompt="p",
        model="m",
        frame_count=3,
        keyframe_stride=2,
        chunk_size=4,
        output="/s/a",
    )
    job = fl.submitted_job("name", settings, submitter_platform="linux", metadata={"n": 1})
    assert job == {
        "name": "name",
        "type": "tokenflow-video-edit",
        "priority": 50,
        "submitter_platform": "linux",
        "settings": {
            **settings,
            "cache_dir": "",
            "engine_python": "{tokenflow_python}",
            "engine_dir": "{tokenflow_engine}",
        },
        "metadata": {"n": "1"},
    }
    # A result that is not where this computer looks, or is another shot's, is refused.
    read_result, error = farm.farm.task.read_result, farm.farm.task.ResultError
    with pytest.raises(error, match="same path"):
        read_result(str(tmp_path / "missing"), ["/f/a.png"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tokenflow.json").write_text(
        json.dumps({"stage": "propagate", "sources": ["/x/b.png"]})
    )
    with pytest.raises(error, match="another result"):
        read_result(str(tmp_path / "other"), ["/f/a.png"])


def test_requests_run_in_child_processes(farm, scene, flat, tmp_path, manager) -> None:
    """No Python thread of ours runs in Blender's process while a farm job is watched (farm/calls.py
    says why); a cancel during the submission submits nothing; a silent Manager and a killed request
    end with a message, and a request process never outlives its time-out."""
    calls = farm.farm.calls
    _shot(scene, flat, tmp_path / "shared")
    _prefs(manager.url)
    task = _submit(farm, scene)
    assert task.job_id and [t.name for t in threading.enumerate()] == ["MainThread"]
    farm.runs.registry.shutdown_all(timeout=1.0)

    # Cancelled while the child asks around: it writes no job file and submits nothing.
    job_file = tmp_path / "shared" / "x.job.json"
    job = {"name": "x", "settings": {k: "" for k in job_type_settings()}}
    call = calls.Call("submit", manager.url, 5.0, job, "", str(job_file), "{}")
    call.cancel_submission()
    assert call.wait(20) and call.value is None
    assert "cancelled before submitting" in str(call.error) and not job_file.exists()
    assert len(manager.submitted) == 1  # the first test's job only

    # A Manager that accepts connections and never answers: the child's own time-out ends it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        call = calls.Call("poll", url, 0.5, "0" * 36)
        assert call.wait(20), "a request process outlived its time-out"
        assert isinstance(call.error, farm.farm.flamenco.FlamencoError) and "no answer within 0.5 s" in str(
            call.error
        )
        # Killed (a Blender that stops watching): an error that says so, and no process left.
        call = calls.Call("poll", url, 30.0, "0" * 36)
        call.kill()
        assert (
            call.done and isinstance(call.error, calls.CallError) and "without an answer" in str(call.error)
        )
        assert call._proc.poll() is not None
