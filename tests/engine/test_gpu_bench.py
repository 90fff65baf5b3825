"""bench/gpu_bench.py must not rot: its CPU dry run (2 frames, 64 px, 2 steps, tiny model, channels-last
UNet) prints docs/performance.md's table, and without CUDA it refuses with a clear message."""

from __future__ import annotations

import importlib.util
import json

from tests.engine.conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_the_readme_table(tmp_path, capsys):
    assert _bench().main(["--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        "| Phase | Method | Time (s) | Per frame (s) | Peak GPU memory (GB) | UNet frame evaluations |" in out
    )
    assert "TokenFlow edit / per-frame PnP edit:" in out
    (report,) = tmp_path.glob("gpu_bench-*.json")
    rows = json.loads(report.read_text())["rows"]
    assert [(r["phase"], r["method"]) for r in rows] == [
        ("inversion", "DDIM (cached per frame)"),
        ("edit", "TokenFlow"),
        ("edit", "per-frame PnP"),
    ]
    inversion, tokenflow, per_frame = rows
    assert inversion["unet_frame_evals"] == 2 * 2  # frames x steps, nothing cached yet
    # The edits read the inversion from the cache: only their own UNet work is counted.
    assert per_frame["unet_frame_evals"] == 2 * 2 and tokenflow["unet_frame_evals"] > 0
    assert all(r["seconds"] > 0 and r["peak_gb"] is None for r in rows)


def test_dry_run_of_the_sdxl_configuration_runs_an_sdxl_model(tmp_path, capsys):
    assert _bench().main(["--dry-run", "--config", "sdxl", "--out", str(tmp_path)]) == 0
    assert "tiny SDXL (dry run)" in capsys.readouterr().out
    (report,) = tmp_path.glob("gpu_bench-*.json")
    rows = json.loads(report.read_text())["rows"]
    assert [r["unet_frame_evals"] for r in rows][0] == 2 * 2 and all(r["seconds"] > 0 for r in rows)


def test_refuses_without_cuda(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _bench().main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "CUDA" in err and "--dry-run" in err
    assert not list(tmp_path.iterdir())


def test_channels_last_unet_gives_the_same_edit(model, city16, tmp_path):
    """The engine's CUDA layout (channels-last UNet) runs TokenFlow's processors and hooks unchanged."""
    import torch

    from engine.model.speedups import prepare_unet
    from tests.engine.conftest import run_in_process

    def edit(name: str):
        code, events = run_in_process(
            model,
            frames=[str(p) for p in city16[:4]],
            output=str(tmp_path / name),
            prompt="snow",
            cache_dir=str(tmp_path / "cache"),
            stage="preview",
        )
        assert code == 0, events.events()[-1]
        return sorted((tmp_path / name).glob("*.png"))

    plain = edit("plain")
    prepare_unet(model.unet, model.placement, channels_last=True)
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    try:
        other = edit("other")
    finally:
        model.unet.to(memory_format=torch.contiguous_format)
    import numpy as np
    from PIL import Image

    for a, b in zip(plain, other, strict=True):
        diff = np.abs(np.asarray(Image.open(a), dtype=float) - np.asarray(Image.open(b), dtype=float))
        assert diff.max() <= 2  # rounding of another convolution order at most


def test_the_step_loop_sends_no_python_data_to_the_device_per_layer_or_call(model, city16, tmp_path):
    """Tensors made from Python data inside Editor._run become host-to-device copies on a GPU:
    none per attention layer, UNet call or step. The kept keyframes' indices are made once per
    distinct keyframe pass (every step's is the same in `fixed` mode), the timesteps once per run."""
    from tests.engine.conftest import run_in_process

    spec = importlib.util.spec_from_file_location("step_copies", ROOT / "bench" / "step_copies.py")
    step_copies = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_copies)
    common = dict(frames=[str(p) for p in city16[:8]], prompt="snow", cache_dir=str(tmp_path / "cache"))
    assert run_in_process(model, output="", stage="invert", **common)[0] == 0
    counter = step_copies._Counter()
    with counter:
        code, _ = run_in_process(model, output=str(tmp_path / "out"), stage="propagate", **common)
    assert code == 0
    made = {where: n for (op, where), n in counter.counts.items() if op == "aten::lift_fresh"}
    steps, keyframe_passes = 3, 3  # conftest's run_in_process: 3 steps, one keyframe pass each
    in_attention = sum(n for where, n in made.items() if where.startswith("attention.py"))
    assert keyframe_passes == steps > 1
    assert in_attention == 2, made  # the same pass at every step: once in the run, not per layer or step
    assert not [w for w in made if "_guided_eps" in w], made  # the UNet gets the step's own tensor
    assert sum(n for where, n in made.items() if "_timestep" in where) == 1, made  # all steps at once
