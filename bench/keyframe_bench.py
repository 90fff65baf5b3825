"""Keyframe-pass benchmark (run by hand): peak memory and time at 16, 64 and 256 frames.

The keyframe pass is the part of TokenFlow that grows with the shot: K = N / stride keyframes
attend to each other. `full` runs all K in one UNet call (the method as published, as the
reference does); `bounded` is the engine's default (groups of `--keyframe-batch` with neighbours
and global anchors). Each point runs one denoising step's keyframe pass in a fresh subprocess on
random latents (the pass's cost does not depend on their values) and reports wall time and the
peak memory the pass added, split into the features it keeps for propagation (linear in K by
necessity; on the CPU in bounded mode) and its working memory (what a GPU must hold at once).
Prints the ratios; writes JSON and a PNG chart.

    .venvs/engine/bin/python bench/keyframe_bench.py [--model-size mid] [--frames 16,64,256]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m engine` does


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> None:
    import torch

    from engine.method import keyframes
    from engine.method.editing import Editor, EditSettings, Prompts
    from engine.model import devices, loading

    model = loading.load(args.model, devices.choose(args.device))
    w, h = args.width // model.vae_factor, args.height // model.vae_factor
    n = args.frames
    batch = args.keyframe_batch if args.mode == "bounded" else 10**6
    settings = EditSettings(steps=10, keyframe_stride=args.stride, keyframe_batch=batch, chunk_size=8)
    torch.manual_seed(0)
    latents = torch.randn(n, 4, h, w)
    empty = model.encode_prompt("")
    editor = Editor(
        model, settings, lambda t: latents, Prompts(empty, empty, model.encode_prompt("a painting"))
    )
    keys = keyframes.fixed(n, args.stride)
    from engine.method import attention

    installed = attention.install(model.unet, editor.state)
    editor.state.begin_step(0, inject_qk=True, inject_conv=True, n_keyframes=len(keys))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    base = _vm("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        editor._keyframe_pass(latents, latents, editor.timesteps[0], keys, lambda: None)
    seconds = time.perf_counter() - start
    # What the pass keeps for propagation grows with K by necessity (every frame reads it); in
    # bounded mode it lives on the CPU, so the device holds only one group's working memory.
    kept = sum(
        t.numel() * t.element_size()
        for store in (editor.state.keyframe_tokens, editor.state.keyframe_outputs)
        for t in store.values()
    )
    attention.uninstall(model.unet, installed)
    peak_added = _vm("VmHWM") - base
    passes = keyframes.passes(len(keys), batch, settings.keyframe_anchors)
    print(
        json.dumps(
            {
                "frames": n,
                "mode": args.mode,
                "keyframes": len(keys),
                "seconds": round(seconds, 2),
                "peak_added_mb": round(peak_added / 2**20, 1),
                "kept_features_mb": round(kept / 2**20, 1),
                "working_mb": round((peak_added - kept) / 2**20, 1),
                "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if torch.cuda.is_available()
                else None,
                "largest_call_frames": 3 * max(len(p.members) for p in passes),
                "calls": len(passes),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="")
    parser.add_argument("--model-size", default="mid", choices=("tiny", "mid", "sd15"))
    parser.add_argument("--frames", default="16,64,256")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--keyframe-batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "keyframes"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="bounded", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        args.frames = int(args.frames)
        child(args)
        return
    from engine.model.tiny_model import make_tiny_model

    scratch = tempfile.TemporaryDirectory(prefix="tokenflow-kbench-")
    if not args.model:
        args.model = str(make_tiny_model(Path(scratch.name) / args.model_size, size=args.model_size))
    results = []
    for n in map(int, args.frames.split(",")):
        for mode in ("full", "bounded"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--model",
                args.model,
                "--frames",
                str(n),
                "--mode",
                mode,
                "--width",
                str(args.width),
                "--height",
                str(args.height),
                "--stride",
                str(args.stride),
                "--keyframe-batch",
                str(args.keyframe_batch),
                "--device",
                args.device,
            ]
            try:
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                if run.returncode:
                    tail = (run.stderr.strip().splitlines() or ["?"])[-1]
                    result = {"frames": n, "mode": mode, "failed": tail}
                else:
                    result = json.loads(run.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                result = {"frames": n, "mode": mode, "failed": f"timeout after {args.timeout} s"}
            results.append(result)
            print(json.dumps(result), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model_size,
        "width": args.width,
        "height": args.height,
        "stride": args.stride,
        "keyframe_batch": args.keyframe_batch,
        "results": results,
    }
    report["ratios"] = _ratios(results)
    for line in report["ratios"]["lines"]:
        print(line)
    (out / "keyframe_bench.json").write_text(json.dumps(report, indent=2))
    _chart(report, out / "keyframe_bench.png")
    print(f"wrote {out / 'keyframe_bench.json'}")


def _ratios(results: list[dict]) -> dict:
    """bounded / full at each shot length, and how each mode grows from the shortest to the longest."""
    ok = {(r["frames"], r["mode"]): r for r in results if "failed" not in r}
    sizes = sorted({n for n, _ in ok})
    out: dict = {"bounded_over_full": {}, "growth": {}, "lines": []}
    for n in sizes:
        if (n, "full") in ok and (n, "bounded") in ok:
            f, b = ok[n, "full"], ok[n, "bounded"]
            row = {key: b[key] / f[key] for key in ("working_mb", "peak_added_mb", "seconds") if f[key] > 0}
            out["bounded_over_full"][n] = row
            out["lines"].append(
                f"{n:>4} frames: bounded / full  working memory {row.get('working_mb', 0):.2f}x, "
                f"peak {row.get('peak_added_mb', 0):.2f}x, time {row.get('seconds', 0):.2f}x"
            )
    for mode in ("full", "bounded"):
        rows = [ok[n, mode] for n in sizes if (n, mode) in ok]
        if len(rows) >= 2 and rows[0]["working_mb"] > 0 and rows[0]["seconds"] > 0:
            first, last = rows[0], rows[-1]
            growth = {
                "frames": last["frames"] / first["frames"],
                "working_mb": last["working_mb"] / first["working_mb"],
                "seconds": last["seconds"] / first["seconds"],
            }
            out["growth"][mode] = growth
            out["lines"].append(
                f"{mode:>7} {first['frames']} -> {last['frames']} frames ({growth['frames']:.0f}x): "
                f"working memory {growth['working_mb']:.2f}x, time {growth['seconds']:.2f}x"
            )
    return out


def _chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, secs) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style in (("full", "o-"), ("bounded", "s-")):
        rows = [r for r in report["results"] if r["mode"] == mode and "failed" not in r]
        frames = [r["frames"] for r in rows]
        line = mem.plot(frames, [r["working_mb"] for r in rows], style, label=f"{mode}: working")
        mem.plot(
            [r["frames"] for r in rows],
            [r["peak_added_mb"] for r in rows],
            style.replace("-", ":"),
            color=line[0].get_color(),
            alpha=0.6,
            label=f"{mode}: with kept features",
        )
        secs.plot([r["frames"] for r in rows], [r["seconds"] for r in rows], style, label=mode)
    for ax, label in ((mem, "peak memory of the pass (MB)"), (secs, "seconds")):
        ax.set_xlabel("frames in the shot")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.legend()
    mem.set_title(f"keyframe pass, {report['model']} UNet, {report['width']}x{report['height']}")
    secs.set_title(f"stride {report['stride']}, bounded groups of {report['keyframe_batch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
