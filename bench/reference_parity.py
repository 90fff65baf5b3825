"""Parity with the paper's own code: the reference implementation and the engine side by side.

Runs the reference (omerbt/TokenFlow, commit 5dd6a69, MIT) from a checkout you give, in its own
environment (`bash scripts/setup_env.sh reference`: torch 2.13 CPU, diffusers 0.20.2, transformers
4.36.2), on a scratch copy with the small patches of bench/parity/patches.py (CPU, fp32, the local
model, keyframes read from the file the engine's draws are written to); then the engine on the same
model, frames and settings through its command line (`python -m engine run`). Compares:

- the VAE latents and the inverted latents at every timestep (largest relative error, per frame);
- the edited frames at 8 bits (PSNR and largest difference per frame);
- each stage's wall time, CPU time (and so the cores used) and peak memory, one process per stage.

Writes JSON into bench/results/parity/ and a contact sheet (reference, engine, difference x16); the
last line printed is `parity: min PSNR <x> dB, max latent rel err <y>, frames <n>`; the exit code is
1 when a side could not run. `--engine-settings` picks what the engine runs (default `reference`, the
setting that reproduces the reference; `defaults`, the engine's own defaults; the others change one
thing at a time, for docs/quality.md's table). `--fixture FILE` also stores the reference's edited
latents for tests/engine/test_reference_parity.py.

    git clone https://github.com/omerbt/TokenFlow /tmp/TokenFlow   # or a fetch of it
    bash scripts/setup_env.sh reference
    .venvs/engine/bin/python bench/reference_parity.py --reference /tmp/TokenFlow --stride 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.parity import patches, standin  # noqa: E402

TINY_SEED = 11  # the default model: a tiny random SD-layout model the tests' fixtures (seed 0) never see
EXACT = {"match_scope": "layer", "match_reuse": 0.0, "match_dims": 0}
# What the engine runs against the reference; `reference` reproduces it, the others differ in one
# deliberate way each (docs/quality.md, "Parity with the reference code").
ENGINE_SETTINGS: dict[str, dict[str, Any]] = {
    "reference": {"keyframe_mode": "resample", "propagation": "reference"},
    "paper": {"keyframe_mode": "resample", "propagation": "paper", **EXACT},
    "paper-level": {"keyframe_mode": "resample", "propagation": "paper", **EXACT, "match_scope": "level"},
    "paper-reuse": {"keyframe_mode": "resample", "propagation": "paper", **EXACT, "match_reuse": 0.2},
    "paper-fixed": {"keyframe_mode": "fixed", "propagation": "paper", **EXACT},
    "defaults": {},
    # the reference's setting but the engine's inversion count (--steps) against the reference's
    # --inversion-steps: what inverting as finely as the reference does changes
    "reference-equal-inversion": {
        "keyframe_mode": "resample",
        "propagation": "reference",
        "inversion_steps": 0,
    },
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="a checkout of omerbt/TokenFlow (commit 5dd6a69)")
    p.add_argument("--reference-python", default=str(ROOT / ".venvs" / "reference" / "bin" / "python"))
    p.add_argument("--model", default="", help="a diffusers folder (default: a tiny random model, seed 11)")
    p.add_argument(
        "--frames", default="", help="a folder of PNG frames at the working size (default: --clip)"
    )
    p.add_argument("--clip", default="bikes.mp4", help="a clip of tests/clips.py, its middle 4:3 resized")
    p.add_argument("--start", type=int, default=40, help="the clip's first frame")
    p.add_argument("--n-frames", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="width, the long side")
    p.add_argument("--height", type=int, default=0, help="0: 3/4 of the width")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the edit")
    p.add_argument("--inversion-steps", type=int, default=0, help="0: as --steps (the reference's own: 500)")
    p.add_argument("--stride", type=int, default=8, help="keyframe stride (the reference's batch_size)")
    p.add_argument("--prompt", default="a watercolor painting of a city at night")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--engine-settings", default="reference", choices=list(ENGINE_SETTINGS))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "parity"))
    p.add_argument(
        "--fixture", default="", help="also write the reference's edited latents here (.safetensors)"
    )
    return p


# --- inputs ------------------------------------------------------------------------------------------
def working_size(args: argparse.Namespace) -> tuple[int, int]:
    """(width, height): both multiples of 64, so the engine works at the frames' own size (no padding),
    and not square, which the reference would resize to 512x512."""
    width, height = args.size, args.height or args.size * 3 // 4
    if width % 64 or height % 64 or height >= width:
        raise SystemExit(
            f"{width}x{height}: give a width and a smaller height, both multiples of 64 (256x192)"
        )
    return width, height


def prepare_frames(args: argparse.Namespace, dest: Path) -> list[Path]:
    """PNG frames named as the reference reads them (00000.png, ...), at the working size: the
    reference resizes nothing, the engine keeps the size when it is one it can work at."""
    import cv2

    width, height = working_size(args)
    dest.mkdir(parents=True)
    if args.frames:
        given = sorted(Path(args.frames).glob("*.png"))[: args.n_frames]
        images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in given]
        if len(images) < args.n_frames or any(i is None or i.shape[:2] != (height, width) for i in images):
            raise SystemExit(f"--frames {args.frames}: give {args.n_frames} PNG frames of {width}x{height}")
    else:
        from tests.clips import clip_path

        cap = cv2.VideoCapture(str(clip_path(args.clip)))
        images, index = [], 0
        while len(images) < args.n_frames:
            ok, image = cap.read()
            if not ok:
                raise SystemExit(f"{args.clip} ended before frame {args.start + args.n_frames}")
            index += 1
            if index <= args.start:
                continue
            h, w = image.shape[:2]
            crop = image[:, (w - h * 4 // 3) // 2 :][:, : h * 4 // 3]  # the middle 4:3
            images.append(cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA))
        cap.release()
    paths = []
    for i, image in enumerate(images):
        paths.append(dest / f"{i:05d}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def prepare_model(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The model for the engine, and a copy for the reference's transformers 4.36, which silently
    re-initialises a CLIP text encoder saved without the `text_model.` prefix of its weight names."""
    from safetensors.torch import load_file, save_file

    if args.model:
        model = Path(args.model).absolute()
    else:
        from engine.model.tiny_model import make_tiny_model

        model = make_tiny_model(work / "model", size="tiny", seed=TINY_SEED)
    ref = work / "reference-model"
    ref.mkdir()
    for item in model.iterdir():
        if item.name != "text_encoder":
            (ref / item.name).symlink_to(item)
    text = ref / "text_encoder"
    text.mkdir()
    for item in (model / "text_encoder").iterdir():
        if item.suffix == ".safetensors":
            weights = load_file(str(item))
            renamed = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in weights.items()}
            save_file(renamed, str(text / item.name), metadata={"format": "pt"})  # 4.36 reads the format
        else:
            shutil.copy(item, text / item.name)
    return model, ref


def latent_scale(model: Path) -> float:
    return float(json.loads((model / "vae" / "config.json").read_text()).get("scaling_factor", 0.18215))


# --- running a side, one process per stage -----------------------------------------------------------
def measured(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict[str, Any]:
    """Run one stage as its own process: wall time, CPU time (user + system), peak resident memory."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "ok": proc.returncode == 0,
        "exit_code": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cores": round(cpu / wall, 2) if wall else 0.0,
        "peak_mb": round(usage.ru_maxrss / 1024, 1),
        "log": str(log),
    }


def run_reference(args: argparse.Namespace, work: Path, ref_model: Path, frames: Path, keys: Path) -> dict:
    scratch = work / "reference-code"
    applied = patches.scratch_copy(Path(args.reference), scratch)
    standin.write(scratch)
    shutil.copy(Path(__file__).parent / "parity" / "driver.py", scratch / "parity_driver.py")
    python = args.reference_python
    if not Path(python).exists():
        raise SystemExit(f"no reference environment at {python}: run `bash scripts/setup_env.sh reference`")
    env = {
        **os.environ,
        "PYTHONPATH": str(scratch),
        "PARITY_MODEL": str(ref_model),
        "PARITY_LATENT_SCALE": repr(latent_scale(ref_model)),
        "PARITY_KEYFRAMES": str(keys),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    width, height = working_size(args)
    inversion = args.inversion_steps or args.steps
    common = ["--work", str(work), "--frames", str(frames), "--n-frames", str(args.n_frames)]
    stages = {}
    stages["invert"] = measured(
        [
            python,
            "parity_driver.py",
            "preprocess",
            *common,
            "--height",
            str(height),
            "--width",
            str(width),
            "--steps",
            str(inversion),
            "--save-steps",
            str(args.steps),
            "--stride",
            str(args.stride),
            "--prompt",
            "",
        ],
        env,
        scratch,
        work / "reference-invert.log",
    )
    if stages["invert"]["ok"]:
        stages["edit"] = measured(
            [
                python,
                "parity_driver.py",
                "edit",
                *common,
                "--steps",
                str(args.steps),
                "--inversion-steps",
                str(inversion),
                "--stride",
                str(args.stride),
                "--prompt",
                args.prompt,
                "--negative",
                DEFAULT_NEGATIVE,
                "--guidance",
                str(args.guidance),
                "--seed",
                str(args.seed),
            ],
            env,
            scratch,
            work / "reference-edit.log",
        )
    for name, stage in stages.items():
        times = work / "reference" / f"{'preprocess' if name == 'invert' else 'edit'}_times.json"
        stage["parts"] = json.loads(times.read_text()) if times.is_file() else {}
    return {"stages": stages, "patches": applied}


def run_engine(args: argparse.Namespace, work: Path, model: Path, frames: list[Path]) -> dict:
    from engine import protocol

    fields = {
        "frames": [str(p) for p in frames],
        "prompt": args.prompt,
        "negative_prompt": DEFAULT_NEGATIVE,
        "source_prompt": "",
        "model": str(model),
        "device": "cpu",
        "cache_dir": str(work / "engine-cache"),
        "steps": args.steps,
        "inversion_steps": args.inversion_steps,
        "guidance": args.guidance,
        "keyframe_stride": args.stride,
        "seed": args.seed,
        "size": args.size,
        "chunk_size": args.stride,  # one UNet call per block of frames, as the reference's batches
        **ENGINE_SETTINGS[args.engine_settings],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    stages = {}
    for stage, output in (("invert", ""), ("edit", str(work / "engine-result"))):
        job = protocol.Job(**fields, output=output, stage="invert" if stage == "invert" else "propagate")
        job.validate()
        path = work / f"engine-{stage}.json"
        path.write_text(job.to_json())
        stages[stage] = measured(
            [sys.executable, "-m", "engine", "run", str(path)], env, ROOT, work / f"engine-{stage}.log"
        )
        if not stages[stage]["ok"]:
            break
    return {"stages": stages, "job": fields}


# --- comparing -----------------------------------------------------------------------------------------
def relative(a, b) -> float:
    return float((a.double() - b.double()).norm() / max(float(b.double().norm()), 1e-30))


def compare(args: argparse.Namespace, work: Path, model: Path, frames: list[Path]) -> dict[str, Any]:
    import cv2
    import numpy as np
    import torch
    from safetensors import safe_open

    from engine.images import delivery
    from engine.images import frames as engine_frames
    from engine.method.inversion import encode
    from engine.model import devices
    from engine.model.loading import load
    from engine.run.runner import _to_tensor

    out: dict[str, Any] = {}
    ref_dir = work / "reference"
    # VAE latents: the engine's own reading and encoding of the same files
    loaded = load(str(model), devices.choose("cpu"))
    shot = engine_frames.read_shot([str(p) for p in frames])
    size = engine_frames.geometry(*shot.size, args.size)
    plain = delivery.Delivery(None, None)
    images = _to_tensor([engine_frames.to_working(plain.model_input(f), size) for f in shot.frames])
    engine_vae = encode(loaded, images)
    ref_vae = torch.load(ref_dir / "vae_latents.pt", map_location="cpu", weights_only=True)
    # relative error: ||engine - reference|| / ||reference|| over all frames; also the worst single frame
    out["vae_rel_err"] = relative(engine_vae, ref_vae)
    out["vae_worst_frame_rel_err"] = max(relative(engine_vae[i], ref_vae[i]) for i in range(len(frames)))
    # inverted latents at every timestep the edit visits (the engine's cache entries, one per frame)
    entries = {entry.stem: entry for entry in (work / "engine-cache").glob("*/*.safetensors")}
    stacked = []
    for frame in shot.frames:
        with safe_open(str(entries[frame.cache_key]), framework="pt") as f:
            stacked.append(f.get_tensor("latents"))
            timesteps = f.get_tensor("timesteps").tolist()
    ours_inv = torch.stack(stacked, 1)  # (T, N, 4, h, w)
    per_t, worst = {}, {}
    for k, t in enumerate(timesteps):
        saved = sorted(ref_dir.parent.glob(f"latents/*/*/steps_*/nframes_*/latents/noisy_latents_{t}.pt"))
        ref = torch.load(saved[0], map_location="cpu", weights_only=True)
        per_t[str(t)] = relative(ours_inv[k], ref)
        worst[str(t)] = max(relative(ours_inv[k][i], ref[i]) for i in range(len(frames)))
    out["inversion_rel_err"] = per_t
    out["inversion_worst_frame_rel_err"] = worst
    out["max_latent_rel_err"] = max([out["vae_rel_err"], *per_t.values()])
    out["max_worst_frame_rel_err"] = max([out["vae_worst_frame_rel_err"], *worst.values()])
    # edited frames at 8 bits: the engine's PNGs, the reference's float frames rounded the same way
    ref_frames = torch.load(ref_dir / "edited_frames.pt", map_location="cpu", weights_only=True)
    ref8 = np.round(ref_frames.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).astype(np.int16)
    manifest = json.loads((work / "engine-result" / "tokenflow.json").read_text())
    ours = [
        cv2.cvtColor(cv2.imread(str(work / "engine-result" / name)), cv2.COLOR_BGR2RGB).astype(np.int16)
        for name in manifest["files"]
    ]
    per_frame = []
    for i, (a, b) in enumerate(zip(ours, ref8, strict=True)):
        mse = float(np.mean((a - b) ** 2))
        per_frame.append(
            {
                "frame": i,
                "psnr_db": round(10 * math.log10(255**2 / mse), 2) if mse else math.inf,
                "max_diff_255": int(np.abs(a - b).max()),
            }
        )
    out["frames"] = per_frame
    out["min_psnr_db"] = min(f["psnr_db"] for f in per_frame)
    sheet = np.concatenate(
        [
            np.concatenate(list(ref8), 1),
            np.concatenate(ours, 1),
            np.concatenate([np.abs(a - b) * 16 for a, b in zip(ours, ref8, strict=True)], 1),
        ],
        0,
    )
    cv2.imwrite(
        str(work / "contact_sheet.png"),
        cv2.cvtColor(np.clip(sheet, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR),
    )
    out["contact_sheet"] = str(work / "contact_sheet.png")
    if args.fixture:
        latents = torch.load(ref_dir / "edited_latents.pt", weights_only=True)
        write_fixture(args, Path(args.fixture), model, frames, latents)
    return out


def folder_digest(folder: Path) -> str:
    """sha256 over a model folder's weights, configs and vocabulary (relative names and bytes): where it
    lies does not count, nor tokenizer_config.json, which records whether the hub was offline."""
    import hashlib

    digest = hashlib.sha256()
    kept = {"config.json", "scheduler_config.json", "vocab.json", "merges.txt"}
    for path in sorted(p for p in folder.rglob("*") if p.suffix == ".safetensors" or p.name in kept):
        digest.update(
            str(path.relative_to(folder)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest()
        )
    return digest.hexdigest()


def frames_digest(frames: list[Path]) -> str:
    """One sha256 over the frame files' bytes: the fixture test checks it made the same frames."""
    import hashlib

    digest = hashlib.sha256()
    for path in frames:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def write_fixture(args: argparse.Namespace, path: Path, model: Path, frames: list[Path], latents) -> None:
    """The reference's edited latents and what made them, for the suite's parity test."""
    from safetensors.torch import save_file

    meta = {
        "command": " ".join(["bench/reference_parity.py", *sys.argv[1:]]),
        "n_frames": str(args.n_frames),
        "size": str(args.size),
        "steps": str(args.steps),
        "inversion_steps": str(args.inversion_steps),
        "stride": str(args.stride),
        "prompt": args.prompt,
        "guidance": repr(args.guidance),
        "seed": str(args.seed),
        "model_seed": str(TINY_SEED),
        "model_digest": folder_digest(model),
        "frames_sha256": frames_digest(frames),
        "clip": args.clip,
        "start": str(args.start),
        "reference": "omerbt/TokenFlow 5dd6a69",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.contiguous().float()}, str(path), metadata=meta)


DEFAULT_NEGATIVE = "ugly, blurry, low res, unrealistic, unaesthetic"


def table(result: dict[str, Any]) -> str:
    rows = ["stage    side       wall s   CPU s  cores  peak MB"]
    for stage in ("invert", "edit"):
        for side in ("reference", "engine"):
            s = result[side]["stages"].get(stage)
            if s:
                figures = f"{s['wall_s']:8.1f} {s['cpu_s']:7.1f} {s['cores']:6.2f} {s['peak_mb']:8.0f}"
                rows.append(f"{stage:8} {side:9} {figures}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine.method import keyframes

    inversion = args.inversion_steps or args.steps
    shape = f"s{args.stride}-n{args.n_frames}-{args.size}-t{args.steps}-i{inversion}"
    tag = f"{args.engine_settings}-{Path(args.clip).stem}-{shape}"
    out = Path(args.out)
    work = out / tag
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if args.fixture and args.model:
        raise SystemExit("--fixture is made with the default tiny model (the test rebuilds it): drop --model")
    if args.n_frames % args.stride:
        raise SystemExit(
            f"--n-frames {args.n_frames} must be a multiple of --stride (the reference trims the rest)"
        )
    frames = prepare_frames(args, work / "frames")
    model, ref_model = prepare_model(args, work)
    keys = work / "keyframes.json"  # the engine's resample draws of every step, for the reference
    keys.write_text(
        json.dumps([keyframes.resample(args.n_frames, args.stride, args.seed, s) for s in range(args.steps)])
    )
    result: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()}}
    result["reference"] = run_reference(args, work, ref_model, work / "frames", keys)
    result["engine"] = run_engine(args, work, model, frames)
    failed = [
        f"{side} {stage} (exit {s['exit_code']}, log {s['log']})"
        for side in ("reference", "engine")
        for stage, s in result[side]["stages"].items()
        if not s["ok"]
    ]
    failed += [
        f"{side} edit (not reached)"
        for side in ("reference", "engine")
        if "edit" not in result[side]["stages"]
    ]
    if not failed:
        result["parity"] = compare(args, work, model, frames)
    (work / "parity.json").write_text(json.dumps(result, indent=1))
    print(table(result))
    if failed:
        print(f"parity: a side could not run: {'; '.join(failed)}")
        return 1
    p = result["parity"]
    print("frame PSNR dB: " + " ".join(f"{f['psnr_db']:.1f}" for f in p["frames"]))
    print(f"results: {work / 'parity.json'}")
    print(f"worst single frame's latent rel err {p['max_worst_frame_rel_err']:.2e}")
    psnr, latent, count = p["min_psnr_db"], p["max_latent_rel_err"], len(p["frames"])
    print(f"parity: min PSNR {psnr:.1f} dB, max latent rel err {latent:.2e}, frames {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
