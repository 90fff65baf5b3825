"""Where the model runs: CUDA, then Apple MPS, then the CPU (slow, with a warning)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import BadInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """The device, the UNet / text-encoder dtype, and the VAE dtype.

    The SD VAE overflows to NaN (black frames) in fp16 on several checkpoints, so it stays fp32.
    """

    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype = torch.float32

    def describe(self) -> dict[str, str]:
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def choose(requested: str = "auto") -> Placement:
    """Resolve 'auto' | 'cuda' | 'mps' | 'cpu' to a placement; refuse a device that is not there."""
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif _mps_available():
            requested = "mps"
        else:
            requested = "cpu"
            log.warning("no CUDA or MPS device: running on the CPU, which is very slow for real models")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(
                "device 'cuda' was asked for but torch sees no CUDA GPU; use device 'auto' or 'cpu'"
            )
        return Placement(torch.device("cuda"), torch.float16)
    if requested == "mps":
        if not _mps_available():
            raise BadInput(
                "device 'mps' was asked for but this machine has no Apple MPS; use 'auto' or 'cpu'"
            )
        return Placement(torch.device("mps"), torch.float32)
    if requested == "cpu":
        return Placement(torch.device("cpu"), torch.float32)
    raise BadInput(f"unknown device {requested!r}; choose auto, cuda, mps or cpu")
