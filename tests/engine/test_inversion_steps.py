"""`inversion_steps`: a finer DDIM inversion than the edit (the reference inverts with more steps)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from engine import protocol
from tests.engine.conftest import cli_events, run_cli, run_in_process
from tests.engine.test_method import outputs


def job(**fields) -> protocol.Job:
    return protocol.Job(frames=["a.png"], output="out", prompt="a red car", **fields)


@pytest.mark.parametrize(
    ("steps", "inversion_steps"), [(25, 50), (10, 50), (2, 4), (7, 500), (25, 0), (25, 25)]
)
def test_pairs_whose_timesteps_nest_are_accepted(steps, inversion_steps):
    job(steps=steps, inversion_steps=inversion_steps).validate()


@pytest.mark.parametrize(
    ("steps", "inversion_steps", "valid"),
    [(25, 75, "50 or 100"), (3, 6, "9"), (30, 60, "90"), (50, 25, "100"), (2, 3, "4")],
)
def test_pairs_that_miss_edit_timesteps_are_refused_naming_both(steps, inversion_steps, valid):
    # (3, 6) and (30, 60): a whole multiple is not enough with leading spacing (333 is not a multiple of 166)
    with pytest.raises(protocol.JobError) as err:
        job(steps=steps, inversion_steps=inversion_steps).validate()
    message = str(err.value)
    assert f"'inversion_steps' {inversion_steps}" in message and f"edit's {steps} 'steps'" in message
    assert f"Choose {valid} inversion steps, or 0" in message
    for value in (-1, 1001, 2.5, True):
        with pytest.raises(protocol.JobError, match="inversion_steps"):
            job(inversion_steps=value).validate()


def test_the_stdlib_schedule_is_diffusers_leading_schedule():
    scheduler = DDIMScheduler(steps_offset=1)  # SD 1.x / 2.x: leading spacing, 1000 training steps
    for steps in (1, 2, 3, 6, 7, 9, 25, 50, 60, 75, 333, 500, 999):
        scheduler.set_timesteps(steps)
        assert {int(t) - 1 for t in scheduler.timesteps} == protocol.leading_timesteps(steps)


def test_keep_returns_the_full_inversion_at_those_timesteps(model, city16):
    from engine.images.frames import read_shot, to_working
    from engine.method.editing import EditSettings, edit_timesteps
    from engine.method.inversion import encode, invert
    from engine.run.runner import _to_tensor

    shot = read_shot(city16[:2])
    clean = encode(model, _to_tensor([to_working(f.load(), (64, 64)) for f in shot.frames]))
    empty = model.encode_prompt("")
    every, full = invert(model, clean, empty, 4)
    wanted = sorted(edit_timesteps(model, EditSettings(steps=2)))
    kept, latents = invert(model, clean, empty, 4, keep=wanted)
    assert kept == wanted and len(every) == 4
    assert torch.equal(latents, full[[every.index(t) for t in wanted]])


def test_finer_inversion_runs_is_cached_apart_and_hit_again(model, city16, tmp_path):
    common = dict(frames=[str(f) for f in city16[:4]], prompt="a red car", cache_dir=str(tmp_path / "cache"))
    runs = {}
    for name, fields in (
        ("fine", {"steps": 2, "inversion_steps": 4}),
        ("coarse", {"steps": 2}),
        ("again", {"steps": 2, "inversion_steps": 4}),
        ("full", {"steps": 4}),
        ("full-again", {"steps": 4, "inversion_steps": 4}),  # the same as 0: the same entries
    ):
        code, events = run_in_process(model, output=str(tmp_path / name), **common, **fields)
        assert code == 0, events.getvalue()
        (done,) = events.events("done")
        runs[name] = (done["stats"], events)
    fine, events = runs["fine"]
    assert fine["inversion_unet_frames"] == 4 * 4  # frames x inversion steps
    assert (fine["cache_misses"], fine["keyframe_unet_frames"]) == (4, 2 * 2)  # 2 keyframes, 2 edit steps
    planned = [e["total"] for e in events.events("progress") if e["stage"] == "inversion"]
    assert planned and set(planned) == {16}
    coarse, _ = runs["coarse"]
    assert (coarse["cache_misses"], coarse["inversion_unet_frames"]) == (4, 4 * 2)  # not the fine entries
    images = {name: outputs(events) for name, (_, events) in runs.items()}
    assert any(not np.array_equal(a, b) for a, b in zip(images["fine"], images["coarse"], strict=True))
    again, _ = runs["again"]
    assert (again["cache_hits"], again["inversion_unet_frames"]) == (4, 0)
    assert all(np.array_equal(a, b) for a, b in zip(images["fine"], images["again"], strict=True))
    full, _ = runs["full"]
    assert full["cache_misses"] == 4  # a 4-step edit keeps other timesteps than the fine 2-step entries
    assert runs["full-again"][0]["cache_hits"] == 4


def test_the_model_schedule_is_checked_before_inverting(model, city16, tmp_path):
    # 2 in 39 nest with leading spacing (the job's check) but not with trailing: the engine refuses.
    trailing = dataclasses.replace(
        model, scheduler_config={**model.scheduler_config, "timestep_spacing": "trailing"}
    )
    code, events = run_in_process(
        trailing,
        frames=[str(city16[0])],
        output=str(tmp_path / "out"),
        prompt="a red car",
        steps=2,
        inversion_steps=39,
        cache_dir=str(tmp_path / "cache"),
    )
    assert code == protocol.EXIT_BAD_INPUT
    (error,) = events.events("error")
    assert error["kind"] == "bad_input"
    assert "inversion_steps 39" in error["message"] and "edit's 2 steps" in error["message"]
    assert "'trailing'" in error["message"]
    assert not [e for e in events.events("progress") if e["stage"] == "inversion"]
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_uncovered_pair_before_loading(city16, tmp_path):
    args = ["--frames", str(city16[0].parent), "--prompt", "x", "--out", str(tmp_path / "o")]
    result = run_cli(
        "edit", *args, "--steps", "25", "--inversion-steps", "75", "--model", str(tmp_path / "none")
    )
    assert result.returncode == protocol.EXIT_BAD_INPUT
    (event,) = cli_events(result.stdout)
    assert "'inversion_steps' 75" in event["message"] and "Choose 50 or 100" in event["message"]
