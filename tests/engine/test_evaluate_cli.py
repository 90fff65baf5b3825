"""`python -m engine evaluate`: the report, and clear errors for shots that do not match."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine import protocol
from engine.quality import evaluate
from tests.clips import extract_frames
from tests.engine.conftest import run_cli

COUNT = 6


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args(list(argv))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = evaluate.run(_args(*argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 JPEG frames of carphone_pristine.mp4 (176x144), named like an image-sequence export."""
    folder = tmp_path_factory.mktemp("source")
    extract_frames("carphone_pristine.mp4", folder, COUNT, start=10, pattern="frame_{:04d}.jpg")
    return folder


def _edit(source: Path, folder: Path, change=lambda i, rgb: rgb) -> Path:
    """PNG 'edits' with the source stems, as the engine writes them."""
    folder.mkdir(parents=True)
    for i, path in enumerate(sorted(source.iterdir())):
        rgb = change(i, cv2.imread(str(path)))
        cv2.imwrite(str(folder / (path.stem + ".png")), rgb)
    return folder


@pytest.fixture(scope="module")
def same(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _edit(source, tmp_path_factory.mktemp("edits") / "same")


@pytest.fixture(scope="module")
def flicker(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def lift(i: int, bgr: np.ndarray) -> np.ndarray:
        return np.clip(bgr.astype(int) + 25 * (i % 2), 0, 255).astype(np.uint8)

    return _edit(source, tmp_path_factory.mktemp("edits") / "flicker", lift)


def test_report_table_and_json(capsys, source: Path, flicker: Path, tmp_path: Path) -> None:
    report_file = tmp_path / "reports" / "flicker.json"
    argv = [
        "--source",
        str(source),
        "--edited",
        str(flicker),
        "--prompt",
        "a cat",
        "--json",
        str(report_file),
    ]
    code, out, err = _run(capsys, *argv)
    assert code == protocol.EXIT_OK, err
    report = json.loads(report_file.read_text())
    s = report["summary"]
    expected = {"warp_error", "warp_error_source", "motion_error", "flicker", "flicker_source"}
    assert expected | {"structure_ssim", "clip_score", "clip_note"} <= s.keys()
    assert s["clip_score"] is None and s["clip_note"] == "not measured: no --clip model folder given"
    assert s["warp_error"] > 5 * s["warp_error_source"] and s["flicker"] > 15
    assert report["frames"] == COUNT and report["size"] == [176, 144] == report["measured_size"]
    assert report["names"] == [f"frame_{i:04d}" for i in range(10, 10 + COUNT)]
    assert len(report["per_frame"]["warp_error"]) == COUNT - 1
    assert len(report["per_frame"]["structure_ssim"]) == COUNT
    assert re.fullmatch(r"warp error \d+\.\d \(source \d+\.\d\)", report["summary_line"])
    assert report["summary_line"] in out and "warp error (0-255)" in out and "not measured" in out


def test_edit_equal_to_source_is_at_the_floor(source: Path, same: Path) -> None:
    # PNG copies of the decoded JPEGs: the same pixels under another suffix
    s = evaluate.evaluate_folders(source, same)["summary"]
    assert s["warp_error"] == s["warp_error_source"] and s["warp_error_ratio"] == 1.0
    assert s["motion_error"] == 0.0 and s["flicker_excess"] == 0.0
    assert s["structure_ssim"] == pytest.approx(1.0)


def test_engine_frame_lists_are_matched_by_stem(source: Path, flicker: Path) -> None:
    # the engine passes the job's frame list and the written PNGs, not necessarily in the same order
    sources = sorted(source.iterdir())
    report = evaluate.evaluate_frames(sources, sorted(flicker.iterdir(), reverse=True), prompt="a cat")
    assert report["summary"] == evaluate.evaluate_folders(source, flicker, prompt="a cat")["summary"]


def test_max_side_measures_smaller(source: Path, flicker: Path) -> None:
    report = evaluate.evaluate_folders(source, flicker, max_side=88)
    assert report["size"] == [176, 144] and report["measured_size"] == [88, 72]
    assert report["summary"]["flicker"] > 15  # a global colour jump survives shrinking


def test_one_frame_reports_structure_only(capsys, source: Path, same: Path, tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "e").mkdir()
    first = sorted(source.iterdir())[0]
    shutil.copy(first, tmp_path / "s")
    shutil.copy(same / (first.stem + ".png"), tmp_path / "e")
    report_file = tmp_path / "r.json"
    code, out, err = _run(
        capsys, "--source", str(tmp_path / "s"), "--edited", str(tmp_path / "e"), "--json", str(report_file)
    )
    assert code == protocol.EXIT_OK, err
    s = json.loads(report_file.read_text())["summary"]
    assert s["structure_ssim"] == pytest.approx(1.0)
    assert s["warp_error"] is None and s["motion_error"] is None and s["flicker"] is None
    assert "at least 2 frames" in s["temporal_note"] and "at least 2 frames" in out


def _error(capsys, *argv: str) -> str:
    code, out, err = _run(capsys, *argv)
    assert code == protocol.EXIT_BAD_INPUT, out + err
    assert "Traceback" not in err
    return err


def test_missing_and_empty_folders(capsys, source: Path, tmp_path: Path) -> None:
    err = _error(capsys, "--source", str(tmp_path / "nope"), "--edited", str(source))
    assert "source folder" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a frame")
    err = _error(capsys, "--source", str(source), "--edited", str(tmp_path / "empty"))
    assert "edited folder" in err and "holds no frames" in err
    err = _error(capsys, "--source", str(source), "--edited", str(tmp_path / "empty" / "notes.txt"))
    assert "is a file" in err


def test_different_counts_and_names(capsys, source: Path, same: Path, tmp_path: Path) -> None:
    fewer = shutil.copytree(same, tmp_path / "fewer")
    sorted(fewer.iterdir())[2].unlink()
    err = _error(capsys, "--source", str(source), "--edited", str(fewer))
    assert f"{COUNT} source frames, {COUNT - 1} edited frames" in err and "no edit for frame_0012" in err
    renamed = shutil.copytree(same, tmp_path / "renamed")
    (renamed / "frame_0013.png").rename(renamed / "shot_0013.png")
    err = _error(capsys, "--source", str(source), "--edited", str(renamed))
    assert "no edit for frame_0013" in err and "no source for shot_0013" in err


def test_different_sizes(capsys, source: Path, same: Path, tmp_path: Path) -> None:
    resized = shutil.copytree(same, tmp_path / "resized")
    frame = resized / "frame_0011.png"
    cv2.imwrite(str(frame), cv2.resize(cv2.imread(str(frame)), (88, 72)))
    err = _error(capsys, "--source", str(source), "--edited", str(resized))
    assert "sizes differ" in err and "88x72" in err and "176x144" in err


def test_clip_folder_must_exist(capsys, source: Path, same: Path, tmp_path: Path) -> None:
    err = _error(capsys, "--source", str(source), "--edited", str(same), "--prompt", "a cat",
                 "--clip", str(tmp_path / "no-clip"))  # fmt: skip
    assert "--clip" in err and "not a folder" in err


def test_clip_score_with_a_local_model(source: Path, flicker: Path, tmp_path: Path) -> None:
    from tests.engine.test_metrics import make_tiny_clip

    clip = make_tiny_clip(tmp_path / "clip")
    report = evaluate.evaluate_folders(source, flicker, prompt="a man in a car", clip=clip)
    s = report["summary"]
    assert -1.0 <= s["clip_score"] <= 1.0 and -1.0 <= s["clip_score_source"] <= 1.0
    assert s["clip_score"] != s["clip_score_source"]  # the edited frames were scored, not the source
    assert str(clip) in s["clip_note"] and len(report["per_frame"]["clip_score"]) == COUNT
    assert report["summary_line"].endswith(f", CLIP {s['clip_score']:.3f}")
    without_prompt = evaluate.evaluate_folders(source, flicker, clip=clip)["summary"]
    assert without_prompt["clip_score"] is None and "no --prompt" in without_prompt["clip_note"]


def test_command_line_python_m_engine_evaluate(source: Path, flicker: Path, tmp_path: Path) -> None:
    result = run_cli("evaluate", "--source", str(source), "--edited", str(flicker),
                     "--json", str(tmp_path / "r.json"), timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warp error (0-255)" in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["frames"] == COUNT
    # (error exits are tested through evaluate.run above: a second engine start costs ~5 s)


def test_propagate_run_reports_metrics_when_asked(model, city16: list[Path], tmp_path: Path) -> None:
    from tests.engine.conftest import run_in_process

    frames = [str(p) for p in city16[:4]]
    common = {"frames": frames, "prompt": "a red car", "cache_dir": str(tmp_path / "cache"), "steps": 2}
    code, events = run_in_process(model, output=str(tmp_path / "out"), evaluate=True, **common)
    assert code == protocol.EXIT_OK, events.getvalue()
    (done,) = events.events("done")
    metrics = done["metrics"]
    assert metrics["frames"] == 4 and metrics["summary"]["warp_error"] > 0
    assert re.fullmatch(r"warp error \d+\.\d \(source \d+\.\d\)", metrics["summary_line"])
    json.dumps(metrics, allow_nan=False)  # strict JSON, as Blender reads it
    code, events = run_in_process(model, output=str(tmp_path / "plain"), **common)
    assert events.events("done")[0]["metrics"] is None  # not asked, not measured
