"""Model fingerprint benchmark (run by hand): hashing a checkpoint once vs the remembered digest.

Writes a file of random bytes the size of an SD checkpoint (default 2 GB), then, side by side in
one run and interleaved (`--repeat` rounds, fastest kept): a full read-and-hash with sha256 and with
blake2b (hashlib), and the engine's remembered lookup (`DigestIndex`: one stat and a JSON index
read). The file is read from the page cache (just written), so first-hash figures are the hash's
own speed; a cold read from disk adds the disk's time to both hashes alike. Prints the ratios and
writes JSON.

    .venvs/engine/bin/python bench/fingerprint_bench.py [--size-gb 2] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _hash(path: Path, name: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, name).hexdigest()


def _remembered(path: Path, index_path: Path) -> str:
    from engine.model.fingerprint import DigestIndex

    index = DigestIndex(index_path)  # a fresh process's view: the index is read from disk
    digest = index.digest(path)
    assert index.hashed == 0, "the remembered lookup re-hashed the file"
    return digest


def main() -> None:
    from engine.model.fingerprint import HASH, DigestIndex

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the test file is written")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fingerprint"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "checkpoint.safetensors"
        size = int(args.size_gb * 1024**3)
        block = os.urandom(64 * 1024**2)
        with open(path, "wb") as f:
            for start in range(0, size, len(block)):
                f.write(block[: min(len(block), size - start)])
        index_path = Path(tmp) / "file-digests.json"
        first = DigestIndex(index_path)
        first.digest(path)
        first.save()

        times: dict[str, list[float]] = {"sha256": [], "blake2b": [], "remembered": []}
        for _ in range(args.repeat):
            for name in ("sha256", "blake2b"):
                times[name].append(_timed(lambda n=name: _hash(path, n))[0])
            times["remembered"].append(_timed(lambda: _remembered(path, index_path))[0])
        best = {k: min(v) for k, v in times.items()}

    gb = size / 1024**3
    report = {
        "file_gb": round(gb, 3),
        "engine_hash": HASH,
        "seconds": {k: round(v, 6) for k, v in best.items()},
        "gb_per_second": {k: round(gb / best[k], 3) for k in ("sha256", "blake2b")},
        "ratios": {
            "blake2b_over_sha256": round(best["blake2b"] / best["sha256"], 3),
            "first_hash_over_remembered": round(best[HASH] / best["remembered"], 1),
        },
        "cpu": os.cpu_count(),
        "repeat": args.repeat,
    }
    for name in ("sha256", "blake2b"):
        print(f"first hash, {name}: {best[name]:.2f} s ({gb / best[name]:.2f} GB/s)")
    print(f"remembered lookup: {best['remembered'] * 1000:.2f} ms")
    print(f"blake2b / sha256 time: {report['ratios']['blake2b_over_sha256']}x")
    print(f"first hash ({HASH}) / remembered: {report['ratios']['first_hash_over_remembered']}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fingerprint_bench.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'fingerprint_bench.json'}")


if __name__ == "__main__":
    main()
