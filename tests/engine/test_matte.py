"""Mattes limit the edit: untouched pixels stay bit-identical in every format, bad mattes are refused."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine import protocol
from engine.errors import BadInput
from engine.images.matte import Matte
from engine.method.editing import Editor, EditSettings, Prompts
from tests import exr_plates
from tests.engine.conftest import cli_events, run_cli, run_in_process

BOX = (40, 16, 100, 56)  # x0, y0, x1, y1 of the white matte region in a 128 x 72 frame
FEATHER = 4.0


def write_mattes(
    folder: Path, count: int, box=BOX, size=(128, 72), value: int = 255, move: bool = True
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        matte = np.zeros((size[1], size[0]), np.uint8)
        x0, y0, x1, y1 = box
        shift = i if move else 0  # it moves with the frames
        matte[y0:y1, x0 + shift : x1 + shift] = value
        path = folder / f"matte_{i:04d}.png"
        cv2.imwrite(str(path), matte)
        paths.append(str(path))
    return paths


def far_from_box(i: int, margin: int) -> np.ndarray:
    """Pixels farther than `margin` from frame i's matte box (where the feathered matte is 0)."""
    outside = np.ones((72, 128), bool)
    x0, y0, x1, y1 = BOX
    outside[max(0, y0 - margin) : y1 + margin, max(0, x0 + i - margin) : x1 + i + margin] = False
    return outside


def read_any(path: str) -> np.ndarray:
    if path.endswith(".exr"):
        return exr_plates.read(Path(path))[1]
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


def watercolor(model, frames: list[str], tmp_path: Path, mattes: list[str], **fields) -> list[str]:
    """Edit `frames` ("a watercolor painting") inside the feathered `mattes`; the written files."""
    code, events = run_in_process(
        model,
        frames=frames,
        output=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
        prompt="a watercolor painting",
        matte=mattes,
        matte_feather=FEATHER,
        **fields,
    )
    assert code == 0, events.getvalue()
    return events.events("done")[0]["files"]


def make_frames(kind: str, city16, folder: Path) -> tuple[list[str], dict]:
    """Four frames of the clip as 8/16-bit PNG or half/float EXR, and the job's colour fields."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "png8":
        return [str(p) for p in city16[:4]], {}
    if kind == "png16":
        paths = []
        for p in city16[:4]:
            image = cv2.imread(str(p)).astype(np.uint16) * 257 + 100  # values an 8-bit file cannot hold
            path = folder / p.name
            cv2.imwrite(str(path), image)
            paths.append(str(path))
        return paths, {}
    plates = exr_plates.make_plates(city16[:4], folder, "ACEScg", alpha=True, highlight=3.0)
    if kind == "exr-float":
        for path in plates:
            spec, pixels = exr_plates.read(path)
            spec.set_format(exr_plates.oiio.FLOAT)
            out = exr_plates.oiio.ImageOutput.create(str(path))
            assert out.open(str(path), spec) and out.write_image(pixels * 1.0001)  # not half-representable
            out.close()
    return [str(p) for p in plates], {"colorspace": "ACEScg", "ocio_config": exr_plates.CONFIG}


@pytest.mark.parametrize("kind", ["png8", "png16", "exr-half", "exr-float"])
def test_outside_the_matte_the_source_is_kept_bit_for_bit(model, city16, tmp_path, kind):
    frames, fields = make_frames(kind, city16, tmp_path / "frames")
    files = watercolor(model, frames, tmp_path, write_mattes(tmp_path / "matte", 4), **fields)
    for i, (source, written) in enumerate(zip(frames, files, strict=True)):
        src, out = read_any(source), read_any(written)
        assert out.dtype == src.dtype and out.shape == src.shape
        outside = far_from_box(i, int(FEATHER) + 1)
        assert np.array_equal(out[outside], src[outside])  # bit-identical where the matte is 0
        x0, y0, x1, y1 = BOX
        inside = (slice(y0 + 6, y1 - 6), slice(x0 + i + 6, x1 + i - 6))
        scale = 255.0 if src.dtype == np.uint8 else 65535.0 if src.dtype == np.uint16 else 1.0
        change = np.abs(out[inside][..., :3].astype(np.float64) - src[inside][..., :3]) / scale
        assert change.mean() > 0.02  # the edit happened inside


def test_all_white_matte_gives_the_same_frames_as_no_matte(model, city16, tmp_path):
    frames = [str(p) for p in city16[:4]]
    white = write_mattes(tmp_path / "mattes", 4, box=(0, 0, 128, 72), move=False)
    outputs = []
    for name, matte in (("plain", []), ("white", white)):
        code, events = run_in_process(
            model,
            frames=frames,
            output=str(tmp_path / name),
            cache_dir=str(tmp_path / "cache"),
            prompt="a watercolor painting",
            matte=matte,
        )
        assert code == 0, events.getvalue()
        outputs.append([cv2.imread(f).astype(int) for f in events.events("done")[0]["files"]])
    for plain, white_out in zip(*outputs, strict=True):
        assert np.abs(plain - white_out).max() <= 2


class RecordingEditor(Editor):
    """Keeps the latents each UNet call starts from, with the source latents beside them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def _guided_eps(self, src, x, t):
        self.calls.append((int(t), src.clone(), x.clone()))
        return super()._guided_eps(src, x, t)


def test_latents_outside_the_matte_follow_the_source_trajectory(model):
    n, h, w = 4, 8, 8
    generator = torch.Generator().manual_seed(0)
    settings = EditSettings(steps=3, keyframe_stride=2, chunk_size=4)
    probe = Editor(model, settings, lambda t: None, None)  # only for the timesteps
    trajectory = {t: torch.randn(n, 4, h, w, generator=generator) for t in probe.timesteps}
    embed = model.encode_prompt
    prompts = Prompts(embed(""), embed("ugly"), embed("a watercolor painting"))
    editor = RecordingEditor(model, settings, lambda t: trajectory[int(t)], prompts)
    matte = torch.zeros(n, 1, h, w)
    matte[..., :, w // 2 :] = 1.0  # edit the right half only
    editor.matte = matte
    editor.run(preview=False)
    later = [(t, src, x) for t, src, x in editor.calls if t != probe.timesteps[0]]
    assert later
    for _, src, x in later:
        assert torch.equal(x[..., : w // 2], src[..., : w // 2])  # outside: the source's latents
        assert not torch.allclose(x[..., w // 2 :], src[..., w // 2 :])  # inside: the edit's own


def refused(events, *words: str) -> None:
    (error,) = events.events("error")
    assert error["kind"] == "bad_input"
    for word in words:
        assert word in error["message"], error["message"]
    # refused before the model loads: `started` comes first, then nothing past reading the frames
    assert not [e for e in events.events("progress") if e["stage"] != "read"]


def test_a_matte_of_another_size_is_refused(city16, tmp_path):
    mattes = write_mattes(tmp_path / "matte", 4, box=(0, 0, 20, 20), size=(64, 36))
    code, events = run_in_process(
        None, frames=[str(p) for p in city16[:4]], output=str(tmp_path / "out"), prompt="x", matte=mattes
    )
    assert code == protocol.EXIT_BAD_INPUT
    refused(events, "matte_0000.png", "64x36", "128x72")


@pytest.mark.parametrize("invert", [False, True])
def test_an_empty_matte_is_refused(city16, tmp_path, invert):
    value = 255 if invert else 0  # white inverted is empty too
    mattes = write_mattes(tmp_path / "matte", 4, box=(0, 0, 128, 72), value=value, move=False)
    code, events = run_in_process(
        None,
        frames=[str(p) for p in city16[:4]],
        output=str(tmp_path / "out"),
        prompt="x",
        matte=mattes,
        matte_invert=invert,
        matte_feather=8.0,
    )
    assert code == protocol.EXIT_BAD_INPUT
    refused(events, "matte is empty")


def test_cli_matte_folder_of_another_frame_count_is_refused(city16, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in city16[:4]:
        (frames / p.name).write_bytes(p.read_bytes())
    write_mattes(tmp_path / "matte", 3)
    result = run_cli(
        "edit", "--frames", str(frames), "--matte", str(tmp_path / "matte"), "--matte-feather", "2",
        "--prompt", "x", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model"),
    )  # fmt: skip
    assert result.returncode == protocol.EXIT_BAD_INPUT
    (error,) = cli_events(result.stdout)
    assert "'matte' has 3 frames but the shot has 4" in error["message"]


def test_cli_edits_an_exr_plate_inside_a_matte(tiny_model_dir, city16, tmp_path):
    """`edit` end to end: five frames from an odd start, ACEScg half EXR with alpha and a data
    window, an inverted luminance matte with feather; EXR out, untouched outside the matte."""
    plates = exr_plates.make_plates(
        city16[5:10], tmp_path / "plate", "ACEScg", alpha=True, data_window=(0, 2, 128, 68), highlight=3.0
    )
    inverse = write_mattes(tmp_path / "roto", 5)  # a white box; below a black box on white
    for path in inverse:
        cv2.imwrite(path, 255 - cv2.imread(path, cv2.IMREAD_GRAYSCALE))
    result = run_cli(
        "edit", "--frames", str(tmp_path / "plate"), "--prompt", "a watercolor painting",
        "--out", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--steps", "3", "--size", "64",
        "--keyframe-stride", "2", "--cache-dir", str(tmp_path / "cache"),
        "--colorspace", "ACEScg", "--ocio-config", exr_plates.CONFIG,
        "--matte", str(tmp_path / "roto"), "--matte-channel", "luminance", "--matte-invert",
        "--matte-feather", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    done = cli_events(result.stdout)[-1]
    assert [Path(f).name for f in done["files"]] == [p.name for p in plates]
    for i, (source, written) in enumerate(zip(plates, done["files"], strict=True)):
        src_spec, src = exr_plates.read(source)
        out_spec, out = exr_plates.read(Path(written))
        assert (out_spec.y, out_spec.height, out_spec.channelnames) == (2, 68, ("R", "G", "B", "A"))
        outside = far_from_box(i, 3)[2:70]  # the data window's rows
        assert np.array_equal(out[outside], src[outside])
        x0, y0, x1, y1 = BOX
        box = (slice(y0 - 2, y1 - 2), slice(x0 + i, x1 + i))  # in data-window rows
        assert not np.array_equal(out[box], src[box])
    manifest = json.loads((tmp_path / "out" / "tokenflow.json").read_text())
    assert manifest["matte"]["invert"] is True and manifest["matte"]["channel"] == "luminance"
    assert manifest["colour"]["colorspace"] == "ACEScg"


def test_exr_matte_reads_its_display_window_and_channels(tmp_path):
    """An EXR matte with a data window: placed in its display window; auto takes alpha."""
    spec = exr_plates.oiio.ImageSpec(40, 20, 4, exr_plates.oiio.HALF)
    spec.x, spec.y = 30, 10
    spec.full_x, spec.full_y, spec.full_width, spec.full_height = 0, 0, 128, 72
    pixels = np.zeros((20, 40, 4), np.float32)
    pixels[..., 3] = 1.0  # alpha: the whole data window
    pixels[:, :10, :3] = 0.5  # colour: only its left quarter
    path = tmp_path / "matte.exr"
    out = exr_plates.oiio.ImageOutput.create(str(path))
    assert out.open(str(path), spec) and out.write_image(pixels)
    out.close()
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    alpha = Matte([str(path)], "auto", False, 0.0).raw(0)
    assert alpha.shape == (72, 128)
    expected = np.zeros((72, 128), np.float32)
    expected[10:30, 30:70] = 1.0
    assert np.array_equal(alpha, expected)
    luma = Matte([str(path)], "luminance", True, 0.0).raw(0)
    assert np.allclose(luma[10:30, 30:40], 0.5, atol=1e-3)  # inverted luminance of 0.5 grey
    assert np.array_equal(luma[10:30, 40:70], np.ones((20, 30)))  # inverted black
    with pytest.raises(BadInput, match="garbage.png could not be read"):
        Matte([str(garbage)], "auto", False, 0.0).raw(0)
