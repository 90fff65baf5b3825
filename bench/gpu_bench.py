"""GPU benchmark (run by hand on a CUDA machine): the paper's measurement, for docs/performance.md.

40 frames at 512x512, Stable Diffusion 2.1's configuration (`--config sdxl`: SDXL base's, 1024x1024),
50 DDIM steps: the inversion and the
edit timed apart, the peak GPU memory of each, TokenFlow against per-frame PnP (the same PnP edit
on each frame alone). fp16 UNet and text encoder, fp32 VAE, channels-last UNet (as the engine
runs on CUDA). Without `--model`, random weights are built on the GPU with SD 2.1-base's UNet,
VAE and text-encoder configurations (speed and memory do not depend on the weights' values).

    python bench/gpu_bench.py                     # SD 2.1's configuration, random weights
    python bench/gpu_bench.py --config sdxl       # SDXL base's configuration at 1024, random weights
    python bench/gpu_bench.py --model PATH        # a real model (diffusers folder or .safetensors)
    python bench/gpu_bench.py --compile           # also measure a torch.compile'd UNet
    python bench/gpu_bench.py --dry-run           # on the CPU: 2 frames, 64 px, 2 steps, tiny model
    python bench/gpu_bench.py --dry-run --config sdxl  # the same with a tiny SDXL-layout model

It refuses (exit code 2) when torch sees no CUDA device, unless `--dry-run`. It prints a Markdown
table and writes JSON under bench/results/gpu/.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXIT_NO_CUDA = 2

# Stable Diffusion 2.1-base (stabilityai/stable-diffusion-2-1-base): the components' configurations.
SD21_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    norm_num_groups=32,
)
SD21_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
)
SD21_TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)


def random_sd21(placement: Any, work: Path) -> Any:
    """SD 2.1-base's components with random weights, made on the device (no download, no disk)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from engine.model.loading import Model
    from engine.model.speedups import prepare_unet
    from engine.model.tiny_model import SD_SCHEDULER, write_clip_tokenizer

    torch.manual_seed(0)
    write_clip_tokenizer(work / "tokenizer")  # a byte-level vocabulary: ids stay below the real one's size
    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer")
    with torch.device(placement.device):
        unet = UNet2DConditionModel(**SD21_UNET).to(dtype=placement.dtype).eval()
        vae = AutoencoderKL(**SD21_VAE).to(dtype=placement.vae_dtype).eval()
        text = CLIPTextModel(
            CLIPTextConfig(
                **SD21_TEXT,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        text = text.to(dtype=placement.dtype).eval()
    prepare_unet(unet, placement)
    config = dict(DDIMScheduler(**SD_SCHEDULER).config)
    return Model(unet, vae, text, tokenizer, config, placement, None, _identity="random-sd21-base-seed0")


# SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0): the components' configurations.
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
SDXL_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
SDXL_TEXT_2 = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)
CONFIGS = ("sd21", "sdxl")  # --config: the native size of each is its default --size
NATIVE = {"sd21": 512, "sdxl": 1024}


def random_sdxl(placement: Any, work: Path) -> Any:
    """SDXL base's components with random weights, made on the device; the VAE stays fp32 (it
    overflows in fp16), as the engine keeps it."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from engine.model import family
    from engine.model.loading import Model
    from engine.model.speedups import prepare_unet
    from engine.model.tiny_model import SDXL_SCHEDULER, write_clip_tokenizer

    torch.manual_seed(0)
    write_clip_tokenizer(work / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer")
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device(placement.device):
        unet = UNet2DConditionModel(**SDXL_UNET).to(dtype=placement.dtype).eval()
        vae = AutoencoderKL(**{**SD21_VAE, "scaling_factor": 0.13025}).to(dtype=placement.vae_dtype).eval()
        text = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT, **ids)).to(dtype=placement.dtype).eval()
        text_2 = (
            CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2, **ids)).to(dtype=placement.dtype).eval()
        )
    prepare_unet(unet, placement)
    scheduler = DDIMScheduler.from_config(SDXL_SCHEDULER)
    pipe = StableDiffusionXLPipeline(vae, text, text_2, tokenizer, tokenizer, unet, scheduler)
    return Model(
        unet,
        vae,
        text,
        tokenizer,
        dict(scheduler.config),
        placement,
        None,
        family=family.Family(family.SDXL, 128),
        text_encoder_2=text_2,
        tokenizer_2=tokenizer,
        pipeline=pipe,
        _identity="random-sdxl-base-seed0",
    )


def square_frames(count: int, size: int, folder: Path) -> list[str]:
    """`count` real consecutive frames of cityCC0.mpg, centre-cropped to size x size PNGs."""
    from PIL import Image

    from tests.clips import extract_frames

    raw = extract_frames("cityCC0.mpg", folder / "raw", count, start=0, width=size * 2)
    out = folder / f"square{size}"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in raw:
        image = Image.open(path).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
        square.save(out / path.name)
        paths.append(str(out / path.name))
    return paths


def measure(model: Any, job: Any, cuda: bool) -> dict[str, Any]:
    """Run one job in this process; its wall time, peak GPU memory and UNet frame evaluations."""
    import torch

    from engine import protocol
    from engine.run.events import CancelToken, Emitter
    from engine.run.execute import execute

    stream = io.StringIO()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    code = execute(job, Emitter(stream), CancelToken(), model=model)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    events = [protocol.parse_event(line) for line in stream.getvalue().splitlines()]
    last = [e for e in events if e][-1]
    if code != 0:
        raise SystemExit(f"the {job.stage} job failed: {last}")
    stats = last.get("stats") or {}
    evals = sum(
        stats.get(k, 0) for k in ("inversion_unet_frames", "keyframe_unet_frames", "propagate_unet_frames")
    )
    return {
        "seconds": round(seconds, 3),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "unet_frame_evals": evals,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="", help="a real model (default: SD 2.1-base's configuration, random)"
    )
    parser.add_argument(
        "--config", choices=CONFIGS, default="sd21", help="random weights of SD 2.1-base or SDXL"
    )
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=0, help="working size (default: the config's native)")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU (time only; few frames)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--stride", type=int, default=8, help="keyframe stride (the paper's batch size)")
    parser.add_argument("--chunk", type=int, default=8, help="frames per UNet call")
    parser.add_argument("--compile", action="store_true", help="also measure the edits with a compiled UNet")
    parser.add_argument("--dry-run", action="store_true", help="CPU: 2 frames, 64 px, 2 steps, tiny model")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu"))
    args = parser.parse_args(argv)

    import torch

    args.size = args.size or NATIVE[args.config]
    if not (args.dry_run or args.cpu) and not torch.cuda.is_available():
        print(
            f"gpu_bench measures a CUDA GPU, but torch {torch.__version__} sees none (no NVIDIA GPU, no "
            "driver, or a CPU-only torch build). Run it on a CUDA machine with a CUDA build of torch, or "
            "add --dry-run to check the script on the CPU.",
            file=sys.stderr,
        )
        return EXIT_NO_CUDA

    from engine import protocol
    from engine.model import devices, loading
    from engine.model.speedups import prepare_unet
    from engine.model.tiny_model import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    if args.dry_run:
        args.frames, args.size, args.steps, args.stride, args.chunk = 2, 64, 2, 2, 2
        placement = devices.choose("cpu")
        tiny = make_tiny_model(work / "tiny", family="sdxl" if args.config == "sdxl" else "sd1")
        model = loading.load(str(tiny), placement)
        prepare_unet(model.unet, placement, channels_last=True)  # the CUDA layout, checked on the CPU
        model_name = f"tiny {model.family.label} (dry run)"
    else:
        placement = devices.choose("cpu" if args.cpu else "cuda")
        if args.model:
            model, model_name = loading.load(args.model, placement), Path(args.model).name
        elif args.config == "sdxl":
            model, model_name = random_sdxl(placement, work), "SDXL base config, random weights"
        else:
            model, model_name = random_sd21(placement, work), "SD 2.1-base config, random weights"
    cuda = placement.device.type == "cuda"
    frames = square_frames(args.frames, args.size, work)

    def job(stage: str, method: str = "tokenflow", name: str = "") -> Any:
        return protocol.Job(
            frames=frames,
            output=str(work / f"out-{name or stage}-{time.monotonic_ns()}"),
            prompt="a watercolor painting",
            source_prompt="a city street",
            stage=stage,
            method=method,
            model=model_name,
            cache_dir=str(work / "cache"),
            steps=args.steps,
            size=args.size,
            keyframe_stride=args.stride,
            chunk_size=args.chunk,
            keyframe_batch=max(8, -(-args.frames // args.stride)),
        )

    rows: list[dict[str, Any]] = []

    def row(phase: str, method: str, result: dict[str, Any]) -> None:
        rows.append({"phase": phase, "method": method, **result})
        print(f"  {phase} {method}: {result}", file=sys.stderr, flush=True)

    row("inversion", "DDIM (cached per frame)", measure(model, job(protocol.STAGE_INVERT), cuda))
    row("edit", "TokenFlow", measure(model, job(protocol.STAGE_PROPAGATE), cuda))
    row("edit", "per-frame PnP", measure(model, job(protocol.STAGE_PROPAGATE, "per-frame"), cuda))
    if args.compile:
        prepare_unet(model.unet, placement, compile_unet=True)
        row(
            "edit, compiled (1st: compiles)", "TokenFlow", measure(model, job(protocol.STAGE_PROPAGATE), cuda)
        )
        row("edit, compiled", "TokenFlow", measure(model, job(protocol.STAGE_PROPAGATE), cuda))
        row(
            "edit, compiled",
            "per-frame PnP",
            measure(model, job(protocol.STAGE_PROPAGATE, "per-frame"), cuda),
        )

    gpu = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    unet_dtype, vae_dtype = (str(d).removeprefix("torch.") for d in (placement.dtype, placement.vae_dtype))
    precision = f"{unet_dtype} UNet, {vae_dtype} VAE"
    setting = f"{args.frames} frames, {args.size}x{args.size}, {args.steps} steps; {precision}"
    table = render_table(rows, gpu, model_name, setting, args.frames)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "gpu": gpu,
        "torch": torch.__version__,
        "model": model_name,
        "config": args.config,
        "frames": args.frames,
        "size": args.size,
        "steps": args.steps,
        "dtype": f"UNet {placement.dtype}, VAE {placement.vae_dtype}",
        "rows": rows,
    }
    path = out / f"gpu_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {path}", file=sys.stderr)
    return 0


def render_table(rows: list[dict[str, Any]], gpu: str, model: str, setting: str, frames: int) -> str:
    """The Markdown table for docs/performance.md (the same columns as its empty template)."""
    lines = [
        f"{gpu}; {model}; {setting}",
        "",
        "| Phase | Method | Time (s) | Per frame (s) | Peak GPU memory (GB) | UNet frame evaluations |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = "n/a" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        lines.append(
            f"| {r['phase']} | {r['method']} | {r['seconds']:.1f} | {r['seconds'] / frames:.2f} | {peak} "
            f"| {r['unet_frame_evals']} |"
        )
    tf = next(r for r in rows if r["phase"] == "edit" and r["method"] == "TokenFlow")
    pf = next(r for r in rows if r["phase"] == "edit" and r["method"] == "per-frame PnP")
    lines += ["", f"TokenFlow edit / per-frame PnP edit: {tf['seconds'] / pf['seconds']:.2f}x time"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
