"""Farm chunks: three chunk runs, merged, equal one whole run; the merge refuses what does not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.errors import BadInput
from engine.protocol import MANIFEST
from engine.run.merge import merge
from tests.engine.conftest import run_in_process


@pytest.mark.parametrize("mode", ["fixed", "resample"])
def test_three_chunks_equal_one_whole_run(model, city16, tmp_path, mode):
    common = dict(
        frames=[str(f) for f in city16[:12]],
        prompt="a snowy street",
        keyframe_mode=mode,
        keyframe_stride=4,
        steps=3,
        chunk_size=4,
    )
    code, whole = run_in_process(
        model, output=str(tmp_path / "whole"), cache_dir=str(tmp_path / "c0"), **common
    )
    assert code == 0, whole.getvalue()
    parts = []
    for i, (start, end) in enumerate([(0, 4), (4, 8), (8, 12)]):
        # No shared file system: every chunk has its own cache and inverts what it reads.
        code, events = run_in_process(
            model,
            output=str(tmp_path / f"part{i}"),
            cache_dir=str(tmp_path / f"c{i + 1}"),
            frame_range=[start, end],
            **common,
        )
        assert code == 0, events.getvalue()
        (done,) = events.events("done")
        assert done["indices"] == list(range(start, end))
        if mode == "fixed":  # keyframes 0, 4, 8, 11 plus its own frames: not the whole shot
            assert done["stats"]["cache_misses"] < 12
        parts.append(tmp_path / f"part{i}")
    merged = merge(parts[::-1], tmp_path / "merged")
    (done,) = whole.events("done")
    assert [f.split("/")[-1] for f in merged["files"]] == [f.split("/")[-1] for f in done["files"]]
    assert merged["keyframes"] == done["keyframes"]
    for a, b in zip(merged["files"], done["files"], strict=True):
        diff = np.abs(cv2.imread(a).astype(int) - cv2.imread(b).astype(int)).max()
        assert diff <= 2, f"{a} differs from the whole run by {diff}/255"
    manifest = json.loads((tmp_path / "merged" / "tokenflow.json").read_text())
    assert manifest["frame_range"] is None
    # one chunk's timings are not the shot's: the manifest says what the merge's done says
    assert (manifest["stats"], manifest["seconds"]) == (merged["stats"], None) == ({"chunks": 3}, None)


def test_chunks_share_one_inversion_cache(model, city16, tmp_path):
    common = dict(
        frames=[str(f) for f in city16[:8]],
        prompt="a red car",
        keyframe_stride=4,
        steps=2,
        cache_dir=str(tmp_path / "shared"),
    )
    code, prepare = run_in_process(model, output="", stage="invert", **common)
    assert code == 0
    assert prepare.events("done")[0]["stats"]["cache_misses"] == 8
    assert not list(tmp_path.glob("*.tmp-*"))
    for i, r in enumerate(([0, 4], [4, 8])):
        code, events = run_in_process(model, output=str(tmp_path / f"p{i}"), frame_range=r, **common)
        assert code == 0
        assert events.events("done")[0]["stats"]["inversion_unet_frames"] == 0


def test_merge_refuses_gaps_overlaps_and_foreign_chunks(model, city16, tmp_path):
    common = dict(
        frames=[str(f) for f in city16[:8]], keyframe_stride=4, steps=2, cache_dir=str(tmp_path / "cache")
    )
    for name, r, prompt in (("a", [0, 4], "x"), ("b", [4, 8], "x"), ("c", [0, 8], "x"), ("d", [4, 8], "y")):
        code, events = run_in_process(
            model, output=str(tmp_path / name), frame_range=r, prompt=prompt, **common
        )
        assert code == 0, events.getvalue()
    with pytest.raises(BadInput, match="chunk is missing"):
        merge([tmp_path / "a"], tmp_path / "out")
    with pytest.raises(BadInput, match="overlaps"):
        merge([tmp_path / "a", tmp_path / "c"], tmp_path / "out")
    with pytest.raises(BadInput, match="another job.*prompt"):
        merge([tmp_path / "a", tmp_path / "d"], tmp_path / "out")
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["model_family"] == "sd1"
    (tmp_path / "b" / MANIFEST).write_text(json.dumps({**manifest, "model_family": "sdxl"}))
    with pytest.raises(BadInput, match="model_family 'sdxl'.*'sd1'"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(manifest))
    merged = merge([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert json.loads((Path(merged["output"]) / MANIFEST).read_text())["model_family"] == "sd1"
    (tmp_path / "b" / "frame_0045.png").unlink()
    with pytest.raises(BadInput, match="frame_0045.png is missing"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    shutil.rmtree(tmp_path / "a")
    with pytest.raises(BadInput, match="not a finished chunk"):
        merge([tmp_path / "a"], tmp_path / "out")


def test_frame_range_must_align_to_keyframe_blocks(city16):
    from engine import protocol

    job = protocol.Job(
        frames=[str(f) for f in city16[:10]], output="o", prompt="x", keyframe_stride=4, frame_range=[2, 6]
    )
    with pytest.raises(protocol.JobError, match="multiples of keyframe_stride"):
        job.validate()
    job.frame_range = [8, 10]  # the shot's end is fine
    job.validate()
