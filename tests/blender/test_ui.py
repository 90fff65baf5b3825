"""The panels' and preferences' draw code against a recording layout (no window in the bpy module):
every property and operator they show must exist, in every state of a job."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import bpy
import pytest

from .helpers import MODULE


class Layout:
    """Records what a draw function shows; checks that properties and operators exist."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log
        self.enabled = self.alert = True
        self.scale_y = 1.0
        self.use_property_split = self.use_property_decorate = False

    def _child(self, *args: Any, **kwargs: Any) -> Layout:
        return Layout(self.log)

    row = column = box = split = _child

    def separator(self, *args: Any, **kwargs: Any) -> None:
        pass

    def label(self, text: str = "", **kwargs: Any) -> None:
        self.log.append(("label", text))

    def progress(self, factor: float = 0.0, type: str = "BAR", text: str = "") -> None:
        assert 0.0 <= factor <= 1.0
        self.log.append(("progress", text))

    def prop(self, data: Any, name: str, **kwargs: Any) -> None:
        assert name in data.bl_rna.properties, name
        self.log.append(("prop", name))

    def operator(self, idname: str, **kwargs: Any) -> Any:
        group, op = idname.split(".")
        getattr(getattr(bpy.ops, group), op).get_rna_type()  # KeyError when it does not exist
        self.log.append(("operator", idname))
        return SimpleNamespace(path="", url="")


def _draw(panel: Any, context: Any, owner: Any = None) -> list[tuple[str, str]]:
    log: list[tuple[str, str]] = []
    this = owner if owner is not None else SimpleNamespace()
    this.layout = Layout(log)
    panel.draw(this, context)
    return log


def _context(scene: Any) -> Any:
    return SimpleNamespace(
        scene=scene, sequencer_scene=None, window_manager=bpy.context.window_manager, active_strip=None
    )


def test_main_panel_states(tf, scene, monkeypatch) -> None:
    panel, settings_panel = bpy.types.SEQUENCER_PT_tokenflow, bpy.types.SEQUENCER_PT_tokenflow_settings
    ctx = _context(scene)
    state = bpy.context.window_manager.tokenflow_job
    idle = _draw(panel, ctx)
    shown = {name for kind, name in idle if kind in ("prop", "operator")}
    assert {"prompt", "negative_prompt", "source_prompt", "model"} <= shown
    assert {"sequencer.tokenflow_preview", "sequencer.tokenflow_propagate"} <= shown
    assert ("label", "Strip: none selected") in idle

    details = {name for kind, name in _draw(settings_panel, ctx) if kind == "prop"}
    wanted = {
        "steps",
        "guidance",
        "pnp_f_t",
        "pnp_attn_t",
        "keyframe_stride",
        "keyframe_mode",
        "seed",
        "size",
        "evaluate",
    }
    assert wanted <= details
    scene.tokenflow.edit_mode = "sdedit"
    assert "sdedit_strength" in {name for kind, name in _draw(settings_panel, ctx) if kind == "prop"}

    # Running: a progress bar with the stage and the time left, and Cancel.
    state.stage, state.progress, state.eta, state.message = "inversion", 0.4, "0:12 left", "Inversion 3/9"
    monkeypatch.setattr(tf.runs.registry, "running", lambda slot: object() if slot == "edit" else None)
    running = _draw(panel, ctx)
    assert ("progress", "Inversion 40%, 0:12 left") in running
    assert ("operator", "sequencer.tokenflow_cancel") in running
    monkeypatch.undo()

    # An error: its message in the panel, the log one click away.
    state.error = "could not load model 'x': it is not cached on this machine. " * 3
    state.log_path = "/tmp/engine.log"
    failed = _draw(panel, ctx)
    labels = [text for kind, text in failed if kind == "label"]
    assert any(text.startswith("could not load model") for text in labels)
    assert all(len(text) <= 60 for text in labels if "model" in text)
    assert ("operator", "sequencer.tokenflow_show_log") in failed

    # Done and measured: the result line and the consistency figures.
    state.error, state.status, state.message = "", "DONE", "Result added as 'TF city' on channel 3"
    state.quality = "warp error 3.1 (source 1.1)"
    try:
        done = _draw(panel, ctx)
    finally:
        state.status, state.message, state.quality = "IDLE", "", ""
    assert ("label", "Consistency: warp error 3.1 (source 1.1)") in done


def test_farm_panel_states(tf, scene, monkeypatch) -> None:
    panel = bpy.types.SEQUENCER_PT_tokenflow_farm
    ctx = _context(scene)
    state = bpy.context.window_manager.tokenflow_job
    idle = _draw(panel, ctx)
    assert ("operator", "sequencer.tokenflow_submit_farm") in idle and ("prop", "farm_chunk_size") in idle
    assert ("label", "Manager: http://localhost:8080") in idle
    assert "sequencer.tokenflow_cancel_farm" not in {name for _, name in idle}

    # Running: the Flamenco status and the share of finished tasks, the job id, and Cancel.
    state.farm_stage, state.farm_progress, state.farm_message = "active", 0.5, "Farm job active: chunks"
    state.farm_job_id = "6f1d3c4e-7a52-4f5e-9a43-2d7f0b9a1c11"
    state.farm_web_page = f"http://localhost:8080/app/jobs/{state.farm_job_id}"
    monkeypatch.setattr(tf.runs.registry, "running", lambda slot: object() if slot == "farm" else None)
    try:
        running = _draw(panel, ctx)
    finally:
        monkeypatch.undo()
    assert ("progress", "Active 50%") in running and ("label", "Farm job active: chunks") in running
    assert ("operator", "sequencer.tokenflow_cancel_farm") in running
    assert ("label", f"Job {state.farm_job_id}") in running and ("operator", "wm.url_open") in running

    # Done: the result line, wrapped.
    state.farm_status, state.farm_message = (
        "DONE",
        "Result added as 'TF city: a watercolor painting' on channel 3",
    )
    try:
        done = _draw(panel, ctx)
    finally:
        state.farm_status = state.farm_stage = state.farm_message = state.farm_job_id = ""
        state.farm_web_page = ""
        state.farm_progress = 0.0
    labels = [text for kind, text in done if kind == "label"]
    assert any(text.startswith("Result added as") for text in labels)
    assert all(len(text) <= 60 for text in labels if "Result" in text)


def test_preferences_draw(tf) -> None:
    prefs = bpy.context.preferences.addons[MODULE].preferences

    class Owner:
        def __getattr__(self, name: str) -> Any:
            return getattr(prefs, name)

    state = bpy.context.window_manager.tokenflow_job
    state.install_status, state.install_message, state.install_log = "ERROR", "Install failed", "/tmp/x.log"
    try:
        log = _draw(type(prefs), bpy.context, Owner())
    finally:
        state.install_status = state.install_message = state.install_log = ""
    shown = {name for kind, name in log}
    assert {"engine_python", "default_model", "cache_dir", "device"} <= shown
    assert {"farm_manager_url", "farm_worker_tag", "farm_cache_dir"} <= shown
    assert {"preferences.tokenflow_install_engine", "preferences.tokenflow_check_engine"} <= shown
    assert "Install failed" in shown


@pytest.mark.parametrize(
    "name", ["SEQUENCER_PT_tokenflow", "SEQUENCER_PT_tokenflow_settings", "SEQUENCER_PT_tokenflow_farm"]
)
def test_panel_poll_without_scene(tf, name) -> None:
    panel = getattr(bpy.types, name)
    assert not panel.poll(SimpleNamespace(scene=None, sequencer_scene=None))
