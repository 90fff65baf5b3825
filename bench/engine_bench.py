"""Engine benchmark (run by hand, not in CI): speed and memory ratios measured side by side.

In one run, on the same real frames, model and steps:
  - TokenFlow edit against per-frame PnP (both from a cached inversion: sampling only);
  - keyframe preview against the full edit;
  - a re-edit with a cached inversion against a first edit;
  - peak memory of an edit at 16 against 64 frames (each in a fresh subprocess);
  - with `--source-copy`: per-frame PnP and TokenFlow's defaults against themselves with the source
    copy in every step (as before the steps that do not read it left it out).
Besides wall time it counts UNet frame evaluations, which do not depend on machine noise; the
compared runs alternate `--repeat` times and the fastest of each counts (noise only adds time).

    .venvs/engine/bin/python bench/engine_bench.py                   # mid-size SD-layout UNet
    .venvs/engine/bin/python bench/engine_bench.py --model-size sd15 # SD 1.5's full configuration
    .venvs/engine/bin/python bench/engine_bench.py --family sdxl --model-size tiny  # SDXL's layout
    .venvs/engine/bin/python bench/engine_bench.py --model-size sdxl-base # SDXL base's full configuration
    .venvs/engine/bin/python bench/engine_bench.py --model PATH      # any local model (SDXL too)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m engine` does (see engine/__main__.py)
sys.path.insert(0, str(ROOT))

from engine import protocol  # noqa: E402


def _vm(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS: now, VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Let VmHWM restart from the current RSS (Linux: write 5 to clear_refs)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@contextlib.contextmanager
def source_copy_in_every_step():
    """The edit as it ran before: [source, negative, prompt] in every UNet call of every step."""
    from engine.method import attention
    from engine.method.editing import Editor

    trimmed = Editor.copies
    Editor.copies = lambda self, step, preview: attention.COPIES
    try:
        yield
    finally:
        Editor.copies = trimmed


def run_job(loaded, **fields) -> tuple[float, dict]:
    from engine.run.events import CancelToken, Emitter
    from engine.run.execute import execute

    job = protocol.Job(**fields)
    job.validate()
    stream = io.StringIO()
    start = time.perf_counter()
    code = execute(job, Emitter(stream), CancelToken(), model=loaded)
    seconds = time.perf_counter() - start
    events = [protocol.parse_event(line) for line in stream.getvalue().splitlines()]
    if code != 0:
        raise SystemExit(f"job failed: {events[-1]}")
    return seconds, events[-1]


def unet_parameters(model: str) -> int:
    """The UNet's parameter count from its config alone (no weights read: the model may be 10 GB)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(model, subfolder="unet"))
    return sum(p.numel() for p in unet.parameters())


def save_sdxl_base(folder: Path) -> Path:
    """SDXL base 1.0's configuration with random weights (gpu_bench's), written as a diffusers folder."""
    from bench.gpu_bench import random_sdxl
    from engine.model import devices

    model = random_sdxl(devices.choose("cpu"), folder.parent)
    model.pipeline.save_pretrained(folder)
    del model
    return folder


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: load, then measure the peak memory one edit adds over the loaded model.

    The inversion cache is filled by another process first (`--memory-warm`): memory a run in this
    process had freed would stay resident (the allocator keeps it) and hide the edit's own peak."""
    import torch

    from engine.images.frames import read_shot, working_size
    from engine.model import devices, loading

    model = loading.load(args.model, devices.choose(args.device))
    frames = sorted(str(p) for p in Path(args.frames_dir).glob("*.png"))[: args.frames]
    w, h = working_size(*read_shot(frames[:1]).size, args.size)  # what the latents are made at
    work = Path(args.work)
    cache = str(work / f"cache-{args.frames}")
    out = work / f"out-{args.frames}"
    common = dict(
        frames=frames,
        prompt="a watercolor painting",
        model=args.model,
        steps=args.steps,
        size=args.size,
        cache_dir=cache,
        keyframe_stride=args.stride,
        chunk_size=args.chunk,
    )
    if args.memory_warm:
        run_job(model, output=str(out) + "-warm", **common)  # fills the inversion cache
        return
    with torch.no_grad():  # weights are memory-mapped: page them in, so that the base holds them
        for network in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
            for tensor in [*network.parameters(), *network.buffers()] if network is not None else []:
                tensor.sum()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _reset_peak()
    base = _vm("VmRSS")
    seconds, done = run_job(model, output=str(out), **common)
    result = {
        "frames": len(frames),
        "peak_rss_added_mb": round((_vm("VmHWM") - base) / 2**20, 1),
        "loaded_rss_mb": round(base / 2**20, 1),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available()
        else None,
        "latents_mb": round(len(frames) * 4 * 4 * (w // 8) * (h // 8) * (args.steps + 1) / 2**20, 1),
        "seconds": round(seconds, 2),
        "keyframes": len(done["keyframes"]),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="", help="a local model folder (default: build one)")
    parser.add_argument(
        "--model-size",
        default="mid",
        choices=("tiny", "mid", "sd15", "sdxl-base"),
        help="the built model (sdxl-base: SDXL base 1.0's configuration, about 14 GB in fp32)",
    )
    parser.add_argument(
        "--family", default="sd1", choices=("sd1", "sdxl"), help="the built model's layout (sdxl: tiny only)"
    )
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--memory-frames", default="16,64")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--match",
        nargs="*",
        default=["level", "reuse", "dims", "level-reuse"],
        choices=["level", "reuse", "dims", "level-reuse"],
        help="propagation speed options to time against exact TokenFlow (method/matching.MatchOptions)",
    )
    parser.add_argument(
        "--only-edits",
        action="store_true",
        help="time the edits only (TokenFlow, per-frame, --match options): no re-edit, preview, memory",
    )
    parser.add_argument(
        "--source-copy",
        action="store_true",
        help="also time per-frame and TokenFlow's defaults with the source copy in every step",
    )
    parser.add_argument("--match-dims", type=int, default=32, help="the projected search's dimensions")
    parser.add_argument("--match-reuse", type=float, default=0.2, help="share of last steps reusing fields")
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs of tokenflow, per-frame, preview, interleaved"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine"))
    parser.add_argument(
        "--only-memory",
        action="store_true",
        help="only the peak-memory runs (this process never loads the model: one copy in memory at a time)",
    )
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-warm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child:
        memory_child(args)
        return

    from engine.cli import _setup_logging
    from engine.model import devices, loading
    from engine.model.tiny_model import make_tiny_model
    from tests.clips import extract_frames

    _setup_logging()
    scratch = tempfile.TemporaryDirectory(prefix="tokenflow-bench-")
    work = Path(scratch.name)
    if not args.model and args.model_size == "sdxl-base":
        args.model = str(save_sdxl_base(work / "model-sdxl-base"))
    elif not args.model:
        args.model = str(
            make_tiny_model(work / f"model-{args.model_size}", size=args.model_size, family=args.family)
        )
    most = max([args.frames, *[int(v) for v in args.memory_frames.split(",") if v.strip()]])
    frames_dir = work / "frames"
    frames = [str(p) for p in extract_frames("cityCC0.mpg", frames_dir, most, start=0)]
    placement = devices.choose(args.device)
    model = None if args.only_memory else loading.load(args.model, placement)
    params = unet_parameters(args.model)
    shot = frames[: args.frames]
    common = dict(
        frames=shot,
        model=args.model,
        steps=args.steps,
        size=args.size,
        keyframe_stride=args.stride,
        chunk_size=args.chunk,
    )

    print(
        f"model {args.model_size if 'model-' in args.model else args.model}: UNet {params / 1e6:.1f} M "
        f"parameters; {len(shot)} frames of cityCC0.mpg at long side {args.size}; {args.steps} steps",
        flush=True,
    )
    cache = str(work / "cache")
    runs: dict[str, dict] = {}

    def measure(name: str, **fields) -> None:
        """One run; a repeated name keeps every time and reports the fastest (noise only adds)."""
        attempt = len(runs.get(name, {}).get("all_seconds", []))
        output = str(work / f"{name}-{attempt}")
        seconds, done = run_job(model, output=output, **{**common, "cache_dir": cache, **fields})
        stats = done["stats"]
        unet = stats["inversion_unet_frames"] + stats["keyframe_unet_frames"] + stats["propagate_unet_frames"]
        times = [*runs.get(name, {}).get("all_seconds", []), round(seconds, 2)]
        runs[name] = {"seconds": min(times), "all_seconds": times, "unet_frames": unet, "stats": stats}
        print(f"  {name:<22} {seconds:8.1f} s   UNet frame evaluations {unet}", flush=True)

    ratios: dict[str, float] = {}
    if model is not None:  # --only-memory: the edits are skipped
        measure("first_edit", prompt="a watercolor painting")
        if not args.only_edits:
            measure("re_edit", prompt="a snowy street at night")
        exact = {"match_scope": "layer", "match_reuse": 0.0, "match_dims": 0}  # the reference's search
        options = {
            "level": {**exact, "match_scope": "level"},
            "reuse": {**exact, "match_reuse": args.match_reuse},
            "dims": {**exact, "match_dims": args.match_dims},
            "level-reuse": {**exact, "match_scope": "level", "match_reuse": args.match_reuse},  # the defaults
        }
        for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits both
            measure("tokenflow", prompt="a neon cyberpunk city", **exact)
            measure("per_frame", prompt="a neon cyberpunk city", method="per-frame")
            if not args.only_edits:
                measure("preview", prompt="a neon cyberpunk city", stage="preview")
            for name in args.match:
                measure(f"tokenflow_{name}", prompt="a neon cyberpunk city", **options[name])
            if args.source_copy:
                with source_copy_in_every_step():
                    measure("per_frame_all_copies", prompt="a neon cyberpunk city", method="per-frame")
                    measure("tokenflow_defaults_all_copies", prompt="a neon cyberpunk city")
                measure("tokenflow_defaults", prompt="a neon cyberpunk city")
        # per-frame counts only the edit copies' frames; both read their inversion from the cache
        ratios["tokenflow_over_per_frame_time"] = runs["tokenflow"]["seconds"] / runs["per_frame"]["seconds"]
        if not args.only_edits:
            ratios.update(
                preview_over_full_time=runs["preview"]["seconds"] / runs["tokenflow"]["seconds"],
                preview_over_full_unet=runs["preview"]["unet_frames"] / runs["tokenflow"]["unet_frames"],
                re_edit_over_first_time=runs["re_edit"]["seconds"] / runs["first_edit"]["seconds"],
                re_edit_inversion_unet_frames=runs["re_edit"]["stats"]["inversion_unet_frames"],
            )
        for name in args.match:
            ratios[f"tokenflow_{name}_over_per_frame_time"] = (
                runs[f"tokenflow_{name}"]["seconds"] / runs["per_frame"]["seconds"]
            )
            searches = runs[f"tokenflow_{name}"]["stats"]["match_searches"]
            exact = runs["tokenflow"]["stats"]["match_searches"]
            ratios[f"tokenflow_{name}_searches_over_exact"] = searches / exact

        if args.source_copy:
            for name in ("per_frame", "tokenflow_defaults"):
                ratios[f"{name}_over_all_copies_time"] = (
                    runs[name]["seconds"] / runs[f"{name}_all_copies"]["seconds"]
                )

    memory = []
    sizes = [] if args.only_edits else [int(v) for v in args.memory_frames.split(",") if v.strip()]
    for n in sizes:  # "" skips memory runs
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            "--model",
            args.model,
            "--frames",
            str(n),
            "--frames-dir",
            str(frames_dir),
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            "--stride",
            str(args.stride),
            "--chunk",
            str(args.chunk),
            "--device",
            args.device,
            "--work",
            str(work),
        ]
        subprocess.run([*cmd, "--memory-warm"], capture_output=True, text=True, check=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        memory.append(json.loads(out))
        print(
            f"  memory {n:>3} frames: +{memory[-1]['peak_rss_added_mb']} MB peak RSS "
            f"({memory[-1]['seconds']} s)",
            flush=True,
        )
    if len(memory) >= 2:
        ratios["memory_ratio_last_over_first"] = (
            memory[-1]["peak_rss_added_mb"] / memory[0]["peak_rss_added_mb"]
        )
        ratios["frames_ratio_last_over_first"] = memory[-1]["frames"] / memory[0]["frames"]

    print("ratios:")
    for key, value in ratios.items():
        print(f"  {key:<34} {value:.3f}" if isinstance(value, float) else f"  {key:<34} {value}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model_size if not args.model or "model-" in args.model else args.model,
        "unet_parameters": params,
        "frames": len(shot),
        "size": args.size,
        "steps": args.steps,
        "stride": args.stride,
        "chunk": args.chunk,
        "device": str(placement.device),
        "runs": runs,
        "memory": memory,
        "ratios": ratios,
    }
    (out_dir / "engine_bench.json").write_text(json.dumps(report, indent=2))
    _chart(report, out_dir / "engine_bench.png")
    print(f"wrote {out_dir / 'engine_bench.json'}")


def _chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(report["runs"])
    left.bar(names, [report["runs"][n]["seconds"] for n in names], color="#4c78a8")
    left.set_ylabel("seconds")
    left.set_title(f"{report['frames']} frames, {report['steps']} steps")
    left.tick_params(axis="x", rotation=30)
    mem = report["memory"]
    right.plot(
        [m["frames"] for m in mem], [m["peak_rss_added_mb"] for m in mem], "o-", label="edit peak (RSS)"
    )
    right.plot([m["frames"] for m in mem], [m["latents_mb"] for m in mem], "s--", label="latents of the shot")
    right.set_xlabel("frames")
    right.set_ylabel("MB")
    right.set_title("memory an edit adds")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
