"""What the reference imports from torchvision, written beside its scratch copy.

PyPI's torchvision cannot be installed beside the CPU torch build these machines use
(shared/reference/environment.md), and the reference needs only this of it: tensor <-> PIL
conversions as torchvision defines them, and video reading/writing, which the benchmark does not use
(frames are given as PNG files; no video is written). Also `parity_hooks`, the module the keyframe
patch calls.
"""

from __future__ import annotations

from pathlib import Path

TRANSFORMS = '''
"""Stand-in for torchvision.transforms: ToTensor and ToPILImage as torchvision defines them."""
import numpy as np
import torch
from PIL import Image

from . import functional  # noqa: F401


class ToTensor:
    def __call__(self, pic):
        array = np.array(pic, dtype=np.uint8, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div(255)


class ToPILImage:
    def __call__(self, pic):
        array = pic.mul(255).byte().permute(1, 2, 0).cpu().numpy()  # torchvision truncates, too
        return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
'''

FUNCTIONAL = """
def rotate(*args, **kwargs):
    raise NotImplementedError("the parity benchmark gives frames as PNG files, never .mov videos")
"""

IO = '''
"""Stand-in for torchvision.io: the benchmark reads frames from PNG files and writes no video."""


def read_video(*args, **kwargs):
    raise NotImplementedError("the parity benchmark gives frames as PNG files, not a video")


def write_video(*args, **kwargs):
    return None
'''

HOOKS = '''
"""The keyframes of each denoising step, from the JSON file $PARITY_KEYFRAMES (a list per step)."""
import json
import os

import torch

_steps = json.loads(open(os.environ["PARITY_KEYFRAMES"]).read())
_calls = [0]


def keyframes(n_frames, batch_size):
    step = _calls[0]
    _calls[0] += 1
    keys = _steps[step]
    if len(keys) != n_frames // batch_size:
        raise RuntimeError(f"step {step}: {len(keys)} keyframes, {n_frames} frames, blocks of {batch_size}")
    return torch.tensor(keys)
'''


def write(dest: Path) -> None:
    package = dest / "torchvision"
    (package / "transforms").mkdir(parents=True, exist_ok=True)
    (package / "io").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""Stand-in for torchvision (bench/parity/standin.py)."""\n')
    (package / "transforms" / "__init__.py").write_text(TRANSFORMS)
    (package / "transforms" / "functional.py").write_text(FUNCTIONAL)
    (package / "io" / "__init__.py").write_text(IO)
    (dest / "parity_hooks.py").write_text(HOOKS)
