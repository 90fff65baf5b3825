"""Stop at the first non-finite model output: a broken checkpoint or an fp16 overflow.

NaN/inf latents otherwise come out as black frames with exit 0 and, from the inversion, would be
cached for every later run. One `isfinite(...).all()` per UNet or VAE call costs next to nothing.
"""

from __future__ import annotations

import torch

from ..errors import ModelError


def require_finite(x: torch.Tensor, where: str, dtype: torch.dtype, guidance: float | None = None) -> None:
    """Raise ModelError, with what to try, unless every value of `x` is finite."""
    if bool(torch.isfinite(x).all()):
        return
    tries = []
    if "VAE" in where:
        tries.append("keeping the VAE in fp32 (the engine's default: the SD VAE overflows in fp16)")
    if dtype == torch.float16:
        tries.append("running the model in fp32 (fp16 overflows on some checkpoints; device 'cpu' runs fp32)")
    if guidance is not None:
        tries.append(f"a lower guidance scale (now {guidance:g})")
    damaged = "it fails in fp32, so it may be damaged" if dtype == torch.float32 else "it may be damaged"
    tries.append(f"another model or checkpoint ({damaged})")
    raise ModelError(
        f"the model produced non-finite values (NaN or infinity) in {where}; nothing was written or cached. "
        "Try " + "; ".join(tries) + "."
    )
