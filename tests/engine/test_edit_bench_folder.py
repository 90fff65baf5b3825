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


def test_summary_separates_cases_no_edit_through_the_vae_can_win(tmp_path: Path) -> None:
    def style(source: float, truth_vae: float, edit: float) -> dict:
        run = {"psnr": edit, "ssim": 0.5, "warp": 1.0}
        return {
            "source_psnr": source,
            "truth_vae_psnr": truth_vae,
            "source_vae_psnr": source - 1,
            "warp_truth": 2.0,
            "methods": {edit_bench.TOKENFLOW: run, edit_bench.BASELINE: {**run, "warp": 1.1}},
        }

    runs = {
        "bikes.mp4": {
            "vae_psnr": 21.0,
            "reconstruction_psnr": 20.9,
            "styles": {
                # a nearly grey clip: its b/w truth is nearer the source than the VAE can ever get
                "bw": style(source=34.4, truth_vae=21.8, edit=16.7),
                "pencil": style(source=8.3, truth_vae=15.1, edit=9.0),
                "sepia": style(source=16.0, truth_vae=19.0, edit=15.0),
            },
        }
    }
    toward = edit_bench.summarize(runs)["tokenflow_toward_truth"]
    assert [c["reachable"] for c in toward["cases"]] == [False, True, True]
    assert (toward["reachable"], toward["toward_among_reachable"], toward["holds"]) == (2, 1, False)
