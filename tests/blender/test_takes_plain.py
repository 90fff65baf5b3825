"""takes/manifest.py, the plain part of Takes (no bpy): listing, order, ages, estimates, damaged manifests."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import MODULE


@pytest.fixture
def takes(ext) -> Any:
    return sys.modules[f"{MODULE}.tokenflow_blender.takes.manifest"]


def _job(**over: Any) -> dict[str, Any]:
    job = {
        "frames": [f"/shots/city/f{i:02d}.png" for i in range(10)],
        "output": "-",
        "prompt": "a watercolor painting",
        "stage": "preview",
        "negative_prompt": "ugly",
        "source_prompt": "a street",
        "model": "/models/tiny",
        "steps": 3,
        "guidance": 7.5,
        "pnp_f_t": 0.8,
        "pnp_attn_t": 0.5,
        "edit_mode": "pnp",
        "sdedit_strength": 0.9,
        "keyframe_stride": 4,
        "keyframe_mode": "fixed",
        "seed": 1,
        "size": 64,
        "chunk_size": 8,
        "keyframe_batch": 8,
        "keyframe_anchors": 3,
        "extra": {"take": {"source": "city", "scene": "Scene", "created": 1000.0}},
    }
    job.update(over)
    return job


def _write(folder: Path, job: dict[str, Any], stats: dict[str, Any] | None = None, **top: Any) -> Path:
    folder.mkdir(parents=True)
    manifest = {
        "stage": job["stage"],
        "keyframes": [0, 3, 6, 9],
        "job": job,
        "stats": stats
        or {"inversion_unet_frames": 0, "keyframe_unet_frames": 12, "propagate_unet_frames": 0},
        "metrics": None,
        **top,
    }
    (folder / "tokenflow.json").write_text(json.dumps(manifest))
    return folder


def test_scan_lists_takes_newest_first_and_skips_damaged_ones_with_a_note(takes, tmp_path) -> None:
    extra = lambda source, created: {"take": {"source": source, "scene": "Scene", "created": created}}  # noqa: E731
    _write(tmp_path / "a", _job(prompt="first", extra=extra("city", 100.0)), seconds=4.0)
    _write(tmp_path / "b", _job(prompt="third", seed=7, extra=extra("city", 300.0)))
    _write(tmp_path / "c", _job(prompt="second", stage="propagate", extra=extra("city", 200.0)))
    _write(tmp_path / "d", _job(prompt="other strip", extra=extra("bikes", 400.0)))
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "tokenflow.json").write_text('{"job": {"prom')
    (tmp_path / "nojob").mkdir()
    (tmp_path / "nojob" / "tokenflow.json").write_text('{"job": null, "stats": {}}')
    (tmp_path / ".x.tmp-12").mkdir()  # the engine writing: never a take
    (tmp_path / "frames").mkdir()  # a folder without a manifest: not a take, no note
    (tmp_path / "job.json").write_text("{}")

    found, notes = takes.scan(str(tmp_path))
    assert [t.prompt for t in found] == ["other strip", "third", "second", "first"]
    assert len(notes) == 2 and notes[0].startswith("nojob: ") and notes[1].startswith("torn: unreadable")
    city = takes.of_source(found, "city", "Scene")
    assert [(t.prompt, t.kind, t.seed) for t in city] == [
        ("third", "preview", 7),
        ("second", "shot", 1),
        ("first", "preview", 1),
    ]
    assert city[2].id == "a" and city[2].folder == str(tmp_path / "a") and city[2].seconds == 4.0
    assert city[2].keyframes == [0, 3, 6, 9]
    assert takes.of_source(found, "city", "Other scene") == []
    assert takes.scan(str(tmp_path / "missing")) == ([], [])


def test_rows_ages_and_restored_settings(takes, tmp_path) -> None:
    take = takes.read_take(
        str(_write(tmp_path / "t", _job(prompt="a  very long prompt about a snowy evening")))
    )
    assert takes.row(take, now=1000.0 + 3 * 3600 + 5) == (
        "a very long prompt about a\u2026",
        "seed 1",
        "preview",
        "3 h",
    )
    assert [takes.age(s) for s in (0, 5, 45, 600, 7200, 3 * 86400)] == [
        "now",
        "now",
        "45 s",
        "10 min",
        "2 h",
        "3 d",
    ]
    settings = take.settings()
    assert settings["prompt"] == "a  very long prompt about a snowy evening" and settings["seed"] == 1
    assert set(settings) == set(takes.RESTORED)
    assert settings["pnp_qk_layers"] == ""  # a take older than the field restores the field's default
    assert "frames" not in settings and "output" not in settings
    assert any(line.startswith("Keyframes fixed every 4: [0, 3, 6, 9]") for line in takes.details(take))
    assert take.variation is None
    extra = {**_job()["extra"], "variation": {"index": 1, "of": 2, "run": "/r/x"}}
    assert takes.read_take(str(_write(tmp_path / "v", _job(extra=extra)))).variation == 1


def test_unet_frames_match_the_engine_counts(takes) -> None:
    # tests/engine/test_method.py: 10 frames, stride 4, 3 steps -> keyframes [0, 3, 6, 9]: a preview
    # evaluates 3 x 4 keyframe frames, a propagate adds 3 x 10.
    s = _job()
    assert takes.unet_frames("preview", 10, s) == 12
    assert takes.unet_frames("propagate", 10, s) == 12 + 30
    assert takes.unet_frames("preview", 10, s, inverted=False) == 12 + 3 * 4
    assert takes.unet_frames("propagate", 10, s, inverted=False) == 42 + 3 * 10
    assert takes.unet_frames("preview", 10, s, variations=3) == 36
    assert takes.unet_frames("preview", 10, {**s, "edit_mode": "sdedit", "sdedit_strength": 0.5}) == 2 * 4
    assert takes.keyframe_count(12, 4, "fixed") == 4 and takes.keyframe_count(12, 4, "resample") == 3


def test_speed_and_estimates_from_earlier_runs(takes, tmp_path) -> None:
    stats = lambda frames, seconds: {"keyframe_unet_frames": frames, "unet_seconds": seconds}  # noqa: E731
    found = [
        takes.read_take(str(_write(tmp_path / "a", _job(), stats(12, 6.0), seconds=10.0))),
        takes.read_take(str(_write(tmp_path / "b", _job(stage="propagate"), stats(28, 14.0), seconds=20.0))),
        takes.read_take(str(_write(tmp_path / "c", _job(size=128), stats(10, 100.0), seconds=101.0))),
        takes.read_take(str(_write(tmp_path / "old", _job(), seconds=3.0))),  # before unet_seconds existed
    ]
    speed = takes.speed(found, "/models/tiny", 64)
    assert speed.per_unet_frame == pytest.approx(20.0 / 40) and speed.runs == 2
    assert speed.overhead == pytest.approx(6.0)  # the median of 4 and 6 (upper)
    assert takes.speed(found, "/models/other", 64) is None
    assert takes.speed(found, "/models/tiny", 256) is None
    s = _job()
    assert takes.estimate(speed, "preview", 10, s) == pytest.approx(6.0 + 0.5 * 12)
    assert takes.estimate(speed, "propagate", 10, s, inverted=False) == pytest.approx(6.0 + 0.5 * 72)
    assert takes.estimate(None, "preview", 10, s) is None
    assert [takes.format_seconds(x) for x in (None, 0.2, 42, 190, 3725)] == [
        "unknown",
        "~1 s",
        "~42 s",
        "~3:10",
        "~1:02:05",
    ]
    frames = _job()["frames"]
    assert takes.inversion_known(found, frames, s, "/models/tiny", "propagate")  # take b, a shot
    assert not takes.inversion_known(found[:1], frames, s, "/models/tiny", "propagate")  # a preview only
    assert takes.inversion_known(found[:1], frames, s, "/models/tiny", "preview")
    assert not takes.inversion_known(found, frames, {**s, "steps": 50}, "/models/tiny", "preview")
    # another colour space decodes other pixels, another inversion step count is another inversion
    srgb = [takes.read_take(str(_write(tmp_path / "d", _job(stage="propagate", colorspace="sRGB"))))]
    assert takes.inversion_known(srgb, frames, {**s, "colorspace": "sRGB"}, "/models/tiny", "propagate")
    assert not takes.inversion_known(srgb, frames, {**s, "colorspace": "ACEScg"}, "/models/tiny", "preview")
    assert not takes.inversion_known(srgb, frames, {**s, "inversion_steps": 50}, "/models/tiny", "preview")
    assert takes.inversion_known(srgb, frames, {**s, "inversion_steps": 0}, "/models/tiny", "preview")


def test_variation_specs(takes) -> None:
    assert takes.variation_specs("SEEDS", 3, 5, []) == [{"seed": 5}, {"seed": 6}, {"seed": 7}]
    lines = ["a snowy street", "", "  a   watercolor ", "a snowy street"]
    assert takes.variation_specs("PROMPTS", 9, 1, lines) == [
        {"prompt": "a snowy street"},
        {"prompt": "a watercolor"},
    ]
    assert takes.take_extra("Scene", "city", now=12.5) == {
        "take": {"source": "city", "scene": "Scene", "created": 12.5}
    }


def test_variation_base_keeps_clear_of_existing_variation_folders(takes, tmp_path) -> None:
    base = str(tmp_path / "city-preview-variations-20261125-120000")
    assert takes.variation_base(base, 2) == base
    Path(base + "-v2").mkdir()  # an earlier run in the same second wrote its second variation
    assert takes.variation_base(base, 2) == base + "-2"
    assert takes.variation_base(base, 1) == base


def test_an_unfinished_variations_run_leaves_no_temporary_folders(takes, tmp_path) -> None:
    base = str(tmp_path / "city-preview-variations-1")
    Path(base + "-v1").mkdir()  # finished: a take, kept
    (tmp_path / ".city-preview-variations-1-v2.tmp-123").mkdir()  # half written when the engine was killed
    (tmp_path / ".other-v2.tmp-9").mkdir()  # another run's: not ours
    removed = takes.discard_variation_temporaries(base, 3)
    assert [Path(p).name for p in removed] == [".city-preview-variations-1-v2.tmp-123"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other-v2.tmp-9", "city-preview-variations-1-v1"]
