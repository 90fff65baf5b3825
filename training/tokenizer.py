"""The real CLIP tokenizer (49408 tokens) from the BPE list that ships in the open-clip-torch wheel.

transformers 5.x builds a useless tokenizer from `vocab_file=` paths (shared/reference/environment.md),
so the files are written here and loaded with `from_pretrained`, with CLIP's model_max_length of 77.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from engine.model.tiny_model import write_clip_tokenizer


def _bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "open_clip is missing: pip install --no-deps open-clip-torch (see training/README.md)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def write_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt exactly as CLIP's (ids match OpenAI's tokenizer)."""
    with gzip.open(_bpe_path()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    write_clip_tokenizer(folder, [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]])


def load_tokenizer(folder: Path):  # noqa: ANN201 - transformers' CLIPTokenizer
    """Write the files if needed and load them as SD's pipeline would."""
    from transformers import CLIPTokenizer

    if not (folder / "vocab.json").is_file():
        write_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    tokenizer.model_max_length = 77
    return tokenizer
