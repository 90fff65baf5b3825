"""Takes, driven through the operators as an artist would, with the real engine (tiny model, 12 real
frames): two variations in one run, restore the first one's settings, propagate it (its keyframes equal
the chosen preview's), show only one take, delete a strip (files stay), Delete Take (after its
confirmation), and the take list found again in a saved, moved and reopened project."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bpy
import numpy as np
import pytest

from .helpers import MODULE, add_image_strip, run_op, strips_of, wait
from .test_ui import Layout

START, CHANNEL = 5, 2
PROMPTS = ["a snowy street at night", "a watercolor painting"]


@pytest.fixture(scope="module")
def shot(ext, assets, tmp_path_factory) -> Any:
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.device = "cpu"
    # A cache of its own: the inversion counts below must not depend on what earlier modules cached.
    prefs.cache_dir = str(tmp_path_factory.mktemp("takes-cache"))
    scene = bpy.data.scenes.new("takes")
    window = bpy.context.window
    old = window.scene if window else None
    if window:
        window.scene = scene
    strip = add_image_strip(scene, assets["frames"], channel=CHANNEL, start=START, name="city")
    out = tmp_path_factory.mktemp("takes")
    s = scene.tokenflow
    s.prompt, s.source_prompt, s.model = "a red car", "a city street", str(assets["model"])
    s.steps, s.size, s.keyframe_stride, s.chunk_size = 3, 64, 4, 8
    s.output_dir = str(out) + os.sep
    text = bpy.data.texts.new("tf-prompts")
    text.write("\n".join(PROMPTS) + "\n")
    scene.tokenflow_takes.variation_text = text
    yield {"scene": scene, "strip": strip, "out": out, "assets": assets}
    if window and old is not None:
        window.scene = old
    bpy.data.scenes.remove(scene)
    bpy.data.texts.remove(text)
    prefs = bpy.context.preferences.addons[MODULE].preferences  # fresh: never a freed pointer
    prefs.device, prefs.cache_dir = "auto", ""


def _ctx(scene: Any) -> Any:
    return SimpleNamespace(
        scene=scene, sequencer_scene=None, window_manager=bpy.context.window_manager, active_strip=None
    )


def _pixels(path: str) -> np.ndarray:
    img = bpy.data.images.load(path)
    try:
        return np.array(img.pixels[:], dtype=np.float32).reshape(img.size[1], img.size[0], -1)[..., :3]
    finally:
        bpy.data.images.remove(img)


def _select(scene: Any, suffix: str) -> Any:
    pg = scene.tokenflow_takes
    pg.index = next(i for i, t in enumerate(pg.takes) if t.folder.endswith(suffix))
    return pg.takes[pg.index]


def _listed(scene: Any) -> list[tuple[str, str, str]]:
    return [(t.source, t.kind, t.prompt) for t in scene.tokenflow_takes.takes]


def test_variations_then_restore_and_propagate_the_first(tf, shot) -> None:
    scene, takes_ops = shot["scene"], tf.takes.listing
    assert run_op("sequencer.tokenflow_preview_variations", scene) == {"FINISHED"}
    task = wait(tf)
    assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    assert task.message == "2 variations added above 'city'"
    # One run: the keyframes inverted once at most (earlier tests may have cached them), both denoised.
    stats = task.result["stats"]
    assert stats["cache_hits"] + stats["cache_misses"] == 4
    assert stats["inversion_unet_frames"] == 3 * stats["cache_misses"]
    assert task.result["stats"]["keyframe_unet_frames"] == 2 * 4 * 3
    previews = sorted(
        (s for s in strips_of(scene) if s.name.startswith("TF preview city")), key=lambda s: s.channel
    )
    assert [s.channel for s in previews] == [CHANNEL + 1, CHANNEL + 2]  # stacked above the source
    assert sorted(s.name for s in previews) == sorted(f"TF preview city: {p}" for p in PROMPTS)
    assert sorted(_listed(scene)) == sorted(("city", "preview", p) for p in PROMPTS)

    first = _select(scene, "-v1")
    assert first.prompt == PROMPTS[0]
    scene.tokenflow.prompt, scene.tokenflow.guidance = "something else", 3.0
    assert run_op("sequencer.tokenflow_restore_take", scene) == {"FINISHED"}
    assert scene.tokenflow.prompt == PROMPTS[0] and scene.tokenflow.guidance == 7.5

    scene.tokenflow.prompt = "typed after restoring"  # Propagate This Take uses the take's own settings
    scene.sequence_editor.active_strip = previews[1]  # even with another take's strip active
    chosen = takes_ops.selected(scene)
    assert run_op("sequencer.tokenflow_propagate_take", scene) == {"FINISHED"}
    task = wait(tf)
    assert task.state == "DONE", task.message + "\n" + task.log_tail(30)
    assert task.result["stats"]["inversion_unet_frames"] == 8 * 3  # only the 8 frames between keyframes
    newest = scene.tokenflow_takes.takes[scene.tokenflow_takes.index]
    assert (newest.kind, newest.prompt, newest.source) == ("shot", PROMPTS[0], "city")
    assert scene.tokenflow_takes.index == 0  # newest first, and selected
    shot_take = takes_ops.selected(scene)
    assert shot_take.keyframes == chosen.keyframes == [0, 4, 7, 11]
    preview_files = sorted(Path(chosen.folder).glob("*.png"))
    for path in preview_files:  # fixed keyframes: the shot's keyframe frames equal the preview's
        diff = np.abs(_pixels(str(path)) - _pixels(str(Path(shot_take.folder) / path.name))).max() * 255
        assert diff <= 2.01, f"{path.name} differs by {diff:.1f}/255 between the preview and the shot"
    assert len(preview_files) == len(chosen.keyframes)
    shot["folders"] = {
        "v1": chosen.folder,
        "v2": next(t.folder for t in scene.tokenflow_takes.takes if t.folder.endswith("-v2")),
        "shot": shot_take.folder,
    }

    # The panel: the estimate now comes from these runs; the selected take's settings are shown.
    scene.sequence_editor.active_strip = shot["strip"]
    log = _draw_rows("SEQUENCER_PT_tokenflow_takes", _ctx_with_strip(scene, shot["strip"]))
    labels = [text for kind, text in log if kind == "label"]
    assert any(t.startswith("Estimate: Preview ~") and "Propagate ~" in t for t in labels), labels
    # the estimate knows the shot's inversion is cached: it names the colour space as the job did
    assert takes_ops._colorspace_of(shot["strip"]) == shot_take.job["colorspace"] == "sRGB"
    assert "Takes of city" in labels and f"Prompt: {PROMPTS[0]}" in labels
    ops = {name for kind, name in log if kind == "operator"}
    assert {"sequencer.tokenflow_restore_take", "sequencer.tokenflow_solo_take"} <= ops
    assert "sequencer.tokenflow_delete_take" in ops
    assert "sequencer.tokenflow_propagate_take" not in ops  # the selected take is a shot
    rows = [text for kind, text in log if kind == "row"]
    assert re.fullmatch(rf"> {PROMPTS[0]} \| seed 1 \| shot \| (now|\d+ s|\d+ min)", rows[0]), rows
    assert len(rows) == 3
    _dump_panel(scene, shot["strip"])


def test_show_only_this_take(tf, shot) -> None:
    scene = shot["scene"]
    assert "folders" in shot, "needs test_variations_then_restore_and_propagate_the_first"
    _select(scene, "-v2")
    assert run_op("sequencer.tokenflow_solo_take", scene) == {"FINISHED"}
    by_folder = {
        name: tf.takes.listing.strips_of_take(scene, folder)[0] for name, folder in shot["folders"].items()
    }
    assert {n: s.mute for n, s in by_folder.items()} == {"v1": True, "v2": False, "shot": True}
    assert not shot["strip"].mute
    _select(scene, "-v1")
    assert run_op("sequencer.tokenflow_solo_take", scene) == {"FINISHED"}
    assert {n: s.mute for n, s in by_folder.items()} == {"v1": False, "v2": True, "shot": True}


def test_deleting_a_strip_keeps_the_take_and_delete_take_asks_first(tf, shot) -> None:
    scene, folders = shot["scene"], shot["folders"]
    ed = scene.sequence_editor
    coll = ed.strips if hasattr(ed, "strips") else ed.sequences
    coll.remove(tf.takes.listing.strips_of_take(scene, folders["v1"])[0])  # the artist deletes the strip
    assert run_op("sequencer.tokenflow_refresh_takes", scene) == {"FINISHED"}
    assert Path(folders["v1"]).is_dir() and len(scene.tokenflow_takes.takes) == 3

    _select(scene, "-v2")
    count = len(strips_of(scene))
    # No confirmation (a script, or INVOKE_DEFAULT in the bpy module, which skips invoke): nothing goes.
    with pytest.raises(RuntimeError, match="asks for a confirmation"):
        run_op("sequencer.tokenflow_delete_take", scene)
    assert Path(folders["v2"]).is_dir() and len(strips_of(scene)) == count
    # In the UI, invoke() shows the confirmation; its OK runs execute() with confirmed set.
    op, shown = SimpleNamespace(confirmed=False), []
    wm = SimpleNamespace(invoke_confirm=lambda o, e: shown.append(o) or {"RUNNING_MODAL"})
    invoke = bpy.types.SEQUENCER_OT_tokenflow_delete_take.invoke
    assert invoke(op, SimpleNamespace(window_manager=wm), None) == {"RUNNING_MODAL"}
    assert shown == [op] and op.confirmed is True
    assert run_op("sequencer.tokenflow_delete_take", scene, confirmed=op.confirmed) == {"FINISHED"}
    assert not Path(folders["v2"]).exists() and len(strips_of(scene)) == count - 1
    assert sorted(_listed(scene)) == [("city", "preview", PROMPTS[0]), ("city", "shot", PROMPTS[0])]
    assert Path(folders["v1"]).is_dir() and Path(folders["shot"]).is_dir()


REOPEN = """
import json, os, sys
os.environ["HOME"] = {home!r}
import bpy, addon_utils
bpy.ops.preferences.extension_repo_add(
    name={repo!r}, type="LOCAL", custom_directory={repo_dir!r}, use_custom_directory=True
)
addon_utils.enable({module!r}, default_set=True)
bpy.ops.wm.open_mainfile(filepath={blend!r})
scene = bpy.data.scenes["takes"]
pg = scene.tokenflow_takes
print("TAKES", json.dumps([[t.source, t.kind, t.prompt, t.folder] for t in pg.takes]), flush=True)
"""


def test_takes_are_found_after_saving_moving_and_reopening(tf, shot, tmp_path, repo_dir) -> None:
    scene, folders = shot["scene"], shot["folders"]
    project = tmp_path / "project"
    (project / "tokenflow").mkdir(parents=True)
    for name in ("v1", "shot"):
        shutil.copytree(folders[name], project / "tokenflow" / Path(folders[name]).name)
    old = scene.tokenflow.output_dir
    scene.tokenflow.output_dir = "//tokenflow/"
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(project / "edit.blend"), copy=True)
    finally:
        scene.tokenflow.output_dir = old
    moved = tmp_path / "elsewhere" / "project-moved"
    moved.parent.mkdir()
    shutil.move(str(project), str(moved))
    script = REOPEN.format(
        home=str(tmp_path / "home"),
        repo=repo_dir.name,
        repo_dir=str(repo_dir),
        module=MODULE,
        blend=str(moved / "edit.blend"),
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    listed = json.loads(next(line[6:] for line in done.stdout.splitlines() if line.startswith("TAKES ")))
    assert [(s, k, p) for s, k, p, _ in listed] == [
        ("city", "shot", PROMPTS[0]),
        ("city", "preview", PROMPTS[0]),
    ]
    assert all(Path(folder).parent == moved / "tokenflow" for *_, folder in listed)


# --- a picture of the panel for the README ----------------------------------------------------------
def _ctx_with_strip(scene: Any, strip: Any) -> Any:
    ctx = _ctx(scene)
    ctx.active_strip = strip
    return ctx


class RowLayout(Layout):
    """The test layout that also records a row's labels as one line (how the UIList row reads)."""

    def _child(self, *args: Any, **kwargs: Any) -> Layout:
        return type(self)(self.log)

    row = column = box = split = _child

    def template_list(self, listtype: str, list_id: str, data: Any, prop: str, active: Any, index: str, **kw):
        ui_list = getattr(bpy.types, listtype)
        scene = data.id_data
        this = SimpleNamespace(bitflag_filter_item=1 << 30)
        flags, _ = ui_list.filter_items(this, _ctx_with_strip(scene, None), data, prop)
        for i, item in enumerate(getattr(data, prop)):
            if not flags[i]:
                continue
            row: list[tuple[str, str]] = []
            ui_list.draw_item(None, None, Layout(row), data, item, 0, data, index)
            mark = ">" if i == getattr(active, index) else " "
            self.log.append(("row", f"{mark} " + " | ".join(text for _, text in row)))


class PictureLayout(RowLayout):
    """Records what a user sees: property labels with their values, operator buttons by their label."""

    def prop(self, data: Any, name: str, text: str | None = None, expand: bool = False, **kw: Any) -> None:
        rna = data.bl_rna.properties[name]
        value = getattr(data, name)
        label = rna.name if text is None else text
        if expand and rna.type == "ENUM":
            self.log.append(
                ("enum", " | ".join(("*" if i.identifier == value else "") + i.name for i in rna.enum_items))
            )
            return
        shown = getattr(value, "name", value) if value is not None else ""
        if isinstance(shown, float):
            shown = f"{shown:.2f}"
        self.log.append(("prop", f"{label}: {shown}" if label else str(shown)))

    def operator(self, idname: str, text: str | None = None, **kw: Any) -> Any:
        group, op = idname.split(".")
        label = text or getattr(getattr(bpy.ops, group), op).get_rna_type().name  # icon-only: its name
        self.log.append(("operator", label or kw.get("icon", "")))
        return SimpleNamespace(path="", url="")


def _draw_rows(name: str, ctx: Any, layout: type = RowLayout) -> list[tuple[str, str]]:
    log: list[tuple[str, str]] = []
    getattr(bpy.types, name).draw(SimpleNamespace(layout=layout(log)), ctx)
    return log


def _dump_panel(scene: Any, strip: Any) -> None:
    """Record the main panel and the Takes panel; write them as JSON when TOKENFLOW_PANEL_DUMP is set
    (scripts/render_panel.py draws that into the README's picture)."""
    ctx = _ctx_with_strip(scene, strip)
    out = []
    for name in ("SEQUENCER_PT_tokenflow", "SEQUENCER_PT_tokenflow_takes"):
        out.append(
            {"panel": getattr(bpy.types, name).bl_label, "items": _draw_rows(name, ctx, PictureLayout)}
        )
    path = os.environ.get("TOKENFLOW_PANEL_DUMP")
    if path:
        Path(path).write_text(json.dumps(out, indent=1))


def test_panel_before_any_run_and_with_a_damaged_manifest(tf, scene, assets, tmp_path) -> None:
    """No earlier run: the estimate says 'unknown'. A torn manifest is named under the list, and the
    panel still draws."""
    strip = add_image_strip(scene, assets["frames"][:4], name="bikes")
    scene.tokenflow.output_dir = str(tmp_path) + os.sep
    scene.tokenflow.model = str(assets["model"])
    (tmp_path / "bikes-preview-x").mkdir()
    (tmp_path / "bikes-preview-x" / "tokenflow.json").write_text('{"job": {"prompt": "snow", "sta')
    assert run_op("sequencer.tokenflow_refresh_takes", scene) == {"FINISHED"}
    log = _draw_rows("SEQUENCER_PT_tokenflow_takes", _ctx_with_strip(scene, strip))
    labels = [text for kind, text in log if kind == "label"]
    assert "Estimate: unknown (no earlier run with this model and working size)" in labels
    assert any(t.startswith("Skipped: bikes-preview-x: unreadable") for t in labels), labels
    assert not [text for kind, text in log if kind == "row"]
    assert "sequencer.tokenflow_restore_take" not in {name for kind, name in log if kind == "operator"}


def test_variations_that_would_repeat_themselves_are_refused_before_a_run(
    tf, scene, assets, tmp_path
) -> None:
    add_image_strip(scene, assets["frames"][:4], name="bikes")
    s = scene.tokenflow
    s.prompt, s.model, s.output_dir = "a red car", str(assets["model"]), str(tmp_path) + os.sep
    pg = scene.tokenflow_takes
    pg.variation_source, pg.variation_count = "SEEDS", 3
    with pytest.raises(RuntimeError, match="fixed keyframe mode the seed changes nothing"):
        run_op("sequencer.tokenflow_preview_variations", scene)
    assert tf.runs.registry.get("edit") is None or not tf.runs.registry.get("edit").running
    pg.variation_source = "PROMPTS"
    text = bpy.data.texts.new("one-line")
    try:
        text.write("only one prompt\n\n")
        pg.variation_text = text
        with pytest.raises(RuntimeError, match="two prompts or more"):
            run_op("sequencer.tokenflow_preview_variations", scene)
    finally:
        bpy.data.texts.remove(text)
    assert list(tmp_path.iterdir()) == []
