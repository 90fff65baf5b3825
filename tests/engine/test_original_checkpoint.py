"""The original-layout checkpoint writer is the exact inverse of diffusers' single-file loader: a tiny
model written as one LDM / SGM file and read back with `from_single_file` has every tensor of its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.engine.original_checkpoint import write_original_checkpoint

COMPONENTS = ("unet", "vae", "text_encoder")
EXPECTED = {"sd1": "sd1", "sd2-v": "sd2", "sdxl": "sdxl"}  # tiny family -> engine family
# Keys each family's original file has (LDM's CLIP / OpenCLIP text encoder, SGM's two embedders).
LAYOUT = {
    "sd1": ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"],
    "sd2-v": [
        "cond_stage_model.model.token_embedding.weight",
        "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",
    ],
    "sdxl": [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.label_emb.0.2.bias",
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.1.model.transformer.resblocks.1.mlp.c_fc.weight",
        "conditioner.embedders.1.model.ln_final.weight",
    ],
}


def pipeline_class(family: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def from_single_file(file: Path, folder: Path, family: str) -> Any:
    return pipeline_class(family).from_single_file(str(file), config=str(folder), local_files_only=True)


def differing(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """The names of the tensors that are not equal (or missing) between two models."""
    x, y = a.state_dict(), b.state_dict()
    names = sorted(set(x) | set(y))
    return [
        k
        for k in names
        if k not in x or k not in y or x[k].shape != y[k].shape or not torch.equal(x[k], y[k])
    ]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path, Any]]:
    """family -> (folder, checkpoint file, the folder's own pipeline), each tiny family built once."""
    from engine.model.tiny_model import make_tiny_model

    made: dict[str, tuple[Path, Path, Any]] = {}

    def get(family: str) -> tuple[Path, Path, Any]:
        if family not in made:
            root = tmp_path_factory.mktemp(family)
            folder = make_tiny_model(root / "m", family=family)
            file = write_original_checkpoint(folder, root / "model.safetensors")
            own = pipeline_class(family).from_pretrained(str(folder), local_files_only=True)
            made[family] = folder, file, own
        return made[family]

    return get


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_from_single_file_gives_back_every_tensor(written, family: str) -> None:
    folder, file, own = written(family)
    loaded = from_single_file(file, folder, family)
    for name in (*COMPONENTS, *(("text_encoder_2",) if family == "sdxl" else ())):
        assert differing(getattr(loaded, name), getattr(own, name)) == [], name


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_the_file_has_the_original_layout_and_is_recognised(written, family: str) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from engine.model import family as families

    folder, file, _ = written(family)
    tensors = load_file(str(file))
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
    assert all(k.startswith(prefixes) for k in tensors)
    assert all(k in tensors for k in LAYOUT[family])
    assert tensors["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # a 1x1 conv, as in LDM
    # diffusers keys SD 2 on cross-attention width 1024, which the tiny SD 2 does not have
    assert infer_diffusers_model_type(tensors) == {"sdxl": "xl_base"}.get(family, "v1")
    assert families.from_single_file(str(file), file).name == EXPECTED[family]
    assert families.from_single_file(str(file), file, str(folder)).name == EXPECTED[family]


def test_a_tensor_under_the_wrong_name_is_caught(written, tmp_path: Path) -> None:
    """Two same-shaped tensors swapped in the file (as a wrong rename would place them) load as exactly
    those two UNet tensors changed, and one changed tensor as that one."""
    folder, file, own = written("sd1")
    tensors = load_file(str(file))
    a, b = (f"model.diffusion_model.input_blocks.{i}.0.in_layers.2.weight" for i in (1, 2))
    tensors[a], tensors[b] = tensors[b], tensors[a]
    tensors["model.diffusion_model.out.2.bias"] = tensors["model.diffusion_model.out.2.bias"] + 1
    save_file(tensors, str(tmp_path / "wrong.safetensors"))
    loaded = from_single_file(tmp_path / "wrong.safetensors", folder, "sd1")
    assert differing(loaded.unet, own.unet) == [
        "conv_out.bias",
        "down_blocks.0.resnets.0.conv1.weight",
        "down_blocks.0.resnets.1.conv1.weight",
    ]
    assert differing(loaded.vae, own.vae) == []


def test_a_tensor_the_tables_do_not_name_is_refused(written, tmp_path: Path) -> None:
    import shutil

    folder, _, _ = written("sd1")
    copy = Path(shutil.copytree(folder, tmp_path / "m"))
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({**load_file(str(weights)), "down_blocks.0.mystery.weight": torch.zeros(1)}, str(weights))
    with pytest.raises(ValueError, match="mystery"):
        write_original_checkpoint(copy, tmp_path / "model.safetensors")
