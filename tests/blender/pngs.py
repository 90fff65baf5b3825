"""Tiny image files written with the standard library (the bpy venvs have no PIL / OpenCV)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def write_png(
    path: Path,
    width: int,
    height: int,
    rgb: tuple[int, int, int] = (128, 64, 32),
    depth: int = 8,
    corner: tuple[int, int, int] | None = None,
) -> Path:
    """A flat-colour RGB PNG of the given size and bit depth (8 or 16); `corner` colours the
    top-right pixel (the last one in Blender's bottom-up order) differently."""

    def px(c: tuple[int, int, int]) -> bytes:
        return b"".join(struct.pack(">H", v * 257) for v in c) if depth == 16 else bytes(c)

    pixel = px(rgb)
    rows = [pixel * width for _ in range(height)]
    if corner is not None:
        rows[0] = pixel * (width - 1) + px(corner)
    raw = b"".join(b"\x00" + row for row in rows)

    return _write(path, struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0), raw)


def write_sequence(
    folder: Path, count: int, width: int = 32, height: int = 24, stem: str = "img"
) -> list[Path]:
    """`count` PNG frames named stem_0001.png ... with slightly different colours."""
    return [
        write_png(folder / f"{stem}_{i + 1:04d}.png", width, height, (i * 10 % 256, 80, 160))
        for i in range(count)
    ]


def write_split(path: Path, width: int, height: int, white_columns: int) -> Path:
    """An 8-bit grey PNG: white in the left `white_columns` columns, black elsewhere (a matte)."""
    row = b"\x00" + b"\xff" * white_columns + b"\x00" * (width - white_columns)
    return _write(path, struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0), row * height)


def _write(path: Path, ihdr: bytes, raw: bytes) -> Path:
    """A PNG file of one IHDR and one IDAT (`raw`: filter byte + row, for every row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path
