"""A model that produces NaN/inf (a damaged checkpoint, an fp16 overflow) stops the run with a `model`
error that says what to try; nothing non-finite is cached and no output folder is written."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from engine import protocol
from engine.method.inversion import _read_entry
from engine.model import devices, loading
from tests.engine.conftest import run_in_process
from tests.engine.model_edits import TEXT_FILE, UNET_FILE, VAE_FILE, model_copy


def _inf(tensor: torch.Tensor) -> None:
    tensor[0] = float("inf")


def _broken(tiny_model_dir, tmp_path, file: str, key: str):
    folder = model_copy(tiny_model_dir, tmp_path / "broken", file, key, _inf)
    return loading.load(str(folder), devices.choose("cpu"))


def _run(model, city16, tmp_path):
    return run_in_process(
        model,
        frames=[str(f) for f in city16[:4]],
        output=str(tmp_path / "out"),
        prompt="a red car",
        cache_dir=str(tmp_path / "cache"),
    )


def test_unet_producing_nan_stops_and_caches_nothing(tiny_model_dir, city16, tmp_path):
    model = _broken(tiny_model_dir, tmp_path, UNET_FILE, "conv_in.weight")
    code, events = _run(model, city16, tmp_path)
    assert code == protocol.EXIT_MODEL == 5
    (error,) = events.events("error")
    assert error["kind"] == "model"
    message = error["message"]
    assert "non-finite" in message and "UNet during the inversion" in message
    assert "another model or checkpoint" in message
    assert not events.events("done")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_vae_decoder_producing_nan_stops_before_the_output(tiny_model_dir, city16, tmp_path):
    model = _broken(tiny_model_dir, tmp_path, VAE_FILE, "decoder.conv_out.weight")
    code, events = _run(model, city16, tmp_path)
    assert code == 5
    (error,) = events.events("error")
    assert error["kind"] == "model" and "VAE decoder" in error["message"] and "fp32" in error["message"]
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    entries = list((tmp_path / "cache").rglob("*.safetensors"))  # the encoder and UNet are sound
    assert len(entries) == 4
    for entry in entries:
        with safe_open(str(entry), framework="pt") as f:
            latents = f.get_tensor("latents")
            timesteps = f.get_tensor("timesteps").tolist()
        _read_entry(entry, timesteps, tuple(latents.shape))  # finite, checksum intact


def test_edit_that_overflows_stops_with_the_guidance_named(tiny_model_dir, city16, tmp_path):
    """The inversion is sound; only the edit's prompt (a token whose embedding is inf) gives NaN."""

    from transformers import CLIPTokenizer

    z = CLIPTokenizer.from_pretrained(Path(tiny_model_dir) / "tokenizer").convert_tokens_to_ids("z")

    def z_is_inf(embedding: torch.Tensor) -> None:
        embedding[z] = float("inf")  # "z" as a word piece, as in "zebra"

    key = "embeddings.token_embedding.weight"
    folder = model_copy(tiny_model_dir, tmp_path / "broken", TEXT_FILE, key, z_is_inf)
    model = loading.load(str(folder), devices.choose("cpu"))
    code, events = run_in_process(
        model,
        frames=[str(f) for f in city16[:4]],
        output=str(tmp_path / "out"),
        prompt="a zebra",
        source_prompt="a street",
        cache_dir=str(tmp_path / "cache"),
    )
    assert code == 5, events.getvalue()
    (error,) = events.events("error")
    message = error["message"]
    assert "UNet during the edit" in message and "lower guidance scale (now 7.5)" in message
    assert not (tmp_path / "out").exists()
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 4  # the inversion was sound
