"""The edit benchmark's results folder: resumable, shared by processes, never two settings mixed."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from bench import edit_bench


def _args(model: Path, out: Path, *more: str) -> argparse.Namespace:
    return edit_bench.build_parser().parse_args(["--model", str(model), "--out", str(out), *more])


def _model(folder: Path) -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text('{"sample_size": 32}')
    (folder / "model_index.json").write_text("{}")
    return folder


def test_folder_refuses_other_settings_and_another_model(tmp_path: Path) -> None:
    model, out = _model(tmp_path / "model"), tmp_path / "runs"
    out.mkdir()
    first = edit_bench.claim_settings(out, _args(model, out, "--steps", "25", "--inversion-steps", "50"))
    assert (first["steps"], first["inversion_steps"]) == (25, 50)
    # the same settings (other clips, styles, methods, threads) may add runs
    again = _args(model, out, "--steps", "25", "--inversion-steps", "50", "--clips", "bikes.mp4")
    assert edit_bench.claim_settings(out, again)["model_digest"] == first["model_digest"]

    with pytest.raises(SystemExit, match=r"steps 25 \(asked: 50\).*use a new --out"):
        edit_bench.claim_settings(out, _args(model, out, "--steps", "50", "--inversion-steps", "50"))
    # a model trained further at the same path is another model
    (model / "unet" / "config.json").write_text('{"sample_size": 64}')
    with pytest.raises(SystemExit, match="another model"):
        edit_bench.claim_settings(out, _args(model, out, "--steps", "25", "--inversion-steps", "50"))
    assert json.loads((out / "settings.json").read_text()) == first  # the refusals wrote nothing
    assert [p.name for p in out.iterdir()] == ["settings.json"]  # no temporary file left

    shutil.rmtree(model)
    model.mkdir()
    with pytest.raises(SystemExit, match="holds no files"):
        edit_bench.model_digest(str(model))


def test_processes_on_one_clip_keep_each_others_runs(tmp_path: Path) -> None:
    # two processes bench other styles of the same clip; each saves its own view of the clip
    clip = "carphone_pristine.mp4"
    edit_bench.save(tmp_path, {clip: {"vae_psnr": 21.8, "styles": {"pencil": {"methods": {"sdedit": {}}}}}})
    edit_bench.save(tmp_path, {clip: {"vae_psnr": 21.8, "styles": {"bw": {"methods": {"per-frame": {}}}}}})
    edit_bench.save(tmp_path, {clip: {"styles": {"pencil": {"methods": {"per-frame": {"psnr": 7.6}}}}}})
    runs = json.loads((tmp_path / "runs.json").read_text())
    styles = runs[clip]["styles"]
    assert set(styles) == {"pencil", "bw"}
    assert set(styles["pencil"]["methods"]) == {"sdedit", "per-frame"}
    assert styles["pencil"]["methods"]["per-frame"] == {"psnr": 7.6}
    assert runs[clip]["vae_psnr"] == 21.8
