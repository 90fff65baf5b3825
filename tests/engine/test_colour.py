"""EXR plates and colour management: the colour path round trip, highlights, headers, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import PyOpenColorIO as OCIO
import pytest

from engine import protocol
from engine.images import colour, plates
from tests import exr_plates
from tests.engine.conftest import run_in_process

CONFIG = exr_plates.CONFIG


def srgb(png: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


@pytest.mark.parametrize("space", ["ACEScg", "Linear Rec.709 (sRGB)"])
def test_colour_path_round_trip_keeps_values_and_highlights(city16, tmp_path, space):
    paths = exr_plates.make_plates(city16[:2], tmp_path, space, highlight=6.0)
    conv = colour.from_job(space, CONFIG)
    assert conv is not None and not conv.identity
    for png, path in zip(city16[:2], paths, strict=True):
        source = plates.read(path).display_rgb()
        working = conv.to_working(source)
        h, w = source.shape[:2]
        # The working image is the display-referred sRGB the model knows (the quarter without highlights).
        assert np.abs(working[h // 2 :] - srgb(png)[h // 2 :]).max() < 5e-3
        # No edit: the model sees the clipped image; the excess comes back on the way out.
        seen = colour.model_input(working)
        assert seen.min() >= 0.0 and seen.max() <= 1.0
        assert (working > 1.0).any(), "the plate should hold highlights above the display range"
        back = conv.from_working(colour.reapply_excess(seen, working))
        assert np.all(np.abs(back - source) <= 1e-3 * np.abs(source) + 1e-6)


def test_exr_plate_edit_keeps_header_alpha_and_highlights(model, city16, tmp_path):
    w, h = 128, 72
    window = (8, 4, 104, 60)  # a data window inside the 128 x 72 display window
    paths = exr_plates.make_plates(
        city16[:4], tmp_path / "plate", "ACEScg", alpha=True, data_window=window, highlight=6.0
    )
    code, events = run_in_process(
        model,
        frames=[str(p) for p in paths],
        output=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
        prompt="a watercolor painting",
        colorspace="ACEScg",
        ocio_config=CONFIG,
    )
    assert code == 0, events.getvalue()
    (done,) = events.events("done")
    conv = colour.from_job("ACEScg", CONFIG)
    changed = 0.0
    for source, written in zip(paths, done["files"], strict=True):
        assert Path(written).name == source.name  # EXR stays EXR, same name
        src_spec, src = exr_plates.read(source)
        out_spec, out = exr_plates.read(Path(written))
        assert (out_spec.full_width, out_spec.full_height) == (w, h)
        assert (out_spec.x, out_spec.y, out_spec.width, out_spec.height) == window
        assert out_spec.channelnames == src_spec.channelnames == ("R", "G", "B", "A")
        assert out_spec.format == src_spec.format  # half stays half
        assert out_spec.get_string_attribute("oiio:ColorSpace") == src_spec.get_string_attribute(
            "oiio:ColorSpace"
        )
        assert np.array_equal(out[..., 3], src[..., 3])  # alpha carried over, bit for bit
        assert np.isfinite(out).all()
        changed = max(changed, float(np.abs(out[..., :3] - src[..., :3]).max()))
        # Highlights: the model saw them clipped; the source's excess above 1.0 is added back.
        src_w, out_w = conv.to_working(src[..., :3]), conv.to_working(out[..., :3])
        bright = src_w > 1.5
        assert bright.any()
        excess = src_w[bright] - 1.0
        assert np.all(out_w[bright] >= excess - 0.02) and np.all(out_w[bright] <= src_w[bright] + 0.02)
        assert out[..., :3].max() > 1.0
    assert changed > 0.05  # the edit did change the picture
    manifest = json.loads((Path(done["output"]) / "tokenflow.json").read_text())
    assert manifest["colour"]["colorspace"] == "ACEScg"
    assert manifest["colour"]["working"] == "sRGB Encoded Rec.709 (sRGB)"


def test_srgb_pngs_named_srgb_keep_the_plain_path(model, city16, tmp_path):
    """A Blender strip's 'sRGB' PNGs give the same bytes as a job without a colour space."""
    frames = [str(p) for p in city16[:4]]
    results = []
    for name, space in (("plain", ""), ("named", "sRGB - Texture")):
        code, events = run_in_process(
            model,
            frames=frames,
            output=str(tmp_path / name),
            cache_dir=str(tmp_path / "cache"),
            prompt="a watercolor painting",
            colorspace=space,
            ocio_config=CONFIG if space else "",
        )
        assert code == 0, events.getvalue()
        results.append([Path(f).read_bytes() for f in events.events("done")[0]["files"]])
    assert results[0] == results[1]


def refused(events, *words: str) -> str:
    (error,) = events.events("error")
    assert error["kind"] == "bad_input"
    for word in words:
        assert word in error["message"], error["message"]
    # refused before the model loads: `started` comes first, then nothing past reading the frames
    assert not [e for e in events.events("progress") if e["stage"] != "read"]
    return error["message"]


def test_unknown_colour_space_is_refused_before_the_model_loads(city16, tmp_path):
    code, events = run_in_process(
        None,
        frames=[str(p) for p in city16[:2]],
        output=str(tmp_path / "out"),
        prompt="x",
        colorspace="ACEScgg",
        ocio_config=CONFIG,
    )
    assert code == protocol.EXIT_BAD_INPUT
    refused(events, "'ACEScgg'", CONFIG, "ACEScg")  # names it, the config, and the near name
    assert not (tmp_path / "out").exists()


def test_colour_space_without_a_config_is_refused(city16, tmp_path, monkeypatch):
    monkeypatch.delenv("OCIO", raising=False)
    code, events = run_in_process(
        None,
        frames=[str(p) for p in city16[:2]],
        output=str(tmp_path / "out"),
        prompt="x",
        colorspace="ACEScg",
    )
    assert code == protocol.EXIT_BAD_INPUT
    refused(events, "'ACEScg'", "ocio_config", "OCIO")


def test_exr_without_a_colour_space_is_refused(city16, tmp_path):
    paths = exr_plates.make_plates(city16[:2], tmp_path / "plate")
    code, events = run_in_process(
        None, frames=[str(p) for p in paths], output=str(tmp_path / "out"), prompt="x"
    )
    assert code == protocol.EXIT_BAD_INPUT
    refused(events, paths[0].name, "colorspace")


def test_a_multi_part_exr_is_refused_by_name_before_the_model_loads(city16, tmp_path):
    """A renderer's RGBA part plus a Z part, in the middle of a shot: edited to the end before, with
    the Z part silently missing from the result; now refused, naming the file and its parts."""
    paths = exr_plates.make_plates(city16[:3], tmp_path / "plate")
    exr_plates.make_multi_part(paths[1])
    code, events = run_in_process(
        None,
        frames=[str(p) for p in paths],
        output=str(tmp_path / "out"),
        prompt="x",
        colorspace="ACEScg",
        ocio_config=CONFIG,
    )
    assert code == protocol.EXIT_BAD_INPUT
    message = refused(events, paths[1].name, "multi-part", "2 parts: rgba, depth", "one part")
    assert paths[0].name not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("window", ["dataWindow", "displayWindow"])
def test_an_exr_header_claiming_100k_pixels_is_refused_from_the_header(city16, tmp_path, window):
    """Refused from the header, in the preflight (standard library: no OpenImageIO, nothing allocated),
    naming the file and the window."""
    paths = exr_plates.make_plates(city16[:3], tmp_path / "plate")
    exr_plates.claim_size(paths[2], 100_000, 100_000, window)
    code, events = run_in_process(
        None,
        frames=[str(p) for p in paths],
        output=str(tmp_path / "out"),
        prompt="x",
        colorspace="ACEScg",
        ocio_config=CONFIG,
    )
    assert code == protocol.EXIT_BAD_INPUT
    refused(events, paths[2].name, f"its {window} is 100000x100000", "8192 x 8192")
    assert not events.events("started")  # the preflight: before the frames are decoded
    assert not (tmp_path / "out").exists()


# A config the test writes: its sRGB space has no usual name, alias or role, and a gamma 2.2 decoy
# comes first, so only the transform can identify it.
CUSTOM_CONFIG = """ocio_profile_version: 2
roles:
  default: Scene Linear Rec709
  scene_linear: Scene Linear Rec709
  aces_interchange: ACES2065-1
file_rules:
  - !<Rule> {name: Default, colorspace: default}
displays:
  Monitor:
    - !<View> {name: Plain, colorspace: Display Encoded}
active_displays: []
active_views: []
colorspaces:
  - !<ColorSpace>
    name: Scene Linear Rec709
    aliases: [Linear]
  - !<ColorSpace>
    name: ACES2065-1
    from_scene_reference: !<GroupTransform>
      children:
        - !<BuiltinTransform> {style: UTILITY - ACES-AP1_to_LINEAR-REC709_BFD, direction: inverse}
        - !<BuiltinTransform> {style: ACEScg_to_ACES2065-1}
  - !<ColorSpace>
    name: Gamma Decoy
    from_scene_reference: !<ExponentTransform> {value: 2.2, direction: inverse}
  - !<ColorSpace>
    name: Display Encoded
    from_scene_reference: !<ExponentWithLinearTransform> {gamma: 2.4, offset: 0.055, direction: inverse}
"""


def test_working_space_is_found_by_its_transform_not_its_name(tmp_path):
    path = tmp_path / "config.ocio"
    path.write_text(CUSTOM_CONFIG)
    conv = colour.from_job("Linear", str(path))  # an alias, as an older Blender names the space
    assert conv is not None
    assert conv.colorspace == "Scene Linear Rec709"
    assert conv.working == "Display Encoded"
    ramp = np.linspace(0.0, 1.0, 50, dtype=np.float32)
    linear = np.stack([ramp, ramp**2, ramp[::-1]], axis=-1)[None]
    expected = linear.copy()
    builtin = OCIO.Config.CreateFromBuiltinConfig("ocio://default")
    reference = builtin.getProcessor("Linear Rec.709 (sRGB)", "sRGB - Texture")
    reference.getDefaultCPUProcessor().applyRGB(expected)
    assert np.abs(conv.to_working(linear) - expected).max() < 1e-4


def test_inversion_cache_tells_colour_interpretations_apart(model, city16, tmp_path):
    """The same EXR bytes read in another colour space give the model other pixels: no cache hit."""
    paths = [str(p) for p in exr_plates.make_plates(city16[:2], tmp_path / "plate", "ACEScg")]
    stats = []
    for name, space in (("a", "ACEScg"), ("b", "Linear Rec.709 (sRGB)"), ("c", "ACEScg")):
        code, events = run_in_process(
            model,
            frames=paths,
            output=str(tmp_path / name),
            cache_dir=str(tmp_path / "cache"),
            prompt="x",
            keyframe_stride=2,
            colorspace=space,
            ocio_config=CONFIG,
        )
        assert code == 0, events.getvalue()
        stats.append(events.events("done")[0]["stats"])
    assert stats[1]["cache_hits"] == 0 and stats[1]["cache_misses"] == 2
    assert stats[2]["cache_hits"] == 2  # the same interpretation reuses its inversion


def test_evaluate_on_exr_plates_is_refused(city16, tmp_path):
    paths = exr_plates.make_plates(city16[:2], tmp_path / "plate")
    code, events = run_in_process(
        None,
        frames=[str(p) for p in paths],
        output=str(tmp_path / "out"),
        prompt="x",
        evaluate=True,
        colorspace="ACEScg",
        ocio_config=CONFIG,
    )
    assert code == protocol.EXIT_BAD_INPUT
    refused(events, "evaluate", "EXR")


def test_evaluate_command_refuses_exr_folders(city16, tmp_path):
    from engine.errors import BadInput
    from engine.quality.evaluate import list_frames

    exr_plates.make_plates(city16[:1], tmp_path / "plate")
    with pytest.raises(BadInput, match="EXR plates"):
        list_frames(tmp_path / "plate", "source")
