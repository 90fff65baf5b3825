"""Every kind of bad input gets an `error` event that names the problem, a non-zero exit, no output."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest
import torch

from engine import protocol
from tests.engine.conftest import run_in_process


def assert_refused(tmp_path: Path, code: int, events, kind: str, *words: str) -> None:
    assert code == protocol.EXIT_CODES[kind]
    (error,) = events.events("error")
    assert error["kind"] == kind
    for word in words:
        assert word in error["message"], error["message"]
    assert not events.events("done")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


@pytest.fixture
def shot(city16, tmp_path) -> list[str]:
    folder = tmp_path / "shot"
    folder.mkdir()
    for p in city16[:4]:
        shutil.copy(p, folder / p.name)
    return sorted(str(p) for p in folder.iterdir())


def run(model, tmp_path, frames, **fields):
    fields.setdefault("prompt", "a red car")
    return run_in_process(
        model, frames=frames, output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), **fields
    )


def test_missing_frame(model, shot, tmp_path):
    Path(shot[2]).unlink()
    code, events = run(model, tmp_path, shot)
    assert_refused(tmp_path, code, events, "bad_input", "does not exist", Path(shot[2]).name)
    assert not (tmp_path / "cache").exists()


def test_truncated_frame(model, shot, tmp_path):
    data = Path(shot[1]).read_bytes()
    Path(shot[1]).write_bytes(data[:60])
    code, events = run(model, tmp_path, shot)
    assert_refused(tmp_path, code, events, "bad_input", "could not be decoded", Path(shot[1]).name)


def test_non_image_files(model, shot, tmp_path):
    text = Path(shot[0]).with_suffix(".txt")
    text.write_text("not a frame")
    code, events = run(model, tmp_path, [str(text), *shot[1:]])
    assert_refused(tmp_path, code, events, "bad_input", "not a supported image")
    fake = Path(shot[0])
    fake.write_text("not a frame either")
    code, events = run(model, tmp_path, shot)
    assert_refused(tmp_path, code, events, "bad_input", "could not be decoded")


def test_mixed_sizes(model, shot, tmp_path):
    image = cv2.imread(shot[3])
    cv2.imwrite(shot[3], cv2.resize(image, (100, 50)))
    code, events = run(model, tmp_path, shot)
    assert_refused(tmp_path, code, events, "bad_input", "differ in size", "100x50")


def test_float_exr_like_data_is_refused(model, shot, tmp_path):
    path = Path(shot[0]).with_suffix(".tif")
    cv2.imwrite(str(path), cv2.imread(shot[0]).astype("float32") / 255)
    code, events = run(model, tmp_path, [str(path)])
    assert_refused(tmp_path, code, events, "bad_input", "float", "sRGB PNG")


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("prompt", "   ", ("prompt is empty",)),
        ("steps", 0, ("'steps' is 0",)),
        ("steps", 2000, ("'steps'",)),
        ("guidance", -1.0, ("'guidance'",)),
        ("guidance", float("nan"), ("'guidance'",)),
        ("pnp_f_t", 1.5, ("'pnp_f_t'",)),
        ("pnp_attn_t", -0.1, ("'pnp_attn_t'",)),
        ("sdedit_strength", 0.0, ("'sdedit_strength'",)),
        ("chunk_size", 0, ("'chunk_size'",)),
        ("keyframe_stride", 0, ("'keyframe_stride'",)),
        ("size", 100, ("multiple of 64",)),
        ("keyframe_mode", "random", ("fixed, resample",)),
    ],
)
def test_out_of_range_numbers_and_empty_prompt(field, value, words, tmp_path, city16):
    job = protocol.Job(frames=[str(city16[0])], output=str(tmp_path / "out"), prompt="a red car")
    setattr(job, field, value)
    with pytest.raises(protocol.JobError) as err:
        job.validate()
    for word in words:
        assert word in str(err.value)


def test_no_frames_job(tmp_path):
    with pytest.raises(protocol.JobError, match="no frames"):
        protocol.Job.from_dict({"frames": [], "output": str(tmp_path / "o"), "prompt": "x"})
    with pytest.raises(protocol.JobError, match="unknown job field"):
        protocol.Job.from_dict({"frames": ["a.png"], "output": "o", "prompt": "x", "stepz": 3})


def test_unknown_models(tmp_path, shot):
    from engine.errors import ModelError
    from engine.model import devices, loading

    placement = devices.choose("cpu")
    with pytest.raises(ModelError, match="nobody-here/no-such-model") as err:
        loading.load("nobody-here/no-such-model", placement)  # offline: not cached
    assert "diffusers folder" in str(err.value) and ".safetensors" in str(err.value)
    with pytest.raises(ModelError, match="does not exist"):
        loading.load(str(tmp_path / "missing.safetensors"), placement)
    with pytest.raises(ModelError, match="no model_index.json"):
        loading.load(str(tmp_path), placement)


class _OutOfMemoryUNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.inner = unet

    def forward(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def test_out_of_memory_gives_advice(model, shot, tmp_path):
    real = model.unet
    model.unet = _OutOfMemoryUNet(real)
    try:
        code, events = run(model, tmp_path, shot)
    finally:
        model.unet = real
    assert_refused(tmp_path, code, events, "out_of_memory", "chunk size", "working size")


def test_a_frame_changed_during_the_run_is_refused(shot):
    """The shot keeps only each frame's digest and size (no pixels: memory stays flat in the frame
    count); a frame re-read later must still be the frame whose digest keys the cache."""
    import dataclasses

    import numpy as np

    from engine.errors import BadInput
    from engine.images.frames import read_shot

    read = read_shot(shot)
    frame = read.frames[1]
    assert not any(isinstance(getattr(frame, f.name), np.ndarray) for f in dataclasses.fields(frame))
    image = frame.load()
    assert image.shape == (frame.height, frame.width, 3) and image.dtype == np.float32
    Path(shot[1]).write_bytes(Path(shot[2]).read_bytes())
    with pytest.raises(BadInput, match="changed while the job ran"):
        frame.load()


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("negative_prompt", 3, ("'negative_prompt' must be a string",)),
        ("source_prompt", ["a", "car"], ("'source_prompt' must be a string",)),
        ("cache_dir", False, ("'cache_dir' must be a string",)),
        ("model", 1.5, ("'model' must be a string",)),
        ("output", 7, ("'output' must be a string",)),
        ("extra", ["model_config"], ("'extra' must be an object",)),
        ("extra", {"model_config": 5}, ("'extra.model_config' must be a string",)),
        ("evaluate", "no", ("'evaluate' must be true or false", "'no'")),
        ("evaluate", 1, ("'evaluate' must be true or false",)),
        ("matte_invert", "yes", ("'matte_invert' must be true or false",)),
        ("frame_range", "0:8", ("'frame_range' must be [start, end]",)),
        ("frame_range", [0, True], ("'frame_range' must be [start, end]",)),
        ("steps", "3", ("'steps' must be a whole number",)),
        ("stage", ["preview"], ("'stage'", "preview, propagate, invert")),
    ],
)
def test_every_job_field_is_type_checked(field, value, words, tmp_path):
    data = {"frames": ["a.png"], "output": str(tmp_path / "o"), "prompt": "x", field: value}
    with pytest.raises(protocol.JobError) as err:
        protocol.Job.from_dict(data)
    for word in words:
        assert word in str(err.value), str(err.value)


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_unknown_protocol_version_is_refused_with_the_versions_spoken(version, tmp_path):
    data = {"frames": ["a.png"], "output": str(tmp_path / "o"), "prompt": "x", "version": version}
    data["a_field_of_a_newer_version"] = 1  # the version is named first, not the unknown field
    with pytest.raises(protocol.JobError) as err:
        protocol.Job.from_dict(data)
    message = str(err.value)
    assert "'version'" in message and repr(version) in message
    assert ", ".join(map(str, protocol.SUPPORTED_VERSIONS)) in message
    data.pop("a_field_of_a_newer_version")
    data["version"] = protocol.PROTOCOL_VERSION
    assert protocol.Job.from_dict(data).version == protocol.PROTOCOL_VERSION
