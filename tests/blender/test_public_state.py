"""What scripts and pipeline tools read after a job, through public state only: a Propagate run
from a script with bpy.ops, waited for with `jobs.wait()` (timers never fire in the bpy module),
its `done` event in `window_manager.tokenflow_job.last_result` (read-only), in agreement with the
result folder's `tokenflow.json` manifest. Real engine subprocess, tiny model, real frames."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import bpy
import pytest

from .helpers import MODULE, add_image_strip, run_op, strips_of


@pytest.fixture
def cpu() -> Any:
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.device = "cpu"
    yield prefs
    prefs.device = "auto"


def test_last_result_is_the_done_event_and_agrees_with_the_manifest(
    tf, scene, assets, cpu, tmp_path: Path
) -> None:
    add_image_strip(scene, assets["frames"][:6], channel=1, start=3, name="city")
    s = scene.tokenflow
    s.prompt, s.source_prompt, s.model = "a watercolor painting", "a city street", str(assets["model"])
    s.steps, s.size, s.keyframe_stride, s.evaluate = 2, 64, 4, False
    s.output_dir = str(tmp_path) + os.sep
    state = bpy.context.window_manager.tokenflow_job

    assert run_op("sequencer.tokenflow_propagate", scene) == {"FINISHED"}
    assert state.last_result == ""  # nothing yet: never an older run's result while this one runs
    assert tf.jobs.wait(timeout=300) == "DONE", (
        state.message + "\n" + tf.runs.registry.get("edit").log_tail(30)
    )

    view = json.loads(state.last_result)
    assert view["event"] == "done"
    assert view["keyframes"][0] == 0 and view["keyframes"][-1] == 5
    assert view["indices"] == list(range(6))
    assert view["stats"]["inversion_unet_frames"] >= 6
    strip = next(s for s in strips_of(scene) if s.name == state.result_strip)
    assert Path(view["output"]) == Path(bpy.path.abspath(strip.directory)) == Path(state.output)
    assert [os.path.basename(f) for f in view["files"]] == [e.filename for e in strip.elements]
    manifest = tf.edit.results.read_manifest(view["output"])
    assert manifest["keyframes"] == view["keyframes"]
    assert manifest["indices"] == view["indices"]
    assert manifest["stats"] == view["stats"]
    assert manifest["files"] == [os.path.basename(f) for f in view["files"]]
    assert tf.edit.results.last() == view
    with pytest.raises(AttributeError):
        state.last_result = "{}"  # read-only for users and scripts


def test_a_failed_run_leaves_no_stale_result(tf, scene, assets, cpu, tmp_path: Path) -> None:
    tf.edit.results.record({"event": "done", "output": "/an/older/result", "files": []})
    add_image_strip(scene, assets["frames"][:3], channel=1, start=1, name="city")
    s = scene.tokenflow
    s.prompt, s.model, s.output_dir = "snow", str(tmp_path / "no-such-model"), str(tmp_path) + os.sep
    assert run_op("sequencer.tokenflow_propagate", scene) == {"FINISHED"}
    assert tf.jobs.wait(timeout=300) == "ERROR"
    state = bpy.context.window_manager.tokenflow_job
    assert "no-such-model" in state.error
    assert state.last_result == "" and tf.edit.results.last() is None


class _Endless:
    """A job that never ends by itself (the controller's task interface, no engine)."""

    kind, stage, progress, eta, message = "propagate", "inversion", 0.1, None, ""
    state = "RUNNING"
    on_event = on_finish = None
    ticks = 0

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    def tick(self) -> bool:
        self.ticks += 1
        return self.running

    def cancel(self, timeout: float | None = None) -> None:
        self.state, self.message = "CANCELLED", "Cancelled: nothing was added"

    def shutdown(self, timeout: float = 5.0) -> None:
        self.cancel()


def test_wait_cancels_a_job_that_outlives_its_timeout(tf) -> None:
    task = tf.runs.registry.put("edit", _Endless())
    assert tf.jobs.wait(timeout=0.3, interval=0.05) == "CANCELLED"
    assert task.ticks >= 2 and not task.running  # it ticked the job itself, then cancelled it
    assert bpy.context.window_manager.tokenflow_job.status == "CANCELLED"
