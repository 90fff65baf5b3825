"""The quality benchmark runs end to end on 4 tiny frames, so that it cannot rot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import pytest

from bench import quality
from engine.method import keyframes


def test_quality_bench_on_four_tiny_frames(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the session's tiny model (what `python -m engine make-tiny-model` writes) saves one engine start
    out = tmp_path / "quality"
    argv = ["--clips", "cityCC0.mpg", "--frames", "4", "--width", "96", "--size", "64", "--steps", "2"]
    argv += ["--keyframe-stride", "2", "--device", "cpu", "--model", str(tiny_model_dir), "--out", str(out)]
    code = quality.main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "quality.json").read_text())
    clip = report["clips"]["cityCC0.mpg"]
    assert set(clip["methods"]) == {"per-frame", "tokenflow-fixed", "tokenflow-resample"}
    for name, method in clip["methods"].items():
        s = method["summary"]
        assert s["warp_error"] > 0 and s["warp_error_source"] > 0, name
        assert s["clip_score"] is None and "not measured" in s["clip_note"]
        assert sorted(p.name for p in Path(method["output"]).glob("*.png")) == [
            f"frame_{i:04d}.png" for i in range(20, 24)
        ]
    assert clip["methods"]["tokenflow-fixed"]["keyframes"] == keyframes.fixed(
        4, 2
    )  # the stride reached the engine
    for method in ("tokenflow-fixed", "tokenflow-resample"):
        ratio = clip["ratios"][method]["warp_error"]
        assert math.isfinite(ratio) and ratio > 0
        assert ratio == pytest.approx(
            clip["methods"][method]["summary"]["warp_error"]
            / clip["methods"]["per-frame"]["summary"]["warp_error"]
        )
        assert f"{method} / per-frame: warp_error {ratio:.2f}x" in printed
    chart = cv2.imread(report["chart"])
    sheet = cv2.imread(report["contact_sheet"])
    assert chart is not None and chart.shape[0] > 200
    assert sheet is not None and sheet.shape[0] > sheet.shape[1] / 2  # 4 rows (source + 3 edits) of 4 frames


def test_quality_bench_refuses_a_stretch_with_a_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = quality.main(
        ["--clips", "bikes.mp4", "--frames", "80", "--model", str(tmp_path), "--out", str(tmp_path)]
    )
    assert code == 2
    assert "continuous stretch" in capsys.readouterr().err
