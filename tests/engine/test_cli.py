"""The engine's command line as Blender and farms use it: a subprocess, JSON-line events, exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from engine import protocol
from tests.engine.conftest import ROOT, cli_events, engine_command, run_cli


def test_edit_writes_every_frame_with_source_names(tiny_model_dir, city16, tmp_path):
    out = tmp_path / "edited"
    result = run_cli(
        "edit",
        "--frames",
        str(city16[0].parent),
        "--prompt",
        "a watercolor painting",
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--steps",
        "3",
        "--size",
        "128",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    events = cli_events(result.stdout)
    assert all(line.startswith("{") for line in result.stdout.splitlines())  # nothing but events
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and "started" in kinds and "keyframes" in kinds
    progress = [e for e in events if e["event"] == "progress"]
    assert {"inversion", "keyframes", "propagate"} <= {e["stage"] for e in progress}
    assert all({"stage", "step", "total", "elapsed", "eta"} <= e.keys() for e in progress)
    done = events[-1]
    assert done["output"] == str(out)
    assert sorted(p.name for p in out.glob("*.png")) == [p.name for p in city16]
    assert done["keyframes"] == [0, 8, 15]
    manifest = json.loads((out / "tokenflow.json").read_text())
    assert manifest["keyframes"] == done["keyframes"] and len(manifest["files"]) == 16
    assert not list(tmp_path.glob(".edited.tmp-*"))


def test_run_job_file_and_never_overwrite(tiny_model_dir, city16, tmp_path):
    job = protocol.Job(
        frames=[str(p) for p in city16[:3]],
        output=str(tmp_path / "out"),
        prompt="a red car",
        model=str(tiny_model_dir),
        steps=2,
        size=64,
        stage="preview",
        cache_dir=str(tmp_path / "cache"),
    )
    job_file = tmp_path / "job.json"
    job_file.write_text(job.to_json())
    first = run_cli("run", str(job_file))
    assert first.returncode == 0, first.stderr
    events = cli_events(first.stdout)
    preview = [e for e in events if e["event"] == "preview"]
    assert preview and preview[0]["indices"] == [0, 2]
    before = {p: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    second = run_cli("run", str(job_file))
    assert second.returncode == protocol.EXIT_BAD_INPUT
    (error,) = [e for e in cli_events(second.stdout) if e["event"] == "error"]
    assert "already exists" in error["message"]
    assert {p: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def _start(tiny_model_dir, city16, out: Path, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    args = [
        "edit",
        "--frames",
        str(city16[0].parent),
        "--prompt",
        "a red car",
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--steps",
        "200",
        "--size",
        "64",
        "--chunk-size",
        "4",
        "--cache-dir",
        str(cache),
    ]
    return subprocess.Popen(
        engine_command(*args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.parametrize("how", ["stdin", "sigterm"])
def test_cancel_stops_within_a_step_and_leaves_nothing(tiny_model_dir, city16, tmp_path, how):
    out = tmp_path / "out"
    proc = _start(tiny_model_dir, city16, out, tmp_path / "cache")
    events = []
    assert proc.stdout is not None
    for line in proc.stdout:
        event = protocol.parse_event(line)
        events.append(event)
        if event and event["event"] == "progress" and event["stage"] == "inversion" and event["step"] >= 8:
            break
    if how == "stdin":
        proc.stdin.write("cancel\n")
        proc.stdin.flush()
    else:
        proc.send_signal(signal.SIGTERM)
    rest = [protocol.parse_event(line) for line in proc.stdout]
    code = proc.wait(timeout=60)
    assert code == protocol.EXIT_CANCELLED
    assert rest[-1]["event"] == "cancelled"
    # At most the UNet call in flight finishes: one more inversion chunk of 4 frames.
    assert len([e for e in rest if e["event"] == "progress"]) <= 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_help_explains_every_option():
    result = run_cli("edit", "--help")
    assert result.returncode == 0
    for flag in (
        "--keyframe-mode",
        "--keyframe-stride",
        "--pnp-f-t",
        "--pnp-attn-t",
        "--stage",
        "--size",
        "--source-prompt",
        "--negative-prompt",
        "--chunk-size",
        "--edit-mode",
        "--method",
        "--inversion-steps",
        "--match-scope",
        "--match-reuse",
        "--match-dims",
    ):
        assert flag in result.stdout
    text = " ".join(result.stdout.split())
    assert "(default: 50)" in text  # each default said once, not twice in a row
    assert not re.search(r"\(default: [^)]*\) \(default:", text), text
    # An option whose help explains its default says it once (the cache folder said it twice).
    start = text.rindex("--cache-dir CACHE_DIR")
    cache = text[start : text.index("--steps STEPS", start)]
    assert cache.count("default") == 1 and "~/.cache/tokenflow" in cache, cache


def test_check_reports_torch_and_device():
    result = run_cli("check", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    (event,) = cli_events(result.stdout)
    assert event["event"] == "check" and event["device"] == "cpu" and event["torch"].startswith("2.")


def test_cli_bad_input_exit_codes(tmp_path, city16):
    result = run_cli("edit", "--frames", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o"))
    assert result.returncode == protocol.EXIT_BAD_INPUT
    (event,) = cli_events(result.stdout)
    assert event["kind"] == "bad_input" and "no frames" in event["message"]
    result = run_cli(
        "edit",
        "--frames",
        str(city16[0].parent),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "0",
    )
    assert result.returncode == protocol.EXIT_BAD_INPUT
    assert "'steps' is 0" in cli_events(result.stdout)[0]["message"]
    result = run_cli(
        "edit",
        "--frames",
        str(city16[0].parent),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o"),
        "--model",
        str(tmp_path / "no-such-model"),
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert result.returncode == protocol.EXIT_MODEL
    message = cli_events(result.stdout)[-1]["message"]
    assert "no-such-model" in message and ".safetensors" in message and "diffusers folder" in message
    assert not (tmp_path / "o").exists()
    result = run_cli("run", str(tmp_path / "missing.json"))
    assert result.returncode == protocol.EXIT_BAD_INPUT
