"""farm/ocio_share.py: Blender's bundled OCIO config copied to shared storage for farm workers, checked
before use, rebuilt when damaged, and never left half-copied (plain Python, no bpy in it)."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import MODULE


@pytest.fixture
def share(ext) -> Any:
    return sys.modules[f"{MODULE}.tokenflow_blender.farm.ocio_share"]


def _config(root: Path) -> Path:
    """A config folder shaped like Blender's: config.ocio and LUT folders it searches."""
    (root / "luts").mkdir(parents=True)
    (root / "filmic").mkdir()
    (root / "config.ocio").write_text('ocio_profile_version: 2\nsearch_path: "luts:filmic"\n')
    (root / "luts" / "a.spi1d").write_bytes(os.urandom(4096))
    (root / "filmic" / "b.spi3d").write_bytes(os.urandom(9000))
    return root / "config.ocio"


def _same_tree(a: Path, b: Path) -> bool:
    files = lambda r: {p.relative_to(r): p.read_bytes() for p in r.rglob("*") if p.is_file()}  # noqa: E731
    ours = {k: v for k, v in files(b).items() if not k.name.startswith(".")}
    return files(a) == ours


def test_copied_once_and_reused(share, tmp_path) -> None:
    config = _config(tmp_path / "blender" / "colormanagement")
    home = tmp_path / "shared" / share.FOLDER
    first = Path(share.share(str(config), str(home)))
    assert first.name == "config.ocio" and first.parent.parent == home
    assert _same_tree(config.parent, first.parent)
    stamp = (first.parent / "luts" / "a.spi1d").stat().st_mtime_ns
    assert Path(share.share(str(config), str(home))) == first  # the same Blender: the same copy
    assert (first.parent / "luts" / "a.spi1d").stat().st_mtime_ns == stamp, "an intact copy is not redone"
    assert sorted(p.name for p in home.iterdir()) == [first.parent.name], "no temporary folder is left"


def test_another_config_gets_its_own_copy(share, tmp_path) -> None:
    config = _config(tmp_path / "blender" / "colormanagement")
    home = tmp_path / "shared"
    first = Path(share.share(str(config), str(home)))
    (config.parent / "luts" / "a.spi1d").write_bytes(b"another Blender's LUT")
    second = Path(share.share(str(config), str(home)))
    assert second != first and (second.parent / "luts" / "a.spi1d").read_bytes() == b"another Blender's LUT"
    assert (first.parent / "luts" / "a.spi1d").read_bytes() != b"another Blender's LUT"


@pytest.mark.parametrize("damage", ["truncated", "missing", "no listing", "extra file"])
def test_a_damaged_copy_is_detected_and_rebuilt(share, tmp_path, damage) -> None:
    config = _config(tmp_path / "blender" / "colormanagement")
    home = tmp_path / "shared"
    copy = Path(share.share(str(config), str(home))).parent
    lut = copy / "filmic" / "b.spi3d"
    if damage == "truncated":
        lut.write_bytes(lut.read_bytes()[:100])
    elif damage == "missing":
        lut.unlink()
    elif damage == "no listing":  # a copy killed before its listing was written
        (copy / share.LISTING).unlink()
    else:
        (copy / "luts" / "stray.spi1d").write_bytes(b"x")
    assert not share.intact(str(copy), share.listing(str(config.parent)))
    again = Path(share.share(str(config), str(home))).parent
    assert again == copy and _same_tree(config.parent, copy)
    assert share.intact(str(copy), share.listing(str(config.parent)))
    assert sorted(p.name for p in home.iterdir()) == [copy.name], "the damaged copy is gone, not kept aside"


def test_a_full_disk_leaves_no_partial_copy(share, tmp_path, monkeypatch) -> None:
    config = _config(tmp_path / "blender" / "colormanagement")
    home = tmp_path / "shared"
    real = share.shutil.copyfile
    calls = []

    def full(src: str, dst: str) -> str:
        calls.append(src)
        if len(calls) == 2:  # the disk fills up half-way through
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)
        return real(src, dst)

    monkeypatch.setattr(share.shutil, "copyfile", full)
    with pytest.raises(share.ShareError) as caught:
        share.share(str(config), str(home))
    message = str(caught.value)
    assert "No space left on device" in message and str(home) in message
    assert "writable shared storage" in message
    assert list(home.iterdir()) == [], "nothing half-copied under any name"


def test_a_killed_submissions_leftovers_are_removed_once_old(share, tmp_path) -> None:
    config = _config(tmp_path / "blender" / "colormanagement")
    home = tmp_path / "shared"
    old, young = home / ".partial-killed", home / ".partial-in-progress"
    for folder in (old, young):
        (folder / "luts").mkdir(parents=True)
        (folder / "luts" / "a.spi1d").write_bytes(b"half")
    hour_ago = os.path.getmtime(young) - share.LEFTOVER_AGE - 1
    os.utime(old, (hour_ago, hour_ago))
    copy = Path(share.share(str(config), str(home))).parent
    assert sorted(p.name for p in home.iterdir()) == sorted([copy.name, young.name])


def test_share_job_rewrites_only_the_config(share, tmp_path) -> None:
    config = _config(tmp_path / "blender" / "colormanagement")
    text = json.dumps({"frames": ["/s/a.png"], "ocio_config": str(config), "colorspace": "sRGB"})
    assert share.share_job(text, "") == text  # a studio config ($OCIO) is already shared
    job = json.loads(share.share_job(text, str(tmp_path / "shared")))
    assert job["frames"] == ["/s/a.png"] and job["colorspace"] == "sRGB"
    assert Path(job["ocio_config"]).read_bytes() == config.read_bytes()
    assert Path(job["ocio_config"]).parent.parent == tmp_path / "shared"


def test_is_bundled(share, tmp_path) -> None:
    local = tmp_path / "blender" / "4.2"
    config = local / "datafiles" / "colormanagement" / "config.ocio"
    assert share.is_bundled(str(config), str(local))
    assert not share.is_bundled("/studio/ocio/aces/config.ocio", str(local))
    assert not share.is_bundled(str(tmp_path / "blender" / "4.2-other" / "config.ocio"), str(local))
    assert not share.is_bundled("ocio://default", str(local)) and not share.is_bundled("", str(local))
