"""Takes in Blender: the list (`scene.tokenflow_takes`), its refresh from the Output folder, what
can be done with a take (restore, solo, delete), and the cost estimate the panel shows. The
operators (:mod:`.operators`) are thin over these functions.

The truth is on disk (:mod:`.manifest` reads the manifests); the collection is a view for the UIList,
rebuilt after every result, on file load and by Refresh. Scripts use the same functions.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import bpy
from bpy.props import (
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from ...engine import protocol
from .. import compat
from ..edit.job import model_path, working_size
from ..session import UserError, output_parent
from ..settings import preferences
from . import manifest

_cache: dict[str, tuple[list[manifest.Take], list[str]]] = {}  # output folder -> scan (a cache of files)


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
def scanned(scene: Any, fresh: bool = False) -> tuple[list[manifest.Take], list[str]]:
    """The takes in the scene's Output folder (newest first) and notes on damaged ones."""
    parent = output_parent(scene)
    if fresh or parent not in _cache:
        _cache[parent] = manifest.scan(parent)
    return _cache[parent]


def refresh(scene: Any, select: str = "") -> list[manifest.Take]:
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


def selected(scene: Any) -> manifest.Take | None:
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


def restore(scene: Any, take: manifest.Take) -> None:
    """Put the take's settings into the panel's fields."""
    settings = scene.tokenflow
    for name, value in take.settings().items():
        setattr(settings, name, value)


def solo(scene: Any, take: manifest.Take) -> int:
    """Mute the strips of the other takes of this take's source; show this one and the source."""
    same = manifest.of_source(scanned(scene)[0], take.source, scene.name)
    muted = 0
    for other in same:
        for strip in strips_of_take(scene, other.folder):
            strip.mute = other.folder != take.folder
            muted += strip.mute
    source = source_strip(scene, take)
    if source is not None:
        source.mute = False
    return muted


def source_strip(scene: Any, take: manifest.Take) -> Any:
    ed = scene.sequence_editor
    return compat.strips_all(ed).get(take.source) if ed is not None and take.source else None


def delete(scene: Any, take: manifest.Take) -> None:
    """Remove the take's strips and its folder (only a folder that is a take: it has a manifest)."""
    if not os.path.isfile(os.path.join(take.folder, protocol.MANIFEST)):
        raise UserError(f"{take.folder} is not a TokenFlow take (no {protocol.MANIFEST}); nothing deleted")
    for strip in strips_of_take(scene, take.folder):
        compat.strips(scene.sequence_editor).remove(strip)
    shutil.rmtree(take.folder)


def on_result(scene_name: str, folders: list[str]) -> None:
    """After a result was added (edit.apply's hook): list it, selected."""
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


classes = (
    TokenFlowTakeItem,
    TokenFlowTakes,
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
    settings = {name: getattr(s, name) for name in manifest.RESTORED if name != "model"}
    size = working_size(s.size)
    settings["size"] = size
    model = model_path(s.model.strip() or preferences.default_model())
    found = scanned(scene)[0]
    measured = manifest.speed(found, model, size)
    if measured is None or n == 0:
        return "Estimate: unknown (no earlier run with this model and working size)"
    frames = _frames_of(strip)
    settings["colorspace"] = _colorspace_of(strip)
    parts = []
    for stage, label in ((protocol.STAGE_PREVIEW, "Preview"), (protocol.STAGE_PROPAGATE, "Propagate")):
        cached = manifest.inversion_known(found, frames, settings, model, stage)
        seconds = manifest.estimate(measured, stage, n, settings, inverted=cached)
        parts.append(f"{label} {manifest.format_seconds(seconds)}")
    return "Estimate: " + ", ".join(parts)


def _colorspace_of(strip: Any) -> str:
    """The strip's colour space as the job names it (the OCIO config's name; edit.job.build_job)."""
    name = strip.colorspace_settings.name
    try:
        from ..sequencer import colour, strips

        return colour.load_config(strips.ocio_config()).resolve(name) or name
    except Exception:  # no readable config: the name Blender shows
        return name


def _frames_of(strip: Any) -> list[str]:
    try:
        from ..sequencer import strips

        return strips.visible_frames(strip)
    except Exception:  # a strip that is not an image sequence: the inversion is then "unknown"
        return []
