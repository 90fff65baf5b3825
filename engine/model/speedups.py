"""GPU speed-ups of the UNet that change no result beyond rounding: channels-last memory format
on CUDA (cuDNN's fast fp16 convolutions want NHWC), and `torch.compile` as an option.

`torch.compile` is off by default: TokenFlow swaps attention processors and hooks between calls
(keyframe, propagate, per-frame modes), which costs recompiles, and the first run pays the
compile. It is worth it for a warm engine that runs many jobs; `bench/gpu_bench.py --compile`
measures it. Turn it on with TOKENFLOW_COMPILE_UNET=1 in the engine's environment.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from .devices import Placement

log = logging.getLogger(__name__)
COMPILE_ENV = "TOKENFLOW_COMPILE_UNET"


def compile_requested() -> bool:
    return os.environ.get(COMPILE_ENV, "").strip() not in ("", "0")


def prepare_unet(
    unet: Any, placement: Placement, channels_last: bool | None = None, compile_unet: bool | None = None
) -> Any:
    """Channels-last on CUDA (or when asked), compiled in place when asked; returns the UNet."""
    if channels_last if channels_last is not None else placement.device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    if compile_unet if compile_unet is not None else compile_requested():
        log.info("compiling the UNet (torch.compile): the first run pays the compile")
        unet.compile()  # in place: the module (and its attention processors) stays the same object
    return unet
