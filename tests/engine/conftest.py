"""Fixtures for engine tests: a tiny SD model built locally, real frames from shipped clips."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import protocol
from tests.clips import extract_frames

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub from a test
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m engine` does; before torch loads


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.model.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def model(tiny_model_dir: Path):
    from engine.model import devices, loading

    return loading.load(str(tiny_model_dir), devices.choose("cpu"))


@pytest.fixture(scope="session")
def city16(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """16 real consecutive frames of cityCC0.mpg (CC0), 128 px wide."""
    return extract_frames("cityCC0.mpg", tmp_path_factory.mktemp("city16"), 16, start=40, width=128)


class Recorder(io.StringIO):
    """An event stream that keeps parsed events."""

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        parsed = [protocol.parse_event(line) for line in self.getvalue().splitlines()]
        return [e for e in parsed if e and (kind is None or e["event"] == kind)]


def run_in_process(model, **fields: Any) -> tuple[int, Recorder]:
    """Run a job in this process with an already loaded model; returns (exit code, events)."""
    from engine.run.events import CancelToken, Emitter
    from engine.run.execute import execute

    fields.setdefault("steps", 3)
    fields.setdefault("size", 64)
    fields.setdefault("keyframe_stride", 4)
    fields.setdefault("chunk_size", 4)
    fields.setdefault("model", "in-process")
    job = protocol.Job(**fields)
    job.validate()
    stream = Recorder()
    code = execute(job, Emitter(stream), CancelToken(), model=model)
    return code, stream


def engine_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def run_cli(*args: str, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    kwargs.setdefault("stdin", subprocess.DEVNULL)  # as on a farm worker: no caller to outlive
    return subprocess.run(
        engine_command(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, **kwargs
    )


def cli_events(stdout: str) -> list[dict[str, Any]]:
    return [e for e in (protocol.parse_event(line) for line in stdout.splitlines()) if e]
