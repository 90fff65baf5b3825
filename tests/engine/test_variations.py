"""Preview variations: several previews in one run that share the model, the inversion and the prompts'
encodings, each written like a preview of its own, and a propagated variation that keeps its keyframes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import protocol
from engine.protocol import MANIFEST
from engine.run.events import CancelToken, Emitter
from tests.engine.conftest import Recorder, run_in_process
from tests.engine.test_method import read


def _job(**fields) -> protocol.Job:
    return protocol.Job(frames=["a.png", "b.png"], output="/tmp/out", prompt="a red car", **fields)


def test_variations_are_validated() -> None:
    _job(stage="preview", variations=[{"prompt": "snow"}, {"prompt": "rain"}]).validate()
    _job(stage="preview", keyframe_mode="resample", variations=[{"seed": 1}, {"seed": 2}]).validate()
    with pytest.raises(protocol.JobError, match="stage.*preview"):
        _job(stage="propagate", variations=[{"prompt": "snow"}]).validate()
    with pytest.raises(protocol.JobError, match="seed changes nothing"):
        _job(stage="preview", variations=[{"seed": 1}, {"seed": 2}]).validate()
    with pytest.raises(protocol.JobError, match="variations 1 and 2 would give the same frames"):
        _job(stage="preview", variations=[{"prompt": "snow"}, {"prompt": " snow "}]).validate()
    with pytest.raises(protocol.JobError, match="must set 'seed' and/or 'prompt'"):
        _job(stage="preview", variations=[{"guidance": 3}]).validate()
    with pytest.raises(protocol.JobError, match="empty prompt"):
        _job(stage="preview", variations=[{"prompt": "  "}]).validate()
    with pytest.raises(protocol.JobError, match="seed"):
        _job(stage="preview", keyframe_mode="resample", variations=[{"seed": -1}]).validate()
    with pytest.raises(protocol.JobError, match="list of objects"):
        _job(stage="preview", variations=["snow"]).validate()
    with pytest.raises(protocol.JobError, match="at most"):
        _job(stage="preview", variations=[{"prompt": f"p{i}"} for i in range(17)]).validate()
    # A job file round-trips with its variations.
    job = _job(stage="preview", variations=[{"prompt": "snow", "seed": 3}])
    assert protocol.Job.from_json(job.to_json()).variations == [{"prompt": "snow", "seed": 3}]
    assert protocol.variation_output("/r/shot-preview/", 0) == "/r/shot-preview-v1"
    assert protocol.variation_output("/r/shot-preview", 2) == "/r/shot-preview-v3"


def _count_encodings(model, monkeypatch) -> list[str]:
    seen: list[str] = []
    original = model.encode_prompt

    def counting(text: str, negative: bool = False):
        seen.append(text)
        return original(text, negative)

    monkeypatch.setattr(model, "encode_prompt", counting)
    return seen


def test_two_prompt_variations_share_one_inversion_and_propagate_to_the_same_keyframes(
    model, city16, tmp_path, monkeypatch
) -> None:
    common = dict(
        frames=[str(f) for f in city16[:10]],
        prompt="a red car",
        source_prompt="a street",
        keyframe_mode="fixed",
        keyframe_stride=4,
        cache_dir=str(tmp_path / "cache"),
    )
    encoded = _count_encodings(model, monkeypatch)
    variations = [{"prompt": "a snowy street at night"}, {"prompt": "a watercolor painting"}]
    code, events = run_in_process(
        model, output=str(tmp_path / "try"), stage="preview", variations=variations, **common
    )
    assert code == 0, events.getvalue()
    # Source, negative and each distinct prompt encoded once (the job's own prompt is not used).
    assert sorted(encoded) == sorted(
        ["a street", protocol.DEFAULT_NEGATIVE, *(v["prompt"] for v in variations)]
    )
    previews = events.events("preview")
    (done,) = events.events("done")
    assert len(previews) == 2 and len(done["variations"]) == 2
    keys = [0, 3, 6, 9]
    # One inversion of the 4 keyframes for 3 steps, shared; each variation denoises its own keyframes.
    assert done["stats"]["inversion_unet_frames"] == 4 * 3
    assert [v["stats"]["keyframe_unet_frames"] for v in done["variations"]] == [12, 12]
    assert [v["stats"]["inversion_unet_frames"] for v in done["variations"]] == [12, 0]
    for i, (v, p) in enumerate(zip(done["variations"], previews, strict=True)):
        assert v["output"] == protocol.variation_output(str(tmp_path / "try"), i)
        assert p["files"] == v["files"] and v["keyframes"] == keys and v["prompt"] == variations[i]["prompt"]
        manifest = json.loads((Path(v["output"]) / MANIFEST).read_text())
        assert manifest["job"]["prompt"] == variations[i]["prompt"]
        assert manifest["job"]["variations"] == [] and manifest["job"]["output"] == v["output"]
        assert manifest["job"]["extra"]["variation"] == {"index": i, "of": 2, "run": str(tmp_path / "try")}
        assert manifest["stats"]["unet_seconds"] > 0 and manifest["seconds"] > 0
    assert not (tmp_path / "try").exists()
    first, second = ([read(f) for f in v["files"]] for v in done["variations"])
    assert any(np.abs(a - b).max() > 0 for a, b in zip(first, second, strict=True)), (
        "the prompts had no effect"
    )

    # The first variation alone, as an ordinary preview, gives the same frames (sharing changes nothing).
    code, alone = run_in_process(
        model,
        output=str(tmp_path / "alone"),
        stage="preview",
        **{**common, "prompt": variations[0]["prompt"]},
    )
    assert code == 0, alone.getvalue()
    (single,) = alone.events("done")
    assert single["stats"]["inversion_unet_frames"] == 0  # the cache the variations filled
    for a, b in zip(first, (read(f) for f in single["files"]), strict=True):
        assert np.abs(a - b).max() <= 1

    # Propagating the chosen variation's recorded job reproduces its keyframes (fixed mode: 2/255).
    recorded = json.loads((Path(done["variations"][0]["output"]) / MANIFEST).read_text())["job"]
    recorded.update(stage="propagate", output=str(tmp_path / "shot"), extra={})
    code, full = run_in_process(model, **{k: v for k, v in recorded.items() if k not in ("version", "model")})
    assert code == 0, full.getvalue()
    (shot,) = full.events("done")
    assert shot["keyframes"] == keys and len(shot["files"]) == 10
    for index, image in zip(keys, first, strict=True):
        diff = np.abs(image - read(shot["files"][index])).max()
        assert diff <= 2, f"keyframe {index} differs by {diff}/255 between the variation and the shot"


def test_seed_variations_in_resample_mode_differ(model, city16, tmp_path) -> None:
    code, events = run_in_process(
        model,
        frames=[str(f) for f in city16[:8]],
        output=str(tmp_path / "seeds"),
        prompt="a red car",
        stage="preview",
        keyframe_mode="resample",
        keyframe_stride=4,
        cache_dir=str(tmp_path / "cache"),
        variations=[{"seed": 3}, {"seed": 11}],
    )
    assert code == 0, events.getvalue()
    (done,) = events.events("done")
    assert [v["seed"] for v in done["variations"]] == [3, 11]
    assert done["variations"][0]["keyframes"] != done["variations"][1]["keyframes"]
    manifests = [json.loads((Path(v["output"]) / MANIFEST).read_text()) for v in done["variations"]]
    assert [m["job"]["seed"] for m in manifests] == [3, 11]


def test_model_loads_once_and_a_cancel_leaves_nothing(model, city16, tmp_path, monkeypatch) -> None:
    import engine.run.runner
    from engine.run.execute import execute

    loads = []
    monkeypatch.setattr(engine.run.runner, "load", lambda *a, **k: loads.append(a) or model)
    job = protocol.Job(
        frames=[str(f) for f in city16[:6]],
        output=str(tmp_path / "v"),
        prompt="x",
        stage="preview",
        steps=2,
        size=64,
        keyframe_stride=4,
        cache_dir=str(tmp_path / "cache"),
        variations=[{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}],
    )
    stream = Recorder()
    assert execute(job, Emitter(stream), CancelToken()) == 0, stream.getvalue()
    assert len(loads) == 1
    assert len(stream.events("preview")) == 3

    # Cancel once the second variation has been written: the run removes all it wrote.
    cancel = CancelToken()

    class CancelAfterTwo(Recorder):
        def write(self, text: str) -> int:
            if text.count('"event": "preview"') and self.getvalue().count('"event": "preview"') == 1:
                cancel.cancel()
            return super().write(text)

    stream = CancelAfterTwo()
    job.output = str(tmp_path / "w")
    assert execute(job, Emitter(stream), cancel) == protocol.EXIT_CANCELLED
    assert len(stream.events("preview")) == 2 and stream.events("cancelled")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "v-v1", "v-v2", "v-v3"]


def test_edit_command_writes_a_variations_job(city16, tmp_path) -> None:
    from tests.engine.conftest import run_cli

    job_file = tmp_path / "job.json"
    args = ["edit", "--frames", str(city16[0].parent), "--prompt", "x", "--out", str(tmp_path / "o")]
    vary = [
        "--stage",
        "preview",
        "--vary-prompt",
        "snow",
        "--vary-prompt",
        "rain",
        "--write-job",
        str(job_file),
    ]
    done = run_cli(*args, *vary)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(job_file.read_text())["variations"] == [{"prompt": "snow"}, {"prompt": "rain"}]
    refused = run_cli(*args, "--vary-seed", "1", "--vary-seed", "2", "--write-job", str(job_file))
    assert refused.returncode == protocol.EXIT_BAD_INPUT and "stage" in refused.stdout
