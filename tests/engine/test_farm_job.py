"""The Flamenco job type's tasks, compiled by Node and run here in order, give one whole run's frames."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np

from engine import protocol
from tests.engine.conftest import ROOT, cli_events, run_cli, run_in_process

JOB_TYPE = ROOT / "farm" / "flamenco" / "tokenflow-video-edit.js"


def test_flamenco_tasks_run_in_order_equal_a_whole_run(tiny_model_dir, model, city16, tmp_path):
    frames = [str(p) for p in city16[:12]]
    job = protocol.Job(
        frames=frames,
        output=str(tmp_path / "unused"),
        prompt="placeholder",
        model="placeholder",
        steps=2,
        size=64,
        keyframe_stride=4,
        chunk_size=4,
    )
    job_file = tmp_path / "job.json"
    job_file.write_text(job.to_json())
    settings = {
        "job_file": str(job_file),
        "prompt": "a snowy street",
        "model": str(tiny_model_dir),
        "frame_count": 12,
        "keyframe_stride": 4,
        "chunk_size": 4,
        "output": str(tmp_path / "edit"),
        "cache_dir": str(tmp_path / "shared-cache"),
    }
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    compiled = subprocess.run(
        [
            "node",
            str(ROOT / "tests" / "farm" / "compile_job.mjs"),
            str(JOB_TYPE),
            str(tmp_path / "settings.json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    tasks = json.loads(compiled.stdout)
    assert [t["name"] for t in tasks] == ["prepare", "chunk-0-3", "chunk-4-7", "chunk-8-11", "merge"]
    done_names: set[str] = set()
    variables = {"{tokenflow_python}": sys.executable, "{tokenflow_engine}": str(ROOT / "engine")}
    for task in tasks:  # in order, each after its dependencies, as the Manager would schedule them
        assert set(task["dependencies"]) <= done_names
        (command,) = task["commands"]
        exe = variables.get(command["parameters"]["exe"], command["parameters"]["exe"])
        args = [
            a.replace("{tokenflow_engine}", variables["{tokenflow_engine}"])
            for a in command["parameters"]["args"]
        ]
        result = subprocess.run([exe, *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, f"{task['name']}: {result.stdout}{result.stderr[-2000:]}"
        if task["name"].startswith("chunk-"):
            stats = cli_events(result.stdout)[-1]["stats"]
            assert stats["inversion_unet_frames"] == 0  # the prepare task filled the shared cache
        done_names.add(task["name"])

    whole = run_cli(
        "edit",
        "--frames",
        str(city16[0].parent),
        "--prompt",
        "a snowy street",
        "--out",
        str(tmp_path / "whole"),
        "--model",
        str(tiny_model_dir),
        "--steps",
        "2",
        "--size",
        "64",
        "--keyframe-stride",
        "4",
        "--chunk-size",
        "4",
        "--cache-dir",
        str(tmp_path / "shared-cache"),
        "--write-job",
        str(tmp_path / "whole.json"),
    )
    assert whole.returncode == 0
    data = json.loads((tmp_path / "whole.json").read_text())
    data["frames"] = frames
    (tmp_path / "whole.json").write_text(json.dumps(data))
    # the reference run in this process, with the session's model of that folder (the tasks above
    # are the subprocesses under test; a second engine start here would only cost time)
    assert data.pop("model") == str(tiny_model_dir)
    code, events = run_in_process(model, **data)
    assert code == protocol.EXIT_OK, events.getvalue()[-2000:]
    edited = sorted((tmp_path / "edit").glob("*.png"))
    reference = sorted((tmp_path / "whole").glob("*.png"))
    assert [p.name for p in edited] == [p.name for p in reference] == [p.name for p in city16[:12]]
    for a, b in zip(edited, reference, strict=True):
        assert np.abs(cv2.imread(str(a)).astype(int) - cv2.imread(str(b)).astype(int)).max() <= 2
