"""Takes in Blender: the list (`scene.tokenflow_takes`), its refresh from the Output folder, and the
operators Preview Variations, Restore Settings, Show Only This Take, Propagate This Take, Delete Take.

The truth is on disk (:mod:`.takes` reads the manifests); the collection is a view for the UIList,
rebuilt after every result, on file load and by Refresh. Scripts use the same functions.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from ..engine import protocol
from . import compat, controller, jobs, preferences, takes

_cache: dict[str, tuple[list[takes.Take], list[str]]] = {}  # output folder -> scan (a cache of files)


class TokenFlowTakeItem(bpy.types.PropertyGroup):
    """One row of the take list (what the UIList shows and filters on)."""

    folder: StringProperty(name="Folder", subtype="DIR_PATH")
    take_id: StringProperty(name="Take")
    kind: StringProperty(name="Kind")  # preview | shot
    source: StringProperty(name="Source Strip")
    prompt: StringProperty(name="Prompt")
    seed: IntProperty(name="Seed")
    created: FloatProperty(name="Created")


class TokenFlowTakes(bpy.types.PropertyGroup):
    """The take list of a scene and the Preview Variations settings."""

    takes: CollectionProperty(type=TokenFlowTakeItem)
    index: IntProperty(name="Take", default=0)
    notes: StringProperty(name="Notes", default="")  # damaged manifests, one a line
    variation_source: EnumProperty(
        name="Vary",
        items=(
            ("PROMPTS", "Prompts", "One variation per non-empty line of the chosen text"),
            ("SEEDS", "Seeds", "Seeds from the scene's seed on (they differ only with Resample keyframes)"),
        ),
        default="PROMPTS",
    )
    variation_count: IntProperty(name="Variations", default=4, min=2, max=protocol.MAX_VARIATIONS)
    variation_text: PointerProperty(
        name="Prompts", type=bpy.types.Text, description="A text with one prompt per line"
    )


# --- plain helpers over the scene ------------------------------------------------------------------
def scanned(scene: Any, fresh: bool = False) -> tuple[list[takes.Take], list[str]]:
    """The takes in the scene's Output folder (newest first) and notes on damaged ones."""
    parent = jobs.output_parent(scene)
    if fresh or parent not in _cache:
        _cache[parent] = takes.scan(parent)
    return _cache[parent]


def refresh(scene: Any, select: str = "") -> list[takes.Take]:
    """Rebuild `scene.tokenflow_takes` from the manifests; keep (or move to `select`) the selection."""
    found, notes = scanned(scene, fresh=True)
    pg = scene.tokenflow_takes
    keep = select or (pg.takes[pg.index].folder if 0 <= pg.index < len(pg.takes) else "")
    pg.takes.clear()
    for t in found:
        item = pg.takes.add()
        item.folder, item.take_id, item.kind, item.source = t.folder, t.id, t.kind, t.source
        item.prompt, item.seed, item.created = t.prompt, min(t.seed, 2**31 - 1), t.created
    folders = [t.folder for t in found]
    pg.index = folders.index(keep) if keep in folders else 0
    pg.notes = "\n".join(notes)
    return found


def selected(scene: Any) -> takes.Take | None:
    pg = scene.tokenflow_takes
    if not 0 <= pg.index < len(pg.takes):
        return None
    folder = pg.takes[pg.index].folder
    return next((t for t in scanned(scene)[0] if t.folder == folder), None)


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def strips_of_take(scene: Any, folder: str) -> list[Any]:
    """The image strips that show this take's folder ('//'-relative directories resolved)."""
    ed = scene.sequence_editor
    if ed is None:
        return []
    want = _norm(folder)
    return [
        s
        for s in compat.strips_all(ed)
        if s.type == "IMAGE" and _norm(bpy.path.abspath(s.directory, library=s.id_data.library)) == want
    ]


def source_name(context: Any, scene: Any) -> str:
    """The source strip the list is about: the active strip, or the source of the active take strip."""
    strip = compat.active_strip(context, scene)
    if strip is None:
        return ""
    if strip.type == "IMAGE":
        folder = _norm(bpy.path.abspath(strip.directory, library=strip.id_data.library))
        for t in scanned(scene)[0]:
            if _norm(t.folder) == folder and t.source:
                return t.source
    return strip.name


def restore(scene: Any, take: takes.Take) -> None:
    """Put the take's settings into the panel's fields."""
    settings = scene.tokenflow
    for name, value in take.settings().items():
        setattr(settings, name, value)


def solo(scene: Any, take: takes.Take) -> int:
    """Mute the strips of the other takes of this take's source; show this one and the source."""
    same = takes.of_source(scanned(scene)[0], take.source, scene.name)
    muted = 0
    for other in same:
        for strip in strips_of_take(scene, other.folder):
            strip.mute = other.folder != take.folder
            muted += strip.mute
    source = _source_strip(scene, take)
    if source is not None:
        source.mute = False
    return muted


def _source_strip(scene: Any, take: takes.Take) -> Any:
    ed = scene.sequence_editor
    return compat.strips_all(ed).get(take.source) if ed is not None and take.source else None


def delete(scene: Any, take: takes.Take) -> None:
    """Remove the take's strips and its folder (only a folder that is a take: it has a manifest)."""
    if not os.path.isfile(os.path.join(take.folder, takes.MANIFEST)):
        raise jobs.UserError(f"{take.folder} is not a TokenFlow take (no {takes.MANIFEST}); nothing deleted")
    for strip in strips_of_take(scene, take.folder):
        compat.strips(scene.sequence_editor).remove(strip)
    shutil.rmtree(take.folder)


def on_result(scene_name: str, folders: list[str]) -> None:
    """After a result was added (jobs' hook): list it, selected."""
    scene = bpy.data.scenes.get(scene_name)
    if scene is not None:
        refresh(scene, select=os.path.abspath(folders[0]) if folders else "")


@bpy.app.handlers.persistent
def _on_load_post(*_args: Any) -> None:
    """Takes are found again after reopening a file (and in a moved project: '//' resolves anew)."""
    _cache.clear()
    for scene in bpy.data.scenes:
        if scene.sequence_editor is not None:
            try:
                refresh(scene)
            except Exception:  # a take list must never stop a file from opening
                scene.tokenflow_takes.notes = "could not read the takes; press Refresh"


# --- operators -----------------------------------------------------------------------------------
def _fail(op: bpy.types.Operator, message: str) -> set[str]:
    jobs.state().error = message
    op.report({"ERROR"}, message)
    return {"CANCELLED"}


class _SceneOperator:
    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return compat.scene_of(context) is not None


class SEQUENCER_OT_tokenflow_preview_variations(_SceneOperator, bpy.types.Operator):
    """Preview several variations of the current settings in one engine run (one model load, one
    inversion): one per line of the prompts text, or several seeds; each comes back as a preview take"""

    bl_idname = "sequencer.tokenflow_preview_variations"
    bl_label = "Preview Variations"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = compat.scene_of(context)
        pg = scene.tokenflow_takes
        text = pg.variation_text
        lines = [line.body for line in text.lines] if text is not None else []
        specs = takes.variation_specs(pg.variation_source, pg.variation_count, scene.tokenflow.seed, lines)
        if len(specs) < 2:
            return _fail(self, "Preview Variations needs two prompts or more, one a line of the Prompts text")
        try:
            task = jobs.start_edit(context, protocol.STAGE_PREVIEW, variations=specs)
        except jobs.UserError as exc:
            return _fail(self, str(exc))
        if task.state == controller.ERROR:
            return _fail(self, task.message)
        self.report({"INFO"}, f"TokenFlow: {len(specs)} variations started")
        return {"FINISHED"}


class SEQUENCER_OT_tokenflow_refresh_takes(_SceneOperator, bpy.types.Operator):
    """Read the takes again from the manifests in the Output folder"""

    bl_idname = "sequencer.tokenflow_refresh_takes"
    bl_label = "Refresh Takes"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        found = refresh(compat.scene_of(context))
        self.report({"INFO"}, f"{len(found)} takes")
        return {"FINISHED"}


class _TakeOperator(_SceneOperator):
    def take(self, context: Any) -> takes.Take | None:
        take = selected(compat.scene_of(context))
        if take is None:
            _fail(self, "no take selected (or its folder is gone): select one in the list, or Refresh")
        return take


class SEQUENCER_OT_tokenflow_restore_take(_TakeOperator, bpy.types.Operator):
    """Set the panel's fields to the selected take's prompts, seed, model and settings"""

    bl_idname = "sequencer.tokenflow_restore_take"
    bl_label = "Restore Settings"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        take = self.take(context)
        if take is None:
            return {"CANCELLED"}
        restore(compat.scene_of(context), take)
        self.report({"INFO"}, f"Settings of take '{take.id}' restored")
        return {"FINISHED"}


class SEQUENCER_OT_tokenflow_solo_take(_TakeOperator, bpy.types.Operator):
    """Mute the other takes' strips of this source; this take and the source stay visible"""

    bl_idname = "sequencer.tokenflow_solo_take"
    bl_label = "Show Only This Take"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        take = self.take(context)
        if take is None:
            return {"CANCELLED"}
        muted = solo(compat.scene_of(context), take)
        self.report({"INFO"}, f"Showing '{take.id}'; {muted} other take strip(s) muted")
        return {"FINISHED"}


class SEQUENCER_OT_tokenflow_propagate_take(_TakeOperator, bpy.types.Operator):
    """Propagate the selected preview take to the whole shot: its settings, on its source strip"""

    bl_idname = "sequencer.tokenflow_propagate_take"
    bl_label = "Propagate This Take"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        take = self.take(context)
        if take is None:
            return {"CANCELLED"}
        if take.kind != takes.PREVIEW:
            return _fail(self, f"'{take.id}' is already a propagated shot; select a preview take")
        scene = compat.scene_of(context)
        source = _source_strip(scene, take)
        if source is None:
            return _fail(self, f"the take's source strip '{take.source}' is not in this scene")
        restore(scene, take)
        scene.sequence_editor.active_strip = source
        try:
            task = jobs.start_edit(context, protocol.STAGE_PROPAGATE)
        except jobs.UserError as exc:
            return _fail(self, str(exc))
        if task.state == controller.ERROR:
            return _fail(self, task.message)
        self.report({"INFO"}, f"Propagating take '{take.id}'")
        return {"FINISHED"}


class SEQUENCER_OT_tokenflow_delete_take(_TakeOperator, bpy.types.Operator):
    """Remove the selected take's strip and delete its folder from disk, after a confirmation"""

    bl_idname = "sequencer.tokenflow_delete_take"
    bl_label = "Delete Take"
    bl_options = {"REGISTER", "UNDO"}

    # Set by invoke() before the confirmation dialog, whose OK then runs execute(); a script (or
    # INVOKE_DEFAULT in the bpy module, which skips invoke) must say confirmed=True itself.
    confirmed: BoolProperty(name="Confirmed", default=False, options={"SKIP_SAVE", "HIDDEN"})

    def invoke(self, context: bpy.types.Context, event: Any) -> set[str]:
        self.confirmed = True
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        take = self.take(context)
        if take is None:
            return {"CANCELLED"}
        if not self.confirmed:
            return _fail(self, f"Delete Take removes '{take.folder}' from disk: it asks for a confirmation")
        scene = compat.scene_of(context)
        try:
            delete(scene, take)
        except (OSError, jobs.UserError) as exc:
            return _fail(self, f"could not delete the take: {exc}")
        refresh(scene)
        self.report({"INFO"}, f"Deleted take '{take.id}'")
        return {"FINISHED"}


classes = (
    TokenFlowTakeItem,
    TokenFlowTakes,
    SEQUENCER_OT_tokenflow_preview_variations,
    SEQUENCER_OT_tokenflow_refresh_takes,
    SEQUENCER_OT_tokenflow_restore_take,
    SEQUENCER_OT_tokenflow_solo_take,
    SEQUENCER_OT_tokenflow_propagate_take,
    SEQUENCER_OT_tokenflow_delete_take,
)
_register, _unregister = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register()
    bpy.types.Scene.tokenflow_takes = PointerProperty(type=TokenFlowTakes)
    if _on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load_post)


def unregister() -> None:
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    del bpy.types.Scene.tokenflow_takes
    _unregister()
    _cache.clear()


def estimate_line(context: Any, scene: Any) -> str:
    """'Estimate: Preview ~25 s, Propagate ~3:10' from this machine's earlier runs with the same
    model and working size, or 'unknown' before the first one."""
    s = scene.tokenflow
    strip = compat.active_strip(context, scene)
    first, end = compat.span(strip) if strip is not None else (0, 0)
    n = end - first
    settings = {name: getattr(s, name) for name in takes.RESTORED if name != "model"}
    size = max(64, round(s.size / 64) * 64)
    settings["size"] = size
    model = jobs._model_path(s.model.strip() or preferences.default_model())
    found = scanned(scene)[0]
    measured = takes.speed(found, model, size)
    if measured is None or n == 0:
        return "Estimate: unknown (no earlier run with this model and working size)"
    frames = _frames_of(strip)
    settings["colorspace"] = _colorspace_of(strip)
    parts = []
    for stage, label in ((protocol.STAGE_PREVIEW, "Preview"), (protocol.STAGE_PROPAGATE, "Propagate")):
        cached = takes.inversion_known(found, frames, settings, model, stage)
        seconds = takes.estimate(measured, stage, n, settings, inverted=cached)
        parts.append(f"{label} {takes.format_seconds(seconds)}")
    return "Estimate: " + ", ".join(parts)


def _colorspace_of(strip: Any) -> str:
    """The strip's colour space as the job names it (the OCIO config's name; jobs.build_job)."""
    name = strip.colorspace_settings.name
    try:
        from . import colour, strips

        return colour.load_config(strips.ocio_config()).resolve(name) or name
    except Exception:  # no readable config: the name Blender shows
        return name


def _frames_of(strip: Any) -> list[str]:
    try:
        from . import strips

        return strips.visible_frames(strip)
    except Exception:  # a strip that is not an image sequence: the inversion is then "unknown"
        return []
