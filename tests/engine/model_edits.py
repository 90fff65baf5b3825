"""Copies of the tiny model folder with one weight tensor changed, the way a fine-tune or a damaged
checkpoint differs: the file is rewritten with safetensors, its header and other tensors intact."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

UNET_FILE = "unet/diffusion_pytorch_model.safetensors"
VAE_FILE = "vae/diffusion_pytorch_model.safetensors"
TEXT_FILE = "text_encoder/model.safetensors"


def change_tensor(file: Path, key: str, change: Callable[[torch.Tensor], None]) -> None:
    """Rewrite a safetensors file with `change` applied in place to one tensor."""
    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata()
        names = f.keys()
        tensors = {k: f.get_tensor(k).clone() for k in names}
    change(tensors[key])
    save_file(tensors, str(file), metadata=metadata)


def model_copy(source: Path, dest: Path, file: str = "", key: str = "", change=None) -> Path:
    """A copy of a diffusers model folder, optionally with one tensor of one file changed."""
    shutil.copytree(source, dest)
    if file:
        change_tensor(dest / file, key, change)
    return dest
