"""Which frames are keyframes, and which two keyframes each frame takes its features from.

Both choices are pure functions of (frame count, stride, seed, step), so any process (a farm chunk,
a preview run) that asks for the same step gets the same keyframes without talking to the others.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass


def fixed(n_frames: int, stride: int) -> list[int]:
    """Evenly spaced keyframes that include the first and last frame, at most `stride` apart.

    Every frame then lies between two keyframes, and the keyframes are known before the run starts.
    """
    if n_frames <= 1:
        return [0]
    count = math.ceil((n_frames - 1) / stride) + 1
    return sorted({round(i * (n_frames - 1) / (count - 1)) for i in range(count)})


def resample(n_frames: int, stride: int, seed: int, step: int) -> list[int]:
    """One random keyframe inside each block of `stride` frames, drawn anew at every step.

    This is the reference implementation's choice; the paper's ablation finds it more temporally
    consistent than fixed keyframes. Seeded by (seed, step) alone, so every process draws alike.
    """
    rng = random.Random(f"tokenflow:{seed}:{step}")
    return [rng.randrange(start, min(start + stride, n_frames)) for start in range(0, n_frames, stride)]


def choose(mode: str, n_frames: int, stride: int, seed: int, step: int) -> list[int]:
    if mode == "fixed":
        return fixed(n_frames, stride)
    if mode == "resample":
        return resample(n_frames, stride, seed, step)
    raise ValueError(f"unknown keyframe mode {mode!r}")


@dataclass(frozen=True)
class FrameSource:
    """Where one frame's self-attention output comes from: keyframe positions a and b, a's weight.

    `exact` marks a frame that is itself keyframe `a`: it takes that keyframe's output unchanged,
    which is why propagated frames at keyframe indices equal the preview.
    """

    a: int
    b: int
    weight_a: float
    exact: bool = False


def sources(frames: list[int], keyframes: list[int]) -> list[FrameSource]:
    """For each frame, its two nearest keyframes (one at the ends) weighted linearly by distance."""
    out: list[FrameSource] = []
    for frame in frames:
        right = bisect.bisect_left(keyframes, frame)
        if right < len(keyframes) and keyframes[right] == frame:
            out.append(FrameSource(right, right, 1.0, exact=True))
        elif right == 0:
            out.append(FrameSource(0, 0, 1.0))
        elif right == len(keyframes):
            out.append(FrameSource(right - 1, right - 1, 1.0))
        else:
            left_frame, right_frame = keyframes[right - 1], keyframes[right]
            weight = (right_frame - frame) / (right_frame - left_frame)
            out.append(FrameSource(right - 1, right, weight))
    return out


def reference_sources(frames: list[int], keyframes: list[int], stride: int) -> list[FrameSource]:
    """The reference code's pairing (propagation "reference"), for parity with it.

    `keyframes` holds one keyframe per block of `stride` frames (resample mode). A frame in block i
    takes block i's keyframe and, past the first block, block i-1's, weighted
    sigmoid(d2 / (d1 + d2)) by its distances d1, d2 to the middles of blocks i and i-1 (so 0.5 to
    0.73, never the next block's keyframe). No frame is `exact`: the reference propagates the
    keyframes too, the keyframe pass only provides features.
    """
    out: list[FrameSource] = []
    for frame in frames:
        block = frame // stride
        if block >= len(keyframes):
            raise ValueError(f"frame {frame} is in block {block}, but there are {len(keyframes)} keyframes")
        if block == 0:
            out.append(FrameSource(0, 0, 1.0))
            continue
        d1 = abs(frame - (block * stride + stride // 2))
        d2 = abs(frame - ((block - 1) * stride + stride // 2))
        out.append(FrameSource(block, block - 1, 1.0 / (1.0 + math.exp(-d2 / (d1 + d2)))))
    return out


@dataclass(frozen=True)
class KeyframePass:
    """One UNet call of the keyframe pass: the keyframe positions it keeps and all it attends over."""

    owned: list[int]
    members: list[int]


def passes(n_keyframes: int, batch: int, anchors: int) -> list[KeyframePass]:
    """Split the keyframe pass so that its memory stays bounded for long shots.

    Up to `batch` keyframes go through together with full joint attention (the method as
    published). Beyond that, keyframes go in groups of `batch`; each group also carries its two
    temporal neighbours and `anchors` evenly spaced global keyframes as context, so every keyframe
    still attends across group borders and to the whole shot, at a cost linear in the keyframes.
    """
    everything = list(range(n_keyframes))
    if n_keyframes <= batch:
        return [KeyframePass(everything, everything)]
    spread = [round(i * (n_keyframes - 1) / max(anchors - 1, 1)) for i in range(anchors)] if anchors else []
    out = []
    for start in range(0, n_keyframes, batch):
        owned = everything[start : start + batch]
        context = {start - 1, start + batch, *spread}
        members = sorted(set(owned) | {p for p in context if 0 <= p < n_keyframes})
        out.append(KeyframePass(owned, members))
    return out


def tracked(mode: str, n_frames: int, stride: int, seed: int, steps: int, produce: range) -> list[int]:
    """The frames a run must carry through every step to produce the frames in `produce`.

    A keyframe's latent at a step is the propagated latent of that frame from the step before,
    so besides its own frames a run carries every frame that is a keyframe at some step: in
    `fixed` mode only the K keyframes, in `resample` mode every frame some step draws.
    """
    keys: set[int] = set()
    for step in range(steps if mode == "resample" else 1):
        keys.update(choose(mode, n_frames, stride, seed, step))
    return sorted(set(produce) | keys)
