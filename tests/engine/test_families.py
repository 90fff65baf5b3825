"""Model families: SDXL and SD 2.x v-prediction edit end to end; what is not a UNet SD is refused by name.

The tiny SDXL model keeps SDXL's layout (three levels, no attention at the first, two text encoders,
the pooled embedding and size conditioning); its weights are random, so these tests prove shapes,
plumbing and agreement with diffusers' own SDXL pipeline, not pictures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import protocol
from engine.errors import ModelError
from engine.model import devices, family, loading
from engine.model.tiny_model import make_tiny_model

from .conftest import cli_events, run_cli, run_in_process


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("xl") / "tiny-xl", family="sdxl")


@pytest.fixture(scope="module")
def xl(xl_dir: Path):
    return loading.load(str(xl_dir), devices.choose("cpu"))


@pytest.fixture(scope="module")
def v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("v") / "tiny-v", family="sd2-v")


def test_the_family_is_read_from_the_configs(tiny_model_dir: Path, xl_dir: Path, v_dir: Path) -> None:
    sd1 = family.detect(str(tiny_model_dir))
    assert (sd1.name, sd1.native_size, sd1.prediction) == ("sd1", 512, "epsilon")
    sd2 = family.detect(str(v_dir))
    assert (sd2.name, sd2.native_size, sd2.prediction) == ("sd2", 768, "v_prediction")
    sdxl = family.detect(str(xl_dir))
    assert (sdxl.name, sdxl.native_size) == ("sdxl", 256)  # 8x its UNet's sample size (SDXL's: 1024)
    assert family.Family("sdxl").native_size == 1024 and family.Family("sd1").native_size == 512


def test_sdxl_conditioning_shapes(xl) -> None:
    assert xl.family.name == "sdxl" and xl.text_encoder_2 is not None
    text = xl.encode_prompt("a watercolor painting")
    assert tuple(text.tokens.shape) == (1, 77, 80)  # both encoders' penultimate states, joined
    assert tuple(text.pooled.shape) == (1, 48)  # the second encoder's projected pooled output
    empty = xl.encode_prompt("", negative=True)  # force_zeros_for_empty_prompt, as diffusers does
    assert not empty.tokens.any() and not empty.pooled.any()
    assert xl.encode_prompt("").tokens.abs().sum() > 0  # an empty source prompt is encoded
    from engine.model.conditioning import unet_kwargs

    kwargs = unet_kwargs(text.expand(3), torch.zeros(3, 4, 24, 32), xl.vae_factor)
    ids = kwargs["added_cond_kwargs"]["time_ids"]
    assert ids.tolist() == [[192, 256, 0, 0, 192, 256]] * 3  # (h, w), crop, (h, w) of the canvas
    assert kwargs["added_cond_kwargs"]["text_embeds"].shape == (3, 48)


def test_one_sdxl_step_equals_diffusers_pipeline(xl) -> None:
    """One DDIM step of the engine's UNet call equals diffusers' StableDiffusionXLPipeline's (the judge of
    the pooled embedding, the size ids and the text joining)."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        **{
            **xl.pipeline.components,
            "scheduler": DDIMScheduler.from_config(xl.scheduler_config, clip_sample=False),
        }
    )
    pipe.set_progress_bar_config(disable=True)
    x = torch.randn(1, 4, 24, 32, generator=torch.Generator().manual_seed(3))
    theirs = pipe(
        "a pencil sketch",
        height=192,
        width=256,
        num_inference_steps=1,
        guidance_scale=1.0,
        latents=x.clone(),
        output_type="latent",
    ).images
    scheduler = DDIMScheduler.from_config(xl.scheduler_config, clip_sample=False)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    ours = scheduler.step(xl.predict(x, t, xl.encode_prompt("a pencil sketch")), t, x).prev_sample
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    wrong = scheduler.step(xl.predict(x[..., :24], t, xl.encode_prompt("a pencil sketch")), t, x[..., :24])
    assert not torch.allclose(wrong.prev_sample, theirs[..., :24], atol=1e-5)  # the size ids matter


def test_sdxl_edit_and_preview_end_to_end_with_the_cache_reused(xl_dir: Path, city16, tmp_path: Path) -> None:
    common = [
        "--frames",
        str(city16[0].parent),
        "--model",
        str(xl_dir),
        "--steps",
        "3",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--keyframe-stride",
        "4",
    ]
    first = run_cli("edit", *common, "--prompt", "a watercolor painting", "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    events = cli_events(first.stdout)
    started = events[0]
    assert started["model_family"] == "sdxl" and started["width"] == 256  # the family's native size
    done = events[-1]
    assert len(done["files"]) == 16 and done["stats"]["cache_misses"] == 16
    assert done["stats"]["injection_steps"] == {"residual": 2, "qk": 1}
    second = run_cli(
        "edit", *common, "--prompt", "a pencil sketch", "--stage", "preview", "--out", str(tmp_path / "b")
    )
    assert second.returncode == 0, second.stdout[-2000:]
    done2 = cli_events(second.stdout)[-1]
    assert done2["stats"]["cache_hits"] == len(done2["keyframes"]) and done2["stats"]["cache_misses"] == 0
    manifest = json.loads((tmp_path / "a" / protocol.MANIFEST).read_text())
    assert manifest["model_family"] == "sdxl"
    from PIL import Image

    a = np.asarray(Image.open(done["files"][0]), dtype=np.float32)
    src = np.asarray(Image.open(city16[0]), dtype=np.float32)
    assert a.shape == src.shape  # the result at the source size


def test_sdxl_pnp_layers_are_injected_and_overridable(xl, city16, tmp_path: Path) -> None:
    code, events = run_in_process(
        xl,
        frames=[str(p) for p in city16[:4]],
        output=str(tmp_path / "o"),
        prompt="x",
        stage="preview",
        cache_dir=str(tmp_path / "c"),
        size=128,
    )
    assert code == 0, events.getvalue()[-1500:]
    code, events = run_in_process(
        xl,
        frames=[str(p) for p in city16[:4]],
        output=str(tmp_path / "bad"),
        prompt="x",
        cache_dir=str(tmp_path / "c"),
        size=128,
        pnp_qk_layers="up_blocks.3.attentions.0",
    )
    assert code == protocol.EXIT_BAD_INPUT
    message = events.events("error")[0]["message"]
    assert "up_blocks.3.attentions.0" in message and "up_blocks.1.attentions.2" in message  # what it has
    assert not (tmp_path / "bad").exists()
    from engine.method import attention

    qk, conv = attention.default_layers("sdxl")
    assert attention.layer_problem(xl.unet, qk, conv) is None
    assert attention.layer_problem(xl.unet, attention.DEFAULT_QK_LAYERS, ()) is not None  # SD's names


def _fake_folder(root: Path, index: dict, unet: dict | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(index))
    if unet is not None:
        (root / "unet").mkdir()
        (root / "unet" / "config.json").write_text(json.dumps(unet))
    return root  # configs only: a load that reached the weights would fail with another message


@pytest.mark.parametrize(
    ("index", "unet", "named"),
    [
        (
            {
                "_class_name": "StableDiffusion3Pipeline",
                "transformer": ["diffusers", "SD3Transformer2DModel"],
            },
            None,
            "Stable Diffusion 3",
        ),
        (
            {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]},
            None,
            "Flux",
        ),
        (
            {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]},
            {"_class_name": "UNet2DConditionModel", "addition_embed_type": "text_time", "in_channels": 4},
            "refiner",
        ),
        (
            {"_class_name": "StableDiffusionPipeline"},
            {"_class_name": "UNet2DConditionModel", "in_channels": 9},
            "inpainting",
        ),
        (
            {"_class_name": "StableVideoDiffusionPipeline"},
            {"_class_name": "UNetSpatioTemporalConditionModel"},
            "video",
        ),
        ({"_class_name": "SomeVideoPipeline"}, {"_class_name": "UNetMotionModel", "in_channels": 4}, "video"),
    ],
)
def test_other_families_are_refused_by_name_before_weights_load(tmp_path, city16, index, unet, named) -> None:
    folder = _fake_folder(tmp_path / "m", index, unet)
    with pytest.raises(ModelError, match=named) as err:
        loading.load(str(folder), devices.choose("cpu"))
    assert "SDXL" in str(err.value) and "SD 1.x" in str(err.value)  # what the engine accepts
    result = run_cli(
        "edit",
        "--frames",
        str(city16[0].parent),
        "--model",
        str(folder),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        timeout=120,
    )
    assert result.returncode == protocol.EXIT_MODEL, result.stdout[-1500:]
    events = cli_events(result.stdout)
    assert named in events[-1]["message"] and "Traceback" not in result.stderr
    assert not any(e["event"] == "started" for e in events)  # refused before any work
    assert not (tmp_path / "o").exists()


def _header_only_file(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize(
    ("tensors", "named"),
    [
        ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (2, 2)}, "Stable Diffusion 3"),
        ({"double_blocks.0.img_attn.qkv.weight": (2, 2)}, "Flux"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)}, "inpainting"),
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
                "model.diffusion_model.label_emb.0.0.weight": (2, 2),
                "conditioner.embedders.0.model.ln_final.weight": (2,),
            },
            "refiner",
        ),
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
                "model.diffusion_model.input_blocks.1.0.time_stack.0.weight": (2,),
            },
            "video",
        ),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (2, 2)}, "LoRA"),
    ],
)
def test_single_files_of_other_families_are_refused_from_the_header(tmp_path, tensors, named) -> None:
    path = _header_only_file(tmp_path / "model.safetensors", tensors)
    with pytest.raises(ModelError, match=named):
        loading.load(str(path), devices.choose("cpu"))


def test_a_damaged_single_file_is_named(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelError, match="damaged or incomplete"):
        loading.load(str(path), devices.choose("cpu"))


def _as_v_prediction(model):
    """The same network reparameterised to predict v = (eps - sigma_t x_t) / alpha_t: a v-prediction model
    whose every prediction means exactly what the epsilon model's does."""
    import dataclasses

    abar = torch.tensor(_alphas_cumprod(model.scheduler_config))

    def hook(module, args, kwargs, output):
        x, t = args[0] if args else kwargs["sample"], args[1] if len(args) > 1 else kwargs["timestep"]
        a = abar[int(t)].to(x.dtype)
        output.sample = (output.sample - (1 - a).sqrt() * x) / a.sqrt()
        return output

    handle = model.unet.register_forward_hook(hook, with_kwargs=True)
    config = {**model.scheduler_config, "prediction_type": "v_prediction"}
    return dataclasses.replace(model, scheduler_config=config, _identity=""), handle


def _alphas_cumprod(config) -> list[float]:
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config).alphas_cumprod.tolist()


def test_v_prediction_inverts_and_edits_as_the_epsilon_model(tiny_model_dir, city16, tmp_path) -> None:
    """Inversion, PnP and the edit read the UNet's output through the scheduler's prediction type: the
    v-parameterised twin of the tiny model must reconstruct and edit as the epsilon model does."""
    from PIL import Image

    from engine.method.inversion import invert

    eps_model = loading.load(str(tiny_model_dir), devices.choose("cpu"))
    frames = [str(p) for p in city16[:4]]
    fields = dict(frames=frames, prompt="a watercolor painting", size=128, steps=5, keyframe_stride=2)
    code, ev = run_in_process(
        eps_model, output=str(tmp_path / "eps"), cache_dir=str(tmp_path / "c1"), **fields
    )
    assert code == 0, ev.getvalue()[-1500:]
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = eps_model.encode_prompt("")
    _, inv_eps = invert(eps_model, latents, text, 10)
    v_model, handle = _as_v_prediction(eps_model)
    try:
        _, inv_v = invert(v_model, latents, text, 10)
        code, ev = run_in_process(
            v_model, output=str(tmp_path / "v"), cache_dir=str(tmp_path / "c2"), **fields
        )
        assert code == 0, ev.getvalue()[-1500:]
    finally:
        handle.remove()
    relative = ((inv_v - inv_eps).abs().max() / inv_eps.abs().max()).item()
    assert relative < 1e-5, relative  # measured 1.2e-6 (float32 rounding of the reparameterisation)
    for name in sorted(p.name for p in (tmp_path / "eps").glob("*.png")):
        a = np.asarray(Image.open(tmp_path / "eps" / name), dtype=np.float64)
        b = np.asarray(Image.open(tmp_path / "v" / name), dtype=np.float64)
        assert np.abs(a - b).max() <= 1, (name, np.abs(a - b).max())  # at most one 8-bit level apart
    # read as epsilon, the v model's outputs would be wrong: the scheduler's prediction type is what counts
    wrong, handle = _as_v_prediction(eps_model)
    try:
        import dataclasses

        wrong = dataclasses.replace(wrong, scheduler_config=eps_model.scheduler_config)
        _, inv_wrong = invert(wrong, latents, text, 10)
    finally:
        handle.remove()
    assert ((inv_wrong - inv_eps).abs().max() / inv_eps.abs().max()).item() > 0.05


def test_a_v_prediction_sd2_model_edits_end_to_end(v_dir, city16, tmp_path) -> None:
    result = run_cli(
        "edit",
        "--frames",
        str(city16[0].parent),
        "--model",
        str(v_dir),
        "--prompt",
        "a sketch",
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--steps",
        "3",
        "--size",
        "128",
        "--cache-dir",
        str(tmp_path / "c"),
        "--stage",
        "preview",
    )
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    events = cli_events(result.stdout)
    assert events[0]["model_family"] == "sd2" and events[0]["native_size"] == 768


def test_v_inversion_reads_v_at_the_unets_timestep(v_dir) -> None:
    """The engine's inversion of a v model (v read at the timestep the UNet was told) reconstructs better
    than reading it at the latent's level, as diffusers' inverse scheduler does (measured 6.6x lower
    error at 10 and 50 steps on this model)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    from engine.method.inversion import invert

    model = loading.load(str(v_dir), devices.choose("cpu"))
    text = model.encode_prompt("").expand(2)
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8

    def reconstruct(noisy: torch.Tensor) -> torch.Tensor:
        forward = DDIMScheduler.from_config(model.scheduler_config, clip_sample=False)
        forward.set_timesteps(10)
        x = noisy
        for t in forward.timesteps:
            x = forward.step(model.predict(x, t, text), t, x).prev_sample
        return x

    with torch.no_grad():
        _, ours = invert(model, x0, model.encode_prompt(""), 10)
        theirs = DDIMInverseScheduler.from_config(model.scheduler_config, clip_sample=False)
        theirs.set_timesteps(10)
        x = x0.clone()
        for t in theirs.timesteps:
            x = theirs.step(model.predict(x, t, text), t, x).prev_sample
        error_ours = ((reconstruct(ours[-1]) - x0) ** 2).mean()
        error_theirs = ((reconstruct(x) - x0) ** 2).mean()
    assert error_ours < error_theirs / 3, (error_ours, error_theirs)


def test_an_sdxl_single_file_checkpoint_edits_as_its_folder(xl_dir: Path, city16, tmp_path: Path) -> None:
    """One .safetensors file in SGM's layout (as SDXL fine-tunes ship), with the matching configs
    offline: the same family, and the same pixels as the diffusers folder it was written from."""
    from .original_checkpoint import write_original_checkpoint

    checkpoint = write_original_checkpoint(xl_dir, tmp_path / "tiny-xl.safetensors")
    assert family.detect(str(checkpoint)).name == "sdxl"  # from the header alone
    common = [
        "--frames",
        str(city16[0].parent),
        "--prompt",
        "a watercolor painting",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--size",
        "128",
    ]
    runs = {}
    for name, model in (
        ("folder", ["--model", str(xl_dir)]),
        ("file", ["--model", str(checkpoint), "--model-config", str(xl_dir)]),
    ):
        result = run_cli(
            "edit",
            *common,
            *model,
            "--out",
            str(tmp_path / name),
            "--cache-dir",
            str(tmp_path / f"cache-{name}"),
        )
        assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
        events = cli_events(result.stdout)
        assert events[0]["model_family"] == "sdxl"
        runs[name] = events[-1]["files"]
        assert len(runs[name]) == len(city16)  # propagated to the whole shot
    from PIL import Image

    for a, b in zip(runs["folder"], runs["file"], strict=True):
        x, y = (np.asarray(Image.open(f), dtype=np.float64) for f in (a, b))
        # the same weights; the loaders' tensor layouts differ (the UNet's output by 1e-6), so not bit
        # for bit: measured on a 16-frame propagate: at most 1 level apart, PSNR 77.2 dB at the least
        psnr = 10 * np.log10(255**2 / max(np.mean((x - y) ** 2), 1e-12))
        assert psnr > 45 and np.abs(x - y).max() <= 8, (a, psnr, np.abs(x - y).max())


@pytest.mark.parametrize(
    ("device", "force_upcast", "expected"),
    [
        ("cuda", True, torch.float32),  # SD's and SDXL's own VAEs: fp16 overflows to black frames
        ("cuda", None, torch.float32),  # a config that does not say: the safe side
        ("cuda", False, torch.float16),  # the fp16-fixed SDXL VAE declares itself safe
        ("cpu", False, torch.float32),  # the CPU runs fp32 throughout
    ],
)
def test_the_vae_runs_in_fp16_only_where_it_says_it_is_safe(device, force_upcast, expected) -> None:
    placement = devices.Placement(torch.device(device), torch.float16 if device == "cuda" else torch.float32)
    config = type("Config", (), {} if force_upcast is None else {"force_upcast": force_upcast})()
    assert loading.vae_dtype(placement, config) is expected


def _hub_cache(root: Path, repo: str, snapshot_of: Path | None = None, index: dict | None = None) -> Path:
    """huggingface_hub's cache layout (refs/main -> snapshots/<revision>) holding one model."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    if snapshot_of is not None:
        import shutil

        shutil.copytree(snapshot_of, snapshot)
    else:
        _fake_folder(snapshot, index or {})
    return root


def test_a_hub_id_in_the_cache_is_detected_and_edits_offline(xl_dir, city16, tmp_path, monkeypatch) -> None:
    hub = _hub_cache(tmp_path / "hub", "stabilityai/stable-diffusion-xl-base-1.0", snapshot_of=xl_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    found = loading.detect_family("stabilityai/stable-diffusion-xl-base-1.0")
    assert found is not None and found.name == family.SDXL
    result = run_cli(
        "edit",
        "--frames",
        str(city16[0].parent),
        "--model",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "--prompt",
        "a watercolor painting",
        "--stage",
        "preview",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    events = cli_events(result.stdout)
    assert events[0]["model_family"] == "sdxl" and events[-1]["event"] == "done"


def test_a_cached_hub_id_of_another_family_is_refused_by_name(tmp_path, city16, monkeypatch) -> None:
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}
    hub = _hub_cache(tmp_path / "hub", "black-forest-labs/FLUX.1-dev", index=index)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    with pytest.raises(ModelError, match="Flux"):
        loading.load("black-forest-labs/FLUX.1-dev", devices.choose("cpu"))


def test_ddim_reads_an_euler_config_without_warning_the_user(xl) -> None:
    """SDXL ships Euler's scheduler config; DDIM takes its betas and spacing without diffusers' 'verify
    your scheduler_config.json' warning about a correct model, which diffusers gives for every key its
    class does not take (the CLI silences diffusers' warnings; a script that imports the engine sees
    them)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    from engine.method import schedulers

    def warned_of(cls, config: dict) -> set[str]:  # the keys diffusers' warning lists
        taken, _, _ = cls.extract_init_dict(dict(config))
        return {key for key in config if not key.startswith("_") and key not in taken}

    for cls in (DDIMInverseScheduler, DDIMScheduler):
        assert {"interpolation_type", "use_karras_sigmas"} <= warned_of(cls, xl.scheduler_config)
        assert not warned_of(cls, schedulers.ddim_config(cls, xl.scheduler_config))
        scheduler = schedulers.ddim(cls, xl.scheduler_config, clip_sample=False)
        assert scheduler.config.timestep_spacing == xl.scheduler_config["timestep_spacing"]
        assert scheduler.config.beta_schedule == xl.scheduler_config["beta_schedule"]
        assert scheduler.config.steps_offset == xl.scheduler_config["steps_offset"]
