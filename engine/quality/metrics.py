"""How good is an edit: temporal consistency, motion, flicker, structure and (optionally) prompt fidelity.

Pure functions on numpy frames: RGB, H x W x 3, either uint8 (0-255) or float (0-1, scikit-image's
convention). Colour figures are reported on a 0-255 scale, motion figures in pixels.

Temporal consistency follows the TokenFlow paper: the optical flow of the *source* shot says where
every pixel goes; an edit that moves with the source leaves a small error after warping frame i onto
frame i+1 with that flow. The paper uses a learned flow (RAFT); OpenCV's DIS flow is the weight-free
stand-in. The same figure on the source itself is the floor (the flow's own residual).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from skimage.color import rgb2gray
from skimage.filters import sobel
from skimage.metrics import structural_similarity
from skimage.util import img_as_float32, img_as_ubyte

# Forward-backward consistency (Sundaram et al. 2010, as in Ruder et al.'s video style transfer): a
# pixel is trusted when |f(x + b(x)) + b(x)|^2 <= ALPHA * (|f|^2 + |b|^2) + BETA.
CONSISTENCY_ALPHA = 0.01
CONSISTENCY_BETA = 0.5
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
CLIP_BATCH = 8


# --- conversions ---------------------------------------------------------------------------
def to_unit(frame: np.ndarray) -> np.ndarray:
    """The frame as float32 in [0, 1], whatever its dtype, so every metric sees one scale."""
    return img_as_float32(frame)


def to_gray_u8(frame: np.ndarray) -> np.ndarray:
    """8-bit luma: what DIS optical flow takes."""
    return img_as_ubyte(np.clip(rgb2gray(to_unit(frame)), 0.0, 1.0))


# --- optical flow --------------------------------------------------------------------------
def dis_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Flow from frame a to frame b (H x W x 2, pixels): a(x) matches b(x + flow(x)).

    DIS (MEDIUM preset) is a classical, deterministic flow that needs no downloaded weights.
    """
    dis = cv2.DISOpticalFlow_create(DIS_PRESET)
    return dis.calc(to_gray_u8(a), to_gray_u8(b), None)


def sample_points(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute sampling coordinates x + flow(x), as the float32 maps cv2.remap takes."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `image` at x + flow(x) (bilinear): with the flow from frame i+1 to frame i, this
    carries frame i onto frame i+1."""
    map_x, map_y = sample_points(flow)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def inside_mask(flow: np.ndarray) -> np.ndarray:
    """Pixels whose flow lands inside the frame: the others have nothing to be compared with."""
    h, w = flow.shape[:2]
    map_x, map_y = sample_points(flow)
    return (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)


def consistency_mask(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Where the flow can be trusted (bool, in the frame `backward` starts from).

    Occluded, disoccluded and badly matched pixels fail the forward-backward check: following the
    backward flow and then the forward flow does not come back to the start.
    """
    forward_there = warp(forward, backward)
    round_trip = np.sum((forward_there + backward) ** 2, axis=-1)
    magnitudes = np.sum(forward_there**2, axis=-1) + np.sum(backward**2, axis=-1)
    tolerance = CONSISTENCY_ALPHA * magnitudes + CONSISTENCY_BETA
    return (round_trip <= tolerance) & inside_mask(backward)


@dataclass(frozen=True)
class SourceMotion:
    """The source's motion between frames i and i+1, in the coordinates of frame i+1."""

    backward: np.ndarray  # flow from frame i+1 to frame i
    mask: np.ndarray  # bool: where that flow passed the consistency check


def source_motion(frame: np.ndarray, next_frame: np.ndarray) -> SourceMotion:
    """Flow both ways between two source frames, and where it is trustworthy."""
    backward = dis_flow(next_frame, frame)
    forward = dis_flow(frame, next_frame)
    return SourceMotion(backward, consistency_mask(backward, forward))


# --- per-pair and per-frame figures ----------------------------------------------------------
def masked_abs_error(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean |a - b| over the masked pixels and all channels, 0-255 scale (NaN if nothing is masked)."""
    if not mask.any():
        return float("nan")
    return float(np.abs(to_unit(a) - to_unit(b))[mask].mean() * 255.0)


def warp_error(frame: np.ndarray, next_frame: np.ndarray, motion: SourceMotion) -> float:
    """How far frame i, carried along the source's motion, is from frame i+1 (0-255).

    Low when the edit moves with the source; flicker, popping textures and jumps raise it.
    """
    return masked_abs_error(warp(to_unit(frame), motion.backward), next_frame, motion.mask)


def endpoint_error(flow_a: np.ndarray, flow_b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean Euclidean distance between two flow fields, in pixels (over `mask` if given)."""
    distance = np.linalg.norm(flow_a - flow_b, axis=-1)
    if mask is None:
        return float(distance.mean())
    return float(distance[mask].mean()) if mask.any() else float("nan")


def motion_error(frame: np.ndarray, next_frame: np.ndarray, motion: SourceMotion) -> float:
    """How differently the edit moves from the source: end-point error between the edit's own flow
    and the source's flow, in pixels, where the source's flow is trusted."""
    return endpoint_error(dis_flow(next_frame, frame), motion.backward, motion.mask)


def mean_colour(frame: np.ndarray) -> np.ndarray:
    """The frame's mean R, G, B on a 0-255 scale."""
    return to_unit(frame).reshape(-1, 3).mean(axis=0) * 255.0


def colour_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute change of the mean colour between two frames (0-255): global flicker."""
    return float(np.abs(mean_colour(b) - mean_colour(a)).mean())


def edge_map(frame: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the luma, in [0, 1]: the layout of the picture without its colours,
    so that a style edit that keeps the shapes scores high."""
    return sobel(rgb2gray(to_unit(frame)))


def structure_ssim(source: np.ndarray, edited: np.ndarray) -> float:
    """SSIM between the edge maps of a source frame and its edit: 1 = same structure."""
    if source.shape != edited.shape:
        raise ValueError(f"frame shapes differ: {source.shape} and {edited.shape}")
    return float(structural_similarity(edge_map(source), edge_map(edited), data_range=1.0))


# --- a whole shot ----------------------------------------------------------------------------
@dataclass
class ShotFigures:
    """Per-frame figures of a shot (pair lists hold one value per pair i, i+1)."""

    structure_ssim: list[float] = field(default_factory=list)
    warp_error: list[float] = field(default_factory=list)
    warp_error_source: list[float] = field(default_factory=list)
    motion_error: list[float] = field(default_factory=list)
    flicker: list[float] = field(default_factory=list)
    flicker_source: list[float] = field(default_factory=list)
    flicker_excess: list[float] = field(default_factory=list)


def measure_pair(
    source: tuple[np.ndarray, np.ndarray], edited: tuple[np.ndarray, np.ndarray]
) -> dict[str, float]:
    """The temporal figures of one step i -> i+1, edited against source."""
    motion = source_motion(*source)
    change_edit = mean_colour(edited[1]) - mean_colour(edited[0])
    change_source = mean_colour(source[1]) - mean_colour(source[0])
    return {
        "warp_error": warp_error(*edited, motion),
        "warp_error_source": warp_error(*source, motion),
        "motion_error": motion_error(*edited, motion),
        "flicker": float(np.abs(change_edit).mean()),
        "flicker_source": float(np.abs(change_source).mean()),
        # the part of the edit's colour change that the source does not have (lighting changes cancel)
        "flicker_excess": float(np.abs(change_edit - change_source).mean()),
    }


def measure_shot(
    source: Iterable[np.ndarray],
    edited: Iterable[np.ndarray],
    on_frame: Callable[[int], None] | None = None,
) -> ShotFigures:
    """Every figure of a shot. Frames are consumed one at a time (generators keep memory flat);
    `on_frame(i)` is called after frame i, e.g. to report progress or to cancel by raising."""
    figures = ShotFigures()
    previous: tuple[np.ndarray, np.ndarray] | None = None
    for i, (src, edit) in enumerate(zip(source, edited, strict=True)):
        figures.structure_ssim.append(structure_ssim(src, edit))
        if previous is not None:
            for key, value in measure_pair((previous[0], src), (previous[1], edit)).items():
                getattr(figures, key).append(value)
        previous = (src, edit)
        if on_frame is not None:
            on_frame(i)
    return figures


def shot_mean(values: Sequence[float]) -> float | None:
    """Mean over the shot ignoring NaN pairs (nothing trustworthy to compare); None if no value."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


# --- text fidelity (needs a local CLIP model) ------------------------------------------------
def clip_scores(frames: Iterable[np.ndarray], prompt: str, model_dir: str | Path) -> list[float]:
    """Cosine similarity between each frame and the prompt under a local CLIP model (higher = closer
    to the prompt; about 0.2-0.35 for real CLIP ViT-B models on matching images).

    Only a local folder is read (local_files_only): weights are never downloaded.
    """
    import torch
    from transformers import CLIPModel, CLIPProcessor

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a CLIP model folder (no config.json); give a folder saved with "
            "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained, e.g. a downloaded "
            "openai/clip-vit-base-patch32 snapshot"
        )
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        text = processor(text=[prompt], return_tensors="pt", padding=True, truncation=True)
        text_embed = torch.nn.functional.normalize(_embedding(model.get_text_features(**text)), dim=-1)
        scores: list[float] = []
        for batch in _batches(frames, CLIP_BATCH):
            pixels = processor(images=[img_as_ubyte(to_unit(f)) for f in batch], return_tensors="pt")
            image_embed = _embedding(model.get_image_features(pixel_values=pixels["pixel_values"]))
            image_embed = torch.nn.functional.normalize(image_embed, dim=-1)
            scores.extend((image_embed @ text_embed.T)[:, 0].tolist())
    return scores


def _embedding(output):
    """get_*_features returns a tensor in transformers 4 and an output object in 5."""
    return output if hasattr(output, "shape") else output.pooler_output


def _batches(items: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
