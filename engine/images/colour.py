"""Colour management through OpenColorIO: a plate's colour space to the model's sRGB and back.

The model was trained on display-referred sRGB images. A frame in another colour space (ACEScg,
Linear Rec.709, ...) is converted with the job's OCIO config into the config's own sRGB-encoded
Rec.709 space (found by comparing its candidates with OCIO's built-in sRGB, so no config version's
names are hard-coded), unclipped. The model sees that image clipped to [0, 1]; whatever lay outside
[0, 1] (highlights, negative values) is kept aside per pixel and added back to the edit before
the result is converted back to the source's colour space (see :func:`reapply_excess`).
Processors are built once per run and lossless (no fast power approximations).
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Iterable

import numpy as np
import PyOpenColorIO as OCIO

from ..errors import BadInput

# OCIO's built-in config defines the reference sRGB the working space is matched against.
REFERENCE_CONFIG = "ocio://default"
REFERENCE_SRGB = "sRGB - Texture"
# Roles that name an sRGB-encoded space in common configs (Blender's, ACES studio/cg), in the
# order they are tried; every colour space of the config is tried after them.
SRGB_ROLES = ("color_picking", "default_sequencer", "default_byte", "texture_paint", "matte_paint")
MATCH_TOLERANCE = 2e-3  # Blender 4.2's sRGB is a LUT: within 1e-4 of the reference


def _load_config(source: str) -> OCIO.Config:
    try:
        if source.startswith("ocio://"):
            return OCIO.Config.CreateFromBuiltinConfig(source)
        return OCIO.Config.CreateFromFile(source)
    except OCIO.Exception as exc:
        raise BadInput(f"the OCIO config {source} cannot be loaded ({exc}); check 'ocio_config'") from exc


def _candidates(config: OCIO.Config) -> Iterable[str]:
    for alias in ("srgb_rec709_scene", "sRGB"):
        space = config.getColorSpace(alias)
        if space is not None:
            yield space.getName()
    for role in SRGB_ROLES:
        if config.hasRole(role):
            yield config.getColorSpace(role).getName()
    yield from config.getColorSpaceNames()


def _matches_reference(config: OCIO.Config, name: str, reference: OCIO.Config) -> bool:
    ramp = np.linspace(0.0, 1.0, 33, dtype=np.float32)
    patch = np.stack([ramp, ramp[::-1], np.full_like(ramp, 0.5)], axis=-1)
    try:
        processor = OCIO.Config.GetProcessorFromConfigs(config, name, reference, REFERENCE_SRGB)
    except OCIO.Exception:
        return False
    out = patch.copy()
    processor.getDefaultCPUProcessor().applyRGB(out)
    return bool(np.abs(out - patch).max() <= MATCH_TOLERANCE)


def working_space(config: OCIO.Config, label: str) -> str:
    """The config's sRGB-encoded Rec.709 colour space, the model's working space."""
    reference = OCIO.Config.CreateFromBuiltinConfig(REFERENCE_CONFIG)
    seen: set[str] = set()
    for name in _candidates(config):
        if name in seen:
            continue
        seen.add(name)
        space = config.getColorSpace(name)
        if space is None or space.isData():
            continue
        if _matches_reference(config, name, reference):
            return name
    raise BadInput(
        f"the OCIO config {label} has no sRGB (sRGB-encoded Rec.709) colour space, which the model works "
        "in; use a config that has one (Blender's and the ACES configs do)"
    )


class Colour:
    """Conversions between the frames' colour space and the model's sRGB for one run."""

    def __init__(self, config_source: str, colorspace: str) -> None:
        config = _load_config(config_source)
        space = config.getColorSpace(colorspace)
        if space is None:
            names = list(config.getColorSpaceNames())
            near = difflib.get_close_matches(colorspace, names, n=4, cutoff=0.4) or names[:4]
            raise BadInput(
                f"the colour space '{colorspace}' is not in the OCIO config {config_source}; name one of "
                f"its colour spaces (e.g. {', '.join(near)}) or give the config the frames were made "
                "with ('ocio_config')"
            )
        self.config_source = config_source
        self.colorspace = space.getName()
        self.data = space.isData()  # Non-Color: the values go to the model as they are
        self.working = self.colorspace if self.data else working_space(config, config_source)
        forward = config.getProcessor(self.colorspace, self.working)
        backward = config.getProcessor(self.working, self.colorspace)
        self.identity = self.data or (forward.isNoOp() and backward.isNoOp())
        self._forward = forward.getOptimizedCPUProcessor(OCIO.OPTIMIZATION_LOSSLESS)
        self._backward = backward.getOptimizedCPUProcessor(OCIO.OPTIMIZATION_LOSSLESS)
        self.key = hashlib.sha256(  # what the inversion cache must tell apart (frames.Frame.cache_key)
            f"{config.getCacheID()}|{self.colorspace}|{self.working}".encode()
        ).hexdigest()

    def to_working(self, rgb: np.ndarray) -> np.ndarray:
        """Source colour space -> the working sRGB, unclipped (H x W x 3 float32, a new array)."""
        out = np.ascontiguousarray(rgb, dtype=np.float32).copy()
        if not self.identity:
            self._forward.applyRGB(out)
        return out

    def from_working(self, rgb: np.ndarray) -> np.ndarray:
        """Working sRGB -> the source colour space (a new array)."""
        out = np.ascontiguousarray(rgb, dtype=np.float32).copy()
        if not self.identity:
            self._backward.applyRGB(out)
        return out

    def describe(self) -> dict[str, str]:
        return {"ocio_config": self.config_source, "colorspace": self.colorspace, "working": self.working}


def model_input(working: np.ndarray) -> np.ndarray:
    """What the model sees: the working image clipped to the display range [0, 1]."""
    return np.clip(working, 0.0, 1.0)


def reapply_excess(edit: np.ndarray, working: np.ndarray) -> np.ndarray:
    """The edit (in [0, 1]) plus what the model could not see of the source: its values above 1 and
    below 0, per pixel and channel. A highlight the edit leaves alone comes back at its source value;
    one the edit changes keeps its excess on top of the change (in the working sRGB encoding)."""
    return edit + (working - np.clip(working, 0.0, 1.0))


def from_job(colorspace: str, ocio_config: str) -> Colour | None:
    """The run's colour conversions, or None for an empty colour space (frames are sRGB files).

    Refuses, before any heavy work, a colour space without a config and one the config lacks."""
    if not colorspace:
        return None
    source = ocio_config or os.environ.get("OCIO", "")
    if not source:
        raise BadInput(
            f"the frames' colour space is '{colorspace}' but no OCIO config defines it: set 'ocio_config' "
            "(--ocio-config) to the config's path (Blender's is datafiles/colormanagement/config.ocio) or "
            "the OCIO environment variable"
        )
    if not source.startswith("ocio://") and not os.path.isfile(source):
        raise BadInput(f"the OCIO config {source} does not exist; check 'ocio_config' or $OCIO")
    return Colour(source, colorspace)
