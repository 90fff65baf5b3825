"""The scene's TokenFlow settings take their descriptions and limits from the engine's field table
(protocol.FIELDS), the one the engine validates a job with and its command line shows."""

from __future__ import annotations

import sys

import bpy

from .helpers import MODULE


def test_settings_follow_the_job_field_table(ext) -> None:
    protocol = sys.modules[f"{MODULE}.engine.protocol"]
    props = bpy.types.Scene.bl_rna.properties["tokenflow"].fixed_type.bl_rna.properties
    shared = [name for name in protocol.FIELDS if name in props]
    assert len(shared) >= 15, shared  # the edit settings a user sets in the panel
    for name in shared:
        spec, prop = protocol.FIELDS[name], props[name]
        assert prop.description.startswith(spec.help[0].upper() + spec.help[1:]), name
        if spec.kind == "int":
            assert prop.hard_min == spec.low and prop.hard_max == min(spec.high, 2**31 - 1), name
        elif spec.kind == "number":
            assert prop.hard_max == spec.high, name
            assert prop.hard_min > spec.low if spec.low_open else prop.hard_min == spec.low, name
        elif spec.kind == "choice":
            assert {item.identifier for item in prop.enum_items} == set(spec.choices), name


def test_a_value_the_panel_allows_is_one_the_engine_takes(ext, scene) -> None:
    """The limits agree in practice: the extremes Blender lets a user set pass the job's validation."""
    protocol = sys.modules[f"{MODULE}.engine.protocol"]
    s = scene.tokenflow
    props = type(s).bl_rna.properties
    values = {}
    for name in ("steps", "keyframe_stride", "chunk_size", "guidance", "pnp_f_t", "matte_feather", "seed"):
        setattr(s, name, props[name].hard_max)
        values[name] = getattr(s, name)
    job = protocol.Job(frames=["a.png"], output="out", prompt="snow", **values)
    job.validate()
    s.sdedit_strength = 0.0  # clamped by Blender to its minimum, which the engine accepts
    protocol.Job(frames=["a.png"], output="out", prompt="snow", sdedit_strength=s.sdedit_strength).validate()
