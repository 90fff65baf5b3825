"""Assemble farm chunks (propagate runs with a `frame_range`) into one result folder, atomically.

Every chunk recomputed the same keyframes, so their frames join without seams; the merge checks
that the chunks come from one job (same frames, model, prompts and settings), that their ranges
cover the shot exactly once, and that every file is there, before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..protocol import MANIFEST
from .outputs import Destination, refuse_existing, storage_error

# Job fields that may differ between chunks of one shot.
PER_CHUNK = {"output", "frame_range", "cache_dir", "device", "chunk_size", "evaluate", "extra"}


def _manifest(part: Path) -> dict[str, Any]:
    path = part / MANIFEST
    if not path.is_file():
        raise BadInput(f"{part} has no {MANIFEST}: it is not a finished chunk (run it again)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path} is not valid JSON ({exc}); run that chunk again") from exc


def merge(parts: list[str | os.PathLike[str]], output: str | os.PathLike[str]) -> dict[str, Any]:
    """Check the chunks, then write their frames into `output` (which must not exist)."""
    if not parts:
        raise BadInput("no chunk folders given to merge")
    dest = Path(output).expanduser().absolute()
    refuse_existing(dest)
    manifests = [(Path(p), _manifest(Path(p))) for p in parts]
    first = manifests[0][1]
    n = first.get("frame_count", len(first["sources"]))
    common = {k: v for k, v in first["job"].items() if k not in PER_CHUNK}
    for part, m in manifests:
        if m["stage"] != "propagate":
            raise BadInput(f"{part} is a {m['stage']} result, not a propagate chunk")
        mine = {k: v for k, v in m["job"].items() if k not in PER_CHUNK}
        if mine != common:
            differ = sorted(k for k in common if common.get(k) != mine.get(k))
            raise BadInput(
                f"{part} comes from another job (differs in: {', '.join(differ)}); merge chunks of one job"
            )
        for key in ("model_family", "working_size"):  # a worker whose model path held another model
            if m.get(key) != first.get(key):
                raise BadInput(
                    f"{part} was made with {key} {m.get(key)!r}, the first chunk with {first.get(key)!r}: "
                    "the workers read different models at the model's path; re-run it with the same model"
                )
        if m["keyframes"] != first["keyframes"]:
            raise BadInput(f"{part} used keyframes {m['keyframes']}, not {first['keyframes']}; re-run it")
    ordered = sorted(manifests, key=lambda pm: (pm[1]["frame_range"] or [0, n])[0])
    expected = 0
    for part, m in ordered:
        start, end = m["frame_range"] or [0, n]
        if start != expected:
            what = "overlaps" if start < expected else "leaves a gap before"
            raise BadInput(
                f"chunk {part} starts at frame {start}: it {what} frame {expected}; chunks must tile the shot"
            )
        expected = end
    if expected != n:
        raise BadInput(f"the chunks end at frame {expected} but the shot has {n} frames; a chunk is missing")
    for part, m in ordered:
        for name in m["files"]:
            if not (part / name).is_file():
                raise BadInput(f"{part / name} is missing; re-run that chunk")

    claimed = Destination(str(dest)).claim()  # locked, stale temporary folders of killed runs removed
    tmp = claimed.temp
    try:
        files: list[str] = []
        for part, m in ordered:
            for name in m["files"]:
                shutil.copy2(part / name, tmp / name)
                files.append(name)
        merged = {
            **first,
            "frame_range": None,
            "files": files,
            "indices": list(range(n)),
            "chunks": [str(p) for p, _ in ordered],
            # as the merge's `done` says: the first chunk's timings are not the shot's, and a farm
            # worker's speed is not the artist's machine's (Blender's estimate reads takes' stats)
            "stats": {"chunks": len(ordered)},
            "seconds": None,
            "metrics": None,
        }
        merged["job"] = {**first["job"], "output": str(dest), "frame_range": None}
        (tmp / MANIFEST).write_text(json.dumps(merged, indent=2))
        os.rename(tmp, dest)
    except OSError as exc:
        raise storage_error(exc, dest.parent, "write the merged result into") from exc
    finally:
        claimed.release()
    return {
        "output": str(dest),
        "files": [str(dest / f) for f in files],
        "keyframes": first["keyframes"],
        "indices": list(range(n)),
        "stats": {"chunks": len(ordered)},
        "metrics": None,
    }
