"""Colour spaces across Blender 4.2-5.0 and the OCIO config Blender uses: names mapped through the
config's aliases and roles, an unknown one refused, and the job carrying both to the engine; EXR
plates and linear strips go through instead of being refused."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy
import pytest

from . import pngs, strip_time
from .helpers import MODULE, add_image_strip, run_op, snapshot

# The two layouts the configs of Blender 4.2 and 5.0 use (excerpts of the real files).
CONFIG_42 = """
ocio_profile_version: 2
roles:
  # Internal scene linear space
  scene_linear: Linear Rec.709
  data: Non-Color
displays:
  sRGB:
    - !<View> {name: Standard, colorspace: sRGB}
colorspaces:
  - !<ColorSpace>
    name: Linear Rec.709
    aliases: [Linear, Linear BT.709, lin_srgb, "CGI: Linear - Rec.709"]
    family: Linear
    description: |
      name: not a colour space (a description's text)
    isdata: false
  - !<ColorSpace>
    name: ACEScg
    aliases: [Linear ACEScg, lin_ap1, "ACEScg: Linear - AP1"]
  - !<ColorSpace>
    name: sRGB
    aliases: [sRGB 2.2, srgb_tx]
  - !<ColorSpace>
    name: Non-Color
    aliases: [Generic Data, Non-Colour Data, Raw]
    isdata: true
  - !<ColorSpace>
    name: AgX Base Rec.1886
"""
CONFIG_50 = """
ocio_profile_version: 2.4
roles:
  scene_linear: Linear Rec.709
display_colorspaces:
  - !<ColorSpace>
    name: sRGB
    aliases: [srgb_rec709_display, srgb_rec709_scene, sRGB 2.2, srgb_tx]
view_transforms:
  - !<ViewTransform>
    name: AgX Base Rec.1886
colorspaces:
  - !<ColorSpace>
    name: Linear Rec.709
    aliases: [lin_rec709_scene, Linear, Linear BT.709, lin_srgb]
  - !<ColorSpace>
    name: ACEScg
    aliases: [lin_ap1_scene, lin_ap1, Linear ACEScg]
  - !<ColorSpace>
    name: Non-Color
    aliases: [Generic Data, Non-Colour Data, Raw, Utility - Raw]
    isdata: true
"""


@pytest.fixture
def pkg(ext):
    return sys.modules[f"{MODULE}.tokenflow_blender"]


@pytest.mark.parametrize("text", [CONFIG_42, CONFIG_50], ids=["4.2", "5.0"])
def test_names_map_through_aliases_and_roles(pkg, text) -> None:
    config = pkg.sequencer.colour.parse_config(text, "/configs/config.ocio")
    resolve = config.resolve
    assert resolve("Linear") == resolve("linear bt.709") == resolve("Linear Rec.709") == "Linear Rec.709"
    assert resolve("CGI: Linear - Rec.709" if "CGI" in text else "lin_srgb") == "Linear Rec.709"
    assert resolve("Linear ACEScg") == resolve("lin_ap1") == "ACEScg"
    assert resolve("srgb_tx") == resolve("sRGB") == "sRGB"
    assert resolve("Raw") == resolve("Non-Colour Data") == "Non-Color"
    assert resolve("scene_linear") == config.scene_linear == "Linear Rec.709"
    assert config.is_data("Raw") and not config.is_data("sRGB")
    assert "not a colour space (a description's text)" not in config.names
    with pytest.raises(pkg.sequencer.colour.ColourError, match=r"'Made Up'.*/configs/config.ocio"):
        resolve("Made Up")


def test_a_name_only_one_version_has(pkg) -> None:
    """4.2 defines 'AgX Base Rec.1886' as a colour space; 5.0 only as a view transform."""
    assert pkg.sequencer.colour.parse_config(CONFIG_42).resolve("AgX Base Rec.1886") == "AgX Base Rec.1886"
    with pytest.raises(pkg.sequencer.colour.ColourError, match="'AgX Base Rec.1886' is not defined"):
        pkg.sequencer.colour.parse_config(CONFIG_50).resolve("AgX Base Rec.1886")


def test_blenders_own_config(pkg, monkeypatch) -> None:
    """The config this Blender uses (4.2's or 5.0's): every colour space Blender offers a strip is
    defined in it, and legacy names map to this version's."""
    monkeypatch.delenv("OCIO", raising=False)
    path = pkg.sequencer.strips.ocio_config()
    assert path == os.path.join(
        bpy.utils.resource_path("LOCAL"), "datafiles", "colormanagement", "config.ocio"
    )
    assert os.path.isfile(path)
    config = pkg.sequencer.colour.read_config(path)
    enum = bpy.types.ColorManagedInputColorspaceSettings.bl_rna.properties["name"].enum_items
    offered = [item.identifier for item in enum]
    assert len(offered) > 15
    for name in offered:
        assert config.resolve(name) in config.names
    assert config.resolve("Linear") == "Linear Rec.709"  # Blender 3.x's name
    assert config.resolve("Raw") == "Non-Color"
    assert config.resolve("Linear ACEScg") == "ACEScg"
    assert config.scene_linear == "Linear Rec.709"
    monkeypatch.setenv("OCIO", "/studio/aces/config.ocio")
    assert pkg.sequencer.strips.ocio_config() == "/studio/aces/config.ocio"


def _exr_frames(folder: Path, count: int, width: int, height: int, depth: str = "16") -> list[Path]:
    """EXR frames written by Blender (half float by default), flat grey ramps."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        img = bpy.data.images.new(f"exr{i}", width, height, float_buffer=True)
        img.pixels.foreach_set([0.1 * (i + 1), 2.5, 0.25, 1.0] * (width * height))  # 2.5: above 1.0
        path = folder / f"plate_{i + 1:04d}.exr"
        img.filepath_raw = str(path)
        img.file_format = "OPEN_EXR"
        img.save()
        bpy.data.images.remove(img)
        paths.append(path)
    return paths


def test_exr_header(pkg, tmp_path) -> None:
    [path] = _exr_frames(tmp_path, 1, 21, 13)
    info = pkg.sequencer.imageinfo.read_info(str(path))
    assert (info.format, info.width, info.height, info.is_float) == ("exr", 21, 13, True)
    assert set(info.channels) >= {"R", "G", "B"}
    assert info.bit_depth in (16, 32)
    assert pkg.sequencer.imageinfo.check_frames([str(path)]).width == 21
    damaged = tmp_path / "damaged.exr"
    damaged.write_bytes(path.read_bytes()[:40])
    with pytest.raises(pkg.sequencer.imageinfo.FrameError, match="damaged OpenEXR"):
        pkg.sequencer.imageinfo.read_info(str(damaged))


def test_refusals_that_remain(pkg, tmp_path) -> None:
    check, err = pkg.sequencer.imageinfo.check_frames, pkg.sequencer.imageinfo.FrameError
    exr = [str(p) for p in _exr_frames(tmp_path / "exr", 2, 32, 24)]
    png = [str(p) for p in pngs.write_sequence(tmp_path / "png", 2, 32, 24)]
    with pytest.raises(err, match="differ in kind"):
        check([exr[0], png[1]])
    hdr = tmp_path / "png" / "img_0009.hdr"
    hdr.write_bytes(b"#?RADIANCE\n")
    with pytest.raises(err, match=r"img_0009.hdr is a float / log file.*OpenEXR"):
        check([*png, str(hdr)])
    multipart = tmp_path / "exr" / "multi_0001.exr"
    data = bytearray(Path(exr[0]).read_bytes())
    data[5] |= 0x10  # the multi-part flag (bit 12 of the version field)
    multipart.write_bytes(bytes(data))
    with pytest.raises(err, match="multi-part OpenEXR.*single-part"):
        check([str(multipart)])


def test_exr_plate_and_linear_strip_go_to_the_engine(pkg, scene, tmp_path) -> None:
    """An EXR strip in ACEScg is no longer refused: the job names the colour space and the config;
    a PNG strip read as linear is sent as such (the engine converts it)."""
    scene.tokenflow.prompt = "a watercolor painting"
    frames = _exr_frames(tmp_path / "plate", 4, 32, 24)
    strip = add_image_strip(scene, frames, start=7, name="plate")
    strip.colorspace_settings.name = "ACEScg"
    strip_time.set_time(strip, frame_offset_start=1)
    shot = pkg.sequencer.strips.read_shot(strip)
    assert (shot.start, len(shot.frames), shot.width, shot.height) == (8, 3, 32, 24)
    assert shot.colorspace == shot.config_colorspace == "ACEScg"
    job = pkg.edit.job.build_job(scene, shot, "propagate", str(tmp_path / "out"))
    assert job.colorspace == "ACEScg"
    assert job.ocio_config == pkg.sequencer.strips.ocio_config() and os.path.isfile(job.ocio_config)
    assert job.frames == [str(p) for p in frames[1:]]

    seq = pngs.write_sequence(tmp_path / "seq", 3, 32, 24)
    linear = add_image_strip(scene, seq, channel=4, name="linear")
    linear.colorspace_settings.name = "Linear Rec.709"
    job = pkg.edit.job.build_job(
        scene, pkg.sequencer.strips.read_shot(linear), "preview", str(tmp_path / "o2")
    )
    assert (job.colorspace, job.stage) == ("Linear Rec.709", "preview")
    srgb = add_image_strip(scene, seq, channel=5, name="srgb")
    assert pkg.edit.job.build_job(
        scene, pkg.sequencer.strips.read_shot(srgb), "preview", str(tmp_path / "o3")
    ).colorspace == ("sRGB")


def _refused(pkg, scene, match: str) -> str:
    before = snapshot(scene)
    task_before = pkg.runs.registry.get("edit")
    scene.tokenflow.prompt = "a watercolor painting"
    with pytest.raises(RuntimeError, match=match):
        run_op("sequencer.tokenflow_propagate", scene)
    assert snapshot(scene) == before
    assert pkg.runs.registry.get("edit") is task_before, "no engine may start"
    return bpy.context.window_manager.tokenflow_job.error


def test_data_colour_space_refused(tf, scene, tmp_path) -> None:
    strip = add_image_strip(scene, pngs.write_sequence(tmp_path / "seq", 3, 32, 24))
    strip.colorspace_settings.name = "Non-Color"
    msg = _refused(tf, scene, "'Non-Color', which holds data, not colour")
    assert "Color Space" in msg


def test_unknown_colour_space_refused(tf, scene, tmp_path, monkeypatch) -> None:
    """A strip whose colour space the config in $OCIO does not define (a studio config without
    Blender's 'sRGB'): refused with the name and the config, before anything starts."""
    config = tmp_path / "studio" / "config.ocio"
    config.parent.mkdir()
    config.write_text(CONFIG_50.replace("name: sRGB", "name: Output - sRGB").replace("srgb_tx]", "x]"))
    monkeypatch.setenv("OCIO", str(config))
    add_image_strip(scene, pngs.write_sequence(tmp_path / "seq", 3, 32, 24))  # read as 'sRGB'
    msg = _refused(tf, scene, "colour space 'sRGB' is not defined in the OCIO config")
    assert str(config) in msg and "'Output - sRGB'" in msg


def test_unreadable_ocio_config_refused(tf, scene, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OCIO", str(tmp_path / "nowhere" / "config.ocio"))
    add_image_strip(scene, pngs.write_sequence(tmp_path / "seq", 3, 32, 24))
    msg = _refused(tf, scene, "cannot read the OCIO config")
    assert str(tmp_path / "nowhere" / "config.ocio") in msg and "$OCIO" in msg
