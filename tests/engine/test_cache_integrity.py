"""A damaged inversion cache entry is detected on read, deleted and recomputed, never used.

Each fault is made on a real entry written by a run: NaN values, bytes damaged behind an intact
safetensors header, a tensor of the wrong shape or dtype, a truncated file, a 0-byte file.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.method.inversion import _read_entry, checksum
from tests.engine.conftest import run_in_process

STEPS = 3


@pytest.fixture(scope="module")
def filled_cache(model, city16, tmp_path_factory):
    """A cache folder filled by one run over 4 frames, and the frames."""
    root = tmp_path_factory.mktemp("filled")
    frames = [str(f) for f in city16[:4]]
    code, events = run_in_process(
        model, frames=frames, output=str(root / "out"), prompt="a red car", cache_dir=str(root / "cache")
    )
    assert code == 0, events.getvalue()
    return root / "cache", frames


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        names = f.keys()
        return {k: f.get_tensor(k).clone() for k in names}, f.metadata()


def _resave(path: Path, latents: torch.Tensor, honest_checksum: bool) -> None:
    """Rewrite the entry with other latents; an honest checksum isolates the check under test."""
    tensors, metadata = _load(path)
    tensors["latents"] = latents.contiguous()
    if honest_checksum:
        metadata["checksum"] = checksum(latents)
    save_file(tensors, str(path), metadata=metadata)


def _damage(path: Path, fault: str) -> None:
    data = path.read_bytes()
    latents = _load(path)[0]["latents"]
    if fault == "nan":
        bad = latents.clone()
        bad[1, 2, 3, 4] = float("nan")
        _resave(path, bad, honest_checksum=True)
    elif fault == "bytes":  # the header stays intact; low mantissa bytes change: finite, wrong values
        header = 8 + int.from_bytes(data[:8], "little")
        damaged = bytearray(data)
        middle = header + (len(data) - header) // 8 * 4
        for k in range(8):
            damaged[middle + 4 * k] ^= 0x5A
        path.write_bytes(bytes(damaged))
    elif fault == "shape":
        _resave(path, latents[:, :, :-1].clone(), honest_checksum=True)
    elif fault == "dtype":
        _resave(path, latents.half(), honest_checksum=True)
    elif fault == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "no-checksum":  # an entry that never had one (an older or foreign writer)
        tensors, metadata = _load(path)
        metadata.pop("checksum")
        save_file(tensors, str(path), metadata=metadata)
    else:
        raise AssertionError(fault)


REASONS = {  # the check that must catch each fault, as the warning names it
    "nan": "non-finite",
    "bytes": "checksum",
    "shape": "shape",
    "dtype": "dtype",
    "truncated": "unreadable",
    "empty": "unreadable",
    "no-checksum": "checksum",
}


@pytest.mark.parametrize("fault", list(REASONS))
def test_bad_entry_is_deleted_and_recomputed(model, filled_cache, tmp_path, caplog, fault):
    source, frames = filled_cache
    cache = tmp_path / "cache"
    shutil.copytree(source, cache)
    entries = sorted(cache.glob("*/*.safetensors"))
    assert len(entries) == 4
    victim = entries[1]
    good = _load(victim)[0]["latents"]
    _damage(victim, fault)

    with caplog.at_level(logging.WARNING, logger="engine"):
        code, events = run_in_process(
            model, frames=frames, output=str(tmp_path / "out"), prompt="a blue car", cache_dir=str(cache)
        )
    assert code == 0, events.getvalue()
    (done,) = events.events("done")
    stats = done["stats"]
    assert stats["cache_rejected"] == 1
    assert stats["cache_hits"] == 3 and stats["cache_misses"] == 1
    assert stats["inversion_unet_frames"] == STEPS  # that frame alone was inverted again
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and str(victim) in r.getMessage()]
    assert len(warnings) == 1 and "recomputed" in warnings[0].getMessage()
    assert REASONS[fault] in warnings[0].getMessage()

    timesteps = _load(entries[0])[0]["timesteps"].tolist()
    replacement = _read_entry(victim, timesteps, tuple(good.shape))  # raises if the new entry is bad
    assert torch.allclose(replacement, good, atol=1e-4)
