"""Faults injected the way they happen: a caller that dies, a killed engine, small or read-only disks,
a second run on the same output, odd file names, a closed stdout. Nothing is lost or left behind."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from engine import protocol
from tests.engine.conftest import ROOT, cli_events, engine_command, run_cli, run_in_process

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


# -- helpers ------------------------------------------------------------------------------------
@pytest.fixture
def shot(city16, tmp_path) -> Path:
    folder = tmp_path / "shot"
    folder.mkdir()
    for p in city16[:4]:
        shutil.copy(p, folder / p.name)
    return folder


def edit_args(tiny_model_dir: Path, frames: Path, out: Path, cache: Path, steps: int = 2) -> list[str]:
    return [
        "edit",
        "--frames",
        str(frames),
        "--prompt",
        "a red car",
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--steps",
        str(steps),
        "--size",
        "64",
        "--chunk-size",
        "2",
        "--keyframe-stride",
        "2",
        "--cache-dir",
        str(cache),
    ]


def start(args: list[str], **kwargs) -> subprocess.Popen[str]:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(
        engine_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=ENV,
        **kwargs,
    )


def wait_for_inversion(proc: subprocess.Popen[str]) -> list[dict]:
    """Read events until the run is inside its UNet work."""
    events = []
    assert proc.stdout is not None
    for line in proc.stdout:
        event = protocol.parse_event(line)
        if event:
            events.append(event)
            if event["event"] == "progress" and event["stage"] == "inversion":
                return events
    raise AssertionError(f"the run ended before its inversion: {events}")


def leftovers(folder: Path) -> list[str]:
    """What a run keeps beside its output: `.<name>.tmp-<host>-<pid>` and `.<name>.tmp-lock`."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.fixture
def mount(tmp_path):
    """mount(folder, size, read_only): a tiny tmpfs at `folder`, unmounted afterwards."""
    mounted: list[Path] = []

    def make(folder: Path, size: str = "64k", read_only: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
        mounted.append(folder)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Write into `folder` until its disk is full."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    with pytest.raises(OSError):
        (folder / "one-more").write_bytes(b"\0" * 4096)


def error_of(result: subprocess.CompletedProcess[str]) -> dict:
    (event,) = cli_events(result.stdout)
    assert event["event"] == "error", result.stdout
    assert result.returncode == protocol.EXIT_CODES[event["kind"]]
    return event


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a frame too large to decode)."""
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    chunk = len(ihdr[4:]).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    end = b"IEND"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk
        + (len(idat) - 4).to_bytes(4, "big")
        + idat
        + zlib.crc32(idat).to_bytes(4, "big")
        + (0).to_bytes(4, "big")
        + end
        + zlib.crc32(end).to_bytes(4, "big")
    )


# -- 4: a caller that dies; a killed engine --------------------------------------------------------
def test_engine_stops_when_its_parent_dies(tiny_model_dir, shot, tmp_path):
    """stdin is a pipe whose only writer is a process that is SIGKILLed mid-run (as Blender is)."""
    parent = subprocess.Popen(["sleep", "600"], stdout=subprocess.PIPE)
    out = tmp_path / "out"
    proc = start(edit_args(tiny_model_dir, shot, out, tmp_path / "cache", steps=200), stdin=parent.stdout)
    assert parent.stdout is not None
    parent.stdout.close()  # the pipe's writer is now only the "parent"
    wait_for_inversion(proc)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    rest = [protocol.parse_event(line) for line in proc.stdout]
    code = proc.wait(timeout=120)
    assert code == protocol.EXIT_CANCELLED
    assert rest[-1]["event"] == "cancelled" and "stdin closed" in rest[-1]["message"]
    assert len([e for e in rest if e and e["event"] == "progress"]) <= 1  # within one UNet call
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("stdin", ["devnull", "file", "pipe-closed-from-the-start"])
def test_stdin_at_eof_that_is_not_a_dying_caller_does_not_cancel(tiny_model_dir, shot, tmp_path, stdin):
    """Farm workers and CI run the engine with /dev/null, a file, or a pipe nobody ever writes to
    as stdin: EOF there means nothing."""
    out = tmp_path / "out"
    args = edit_args(tiny_model_dir, shot, out, tmp_path / "cache")
    if stdin == "devnull":
        result = run_cli(*args)
    elif stdin == "file":
        (tmp_path / "input.txt").write_text("")
        with open(tmp_path / "input.txt") as fh:
            result = run_cli(*args, stdin=fh)
    else:
        read_end, write_end = os.pipe()
        os.close(write_end)
        try:
            result = run_cli(*args, stdin=read_end)
        finally:
            os.close(read_end)
    assert result.returncode == 0, result.stdout + result.stderr
    assert cli_events(result.stdout)[-1]["event"] == "done"
    assert len(list(out.glob("*.png"))) == 4


def test_a_killed_engine_leaves_nothing_a_later_run_trips_over(tiny_model_dir, model, shot, tmp_path):
    out = tmp_path / "out"
    proc = start(edit_args(tiny_model_dir, shot, out, tmp_path / "cache", steps=200))
    wait_for_inversion(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = leftovers(tmp_path)
    assert f".out.tmp-{socket.gethostname()}-{proc.pid}" in left  # what kill -9 leaves
    # the later run: the same job (edit_args' settings), in this process with the session's model
    code, events = run_in_process(
        model,
        frames=[str(p) for p in sorted(shot.iterdir())],
        output=str(out),
        prompt="a red car",
        steps=2,
        size=64,
        chunk_size=2,
        keyframe_stride=2,
        cache_dir=str(tmp_path / "cache"),
    )
    assert code == protocol.EXIT_OK, events.getvalue()
    assert len(list(out.glob("*.png"))) == 4
    assert leftovers(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_merge_removes_only_temporary_folders_of_dead_runs_on_this_host(tmp_path):
    from engine.run.merge import merge

    host, dead = socket.gethostname(), _dead_pid()
    stale = [tmp_path / f".merged.tmp-{host}-{dead}", tmp_path / f".other.tmp-{host}-{dead}"]
    stale.append(tmp_path / f".merged.tmp-{dead}")  # the old naming, for our own destination
    kept = [
        tmp_path / f".merged.tmp-another-host-{dead}",  # maybe alive there (shared storage)
        tmp_path / f".other.tmp-{host}-{os.getppid()}",  # alive here
        tmp_path / f".other.tmp-{dead}",  # old naming, another destination: its host is unknown
    ]
    for folder in stale + kept:
        folder.mkdir()
        (folder / "f.png").write_bytes(b"x")
    # lock files: a killed run's (nobody holds it), a live run's (held), another program's
    for name, text in [("killed", f"pid {dead} on {host}"), ("alive", f"pid {os.getpid()} on {host}")]:
        (tmp_path / f".{name}.tmp-lock").mkdir()
        (tmp_path / f".{name}.tmp-lock" / "lock").write_text(text + "\n")
    (tmp_path / ".foreign.tmp-lock").mkdir()
    (tmp_path / ".foreign.tmp-lock" / "lock").write_text("something else\n")
    held = os.open(tmp_path / ".alive.tmp-lock" / "lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    part = tmp_path / "part"
    part.mkdir()
    (part / "a.png").write_bytes(b"png")
    job = protocol.Job(frames=["a.png"], output=str(part), prompt="x", keyframe_stride=1).to_dict()
    manifest = {"stage": "propagate", "job": job, "keyframes": [0], "frame_range": None}
    manifest.update({"frame_count": 1, "files": ["a.png"], "sources": ["a.png"]})
    (part / "tokenflow.json").write_text(json.dumps(manifest))
    try:
        merge([part], tmp_path / "merged")
    finally:
        os.close(held)
    assert (tmp_path / "merged" / "a.png").read_bytes() == b"png"
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert not (tmp_path / ".merged.tmp-lock").exists() and not (tmp_path / ".killed.tmp-lock").exists()
    assert (tmp_path / ".alive.tmp-lock" / "lock").exists()
    assert (tmp_path / ".foreign.tmp-lock" / "lock").exists()


# -- 10: two runs on one output ------------------------------------------------------------------
def test_a_second_run_on_the_same_output_is_refused_at_once(tiny_model_dir, shot, tmp_path):
    out = tmp_path / "out"
    first = start(edit_args(tiny_model_dir, shot, out, tmp_path / "cache", steps=200))
    try:
        wait_for_inversion(first)
        second = run_cli(*edit_args(tiny_model_dir, shot, out, tmp_path / "cache2"))
        error = error_of(second)
        assert error["kind"] == "bad_input"
        assert "already being written by another run" in error["message"]
        assert f"pid {first.pid}" in error["message"] and str(out) in error["message"]
        assert not (tmp_path / "cache2").exists() or not any((tmp_path / "cache2").iterdir())
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == protocol.EXIT_CANCELLED
    assert not out.exists() and leftovers(tmp_path) == []


# -- 5: output and cache locations checked before the model loads ---------------------------------
def test_unwritable_output_locations_are_refused_before_any_work(shot, tmp_path, mount):
    def refuse(out: Path, kind: str, *words: str) -> None:
        result = run_cli(
            "edit",
            "--frames",
            str(shot),
            "--prompt",
            "x",
            "--out",
            str(out),
            "--model",
            str(tmp_path / "no-model-needed"),
            "--cache-dir",
            str(tmp_path / "c"),
        )
        error = error_of(result)
        assert error["kind"] == kind, error
        for word in words:
            assert word in error["message"], error["message"]
        assert not out.exists()

    read_only = mount(tmp_path / "ro", read_only=True)
    refuse(read_only / "out", "disk", str(read_only), "read-only")
    refuse(read_only / "new" / "out", "disk", str(read_only / "new"), "read-only")  # parent not creatable
    full = mount(tmp_path / "full")
    fill(full)
    refuse(full / "out", "disk", str(full), "full")
    (tmp_path / "a-file").write_text("x")
    refuse(tmp_path / "a-file" / "out", "bad_input", str(tmp_path / "a-file"), "is a file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    refuse(tmp_path / "dangling" / "out", "bad_input", str(tmp_path / "dangling"), "does not exist")
    refuse(tmp_path / "dangling", "bad_input", str(tmp_path / "dangling"), "symbolic link")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_an_unusable_cache_folder(shot, tmp_path, mount):
    """A cache that is a file or a dangling link is refused; a read-only cache stops only the
    `invert` stage (whose whole point is the cache): an edit carries on without caching."""
    (tmp_path / "cache-file").write_text("x")
    base = ["--frames", str(shot), "--prompt", "x", "--out", str(tmp_path / "out")]
    error = error_of(run_cli("edit", *base, "--cache-dir", str(tmp_path / "cache-file")))
    assert error["kind"] == "bad_input" and "cache-file is a file" in error["message"]
    read_only = mount(tmp_path / "ro", read_only=True)
    job = protocol.Job(
        frames=[str(p) for p in sorted(shot.iterdir())],
        output="",
        prompt="x",
        stage="invert",
        cache_dir=str(read_only / "cache"),
    )
    (tmp_path / "job.json").write_text(job.to_json())
    error = error_of(run_cli("run", str(tmp_path / "job.json")))
    assert error["kind"] == "disk" and str(read_only / "cache") in error["message"]


def test_disk_full_while_writing_names_the_folder_and_the_space_needed(model, shot, tmp_path, mount):
    disk = mount(tmp_path / "small", size="48k")
    frames = sorted(str(p) for p in shot.iterdir())
    code, events = run_in_process(
        model,
        frames=frames,
        output=str(disk / "out"),
        prompt="a red car",
        cache_dir=str(tmp_path / "cache"),
        size=128,
        steps=2,
    )
    assert code == protocol.EXIT_CODES["disk"], events.getvalue()
    (error,) = events.events("error")
    assert error["kind"] == "disk" and str(disk) in error["message"]
    assert "needs about" in error["message"] and "of 4 frames" in error["message"]
    assert not events.events("done")
    assert sorted(p.name for p in disk.iterdir()) == []  # no result, no temporary folder, no lock


# -- 8: frames that cannot be decoded -------------------------------------------------------------
def test_empty_and_huge_frames_are_refused_by_name(model, shot, tmp_path):
    frames = sorted(shot.iterdir())
    frames[1].write_bytes(b"")
    code, events = run_in_process(
        model,
        frames=[str(p) for p in frames],
        output=str(tmp_path / "out"),
        prompt="x",
        cache_dir=str(tmp_path / "cache"),
    )
    (error,) = events.events("error")
    assert code == protocol.EXIT_BAD_INPUT and error["kind"] == "bad_input"
    assert str(frames[1]) in error["message"] and "empty (0 bytes)" in error["message"]
    png_header_only(frames[1], 40000, 40000)
    code, events = run_in_process(
        model,
        frames=[str(p) for p in frames],
        output=str(tmp_path / "out"),
        prompt="x",
        cache_dir=str(tmp_path / "cache"),
    )
    (error,) = events.events("error")
    assert code == protocol.EXIT_BAD_INPUT and error["kind"] == "bad_input"
    message = error["message"]
    assert str(frames[1]) in message and "40000x40000" in message and "8192 x 8192" in message
    assert "Scale the shot down" in message
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# -- 12: refusals that need no model import no model library ----------------------------------------
def test_refusals_that_need_no_model_import_neither_torch_nor_diffusers(shot, tmp_path):
    frames = sorted(shot.iterdir())
    (tmp_path / "exists").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "f.png").write_bytes(b"")
    huge = tmp_path / "huge"
    huge.mkdir()
    png_header_only(huge / "f.png", 40000, 40000)
    (tmp_path / "a-file").write_text("x")
    job = protocol.Job(frames=[str(p) for p in frames], output=str(tmp_path / "o"), prompt="x").to_dict()
    bad_field = tmp_path / "bad-field.json"
    bad_field.write_text(json.dumps({**job, "evaluate": "no"}))
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({**job, "frames": [*job["frames"], str(tmp_path / "gone.png")]}))
    cases = [
        ["edit", "--frames", str(shot), "--prompt", "x", "--out", str(tmp_path / "exists")],
        ["edit", "--frames", str(empty), "--prompt", "x", "--out", str(tmp_path / "o")],
        ["edit", "--frames", str(huge), "--prompt", "x", "--out", str(tmp_path / "o")],
        ["edit", "--frames", str(shot), "--prompt", "x", "--out", str(tmp_path / "a-file" / "o")],
        ["run", str(bad_field)],
        ["run", str(missing)],
        ["merge", "--out", str(tmp_path / "exists"), str(tmp_path / "o")],
    ]
    script = (
        "import contextlib, io, json, sys\n"
        "from engine import cli\n"
        "codes = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    codes.append(cli.main(argv))\n"
        "print(json.dumps({'codes': codes, 'heavy': sorted(m for m in ('torch', 'diffusers', "
        "'transformers') if m in sys.modules)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    lines = result.stdout.splitlines()
    report = json.loads(lines[-1])
    errors = cli_events("\n".join(lines[:-1]))
    assert [e["kind"] for e in errors] == ["bad_input"] * len(cases), result.stdout + result.stderr
    assert report["codes"] == [protocol.EXIT_BAD_INPUT] * len(cases)
    assert report["heavy"] == [], "a refusal that needs no model imported " + ", ".join(report["heavy"])


# -- 9 and 15: events are UTF-8 JSON whatever the names; `started` comes first -----------------------
def test_events_are_utf8_json_with_non_utf8_file_names(tiny_model_dir, shot, tmp_path):
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/odd\xff-\xe9t\xc3\xa9"))
    odd.mkdir()
    for i, p in enumerate(sorted(shot.iterdir())[:2]):
        shutil.copy(p, os.fsdecode(bytes(odd) + b"/frame\xff%d.png" % i))
    out = Path(os.fsdecode(bytes(tmp_path) + b"/out\xfe"))
    result = subprocess.run(
        engine_command(*edit_args(tiny_model_dir, odd, out, tmp_path / "cache")),
        capture_output=True,
        cwd=ROOT,
        env=ENV,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout.decode("utf-8")  # strict: raw non-UTF-8 bytes would raise here
    events = [json.loads(line) for line in text.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert kinds.index("started") < kinds.index("progress")
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert stages[:2] == ["read", "load"]
    started = events[0]
    assert (started["frames"], started["width"], started["height"]) == (2, 64, 64)
    assert started["device"] == "cpu" and started["source_width"] == 128
    done = events[-1]
    assert [os.fsencode(f) for f in done["files"]] == [
        bytes(out) + b"/frame\xff0.png",
        bytes(out) + b"/frame\xff1.png",
    ]
    assert all(os.path.isfile(f) for f in done["files"])


def test_an_engine_whose_stdout_closes_stops_and_leaves_nothing(tiny_model_dir, shot, tmp_path):
    out = tmp_path / "out"
    proc = start(edit_args(tiny_model_dir, shot, out, tmp_path / "cache", steps=200))
    wait_for_inversion(proc)
    proc.stdout.close()  # the caller stops reading: the engine's next event meets EPIPE
    code = proc.wait(timeout=120)
    assert code == protocol.EXIT_CANCELLED
    assert not out.exists() and leftovers(tmp_path) == []


class _ClosesAt:
    """A stream whose reader goes away when a given event is written."""

    def __init__(self, event: str) -> None:
        self.event, self.lines = event, []

    def write(self, text: str) -> None:
        if json.loads(text)["event"] == self.event:
            raise BrokenPipeError(32, "Broken pipe")
        self.lines.append(text)

    def flush(self) -> None:
        pass


def test_a_result_is_never_left_without_its_done_event(model, shot, tmp_path):
    from engine.run.events import CancelToken, Emitter
    from engine.run.execute import execute

    job = protocol.Job(
        frames=[str(p) for p in sorted(shot.iterdir())],
        output=str(tmp_path / "out"),
        prompt="x",
        cache_dir=str(tmp_path / "cache"),
        steps=2,
        size=64,
        model="in-process",
    )
    stream = _ClosesAt("done")
    cancel = CancelToken()
    code = execute(job, Emitter(stream, on_broken=cancel.cancel), cancel, model=model)
    assert code == protocol.EXIT_CANCELLED
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    # the stream closing earlier (during the work) cancels at the next check
    stream = _ClosesAt("keyframes")
    cancel = CancelToken()
    code = execute(job, Emitter(stream, on_broken=cancel.cancel), cancel, model=model)
    assert code == protocol.EXIT_CANCELLED
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
