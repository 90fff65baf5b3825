"""The real CLIP tokenizer (49408 tokens) from the BPE list that ships in the open-clip-torch wheel.

transformers 5.x builds a useless tokenizer from `vocab_file=` paths (environment.md), so the files are
written here and loaded with `from_pretrained`, with CLIP's model_max_length of 77.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path


def _bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "open_clip is missing: pip install --no-deps open-clip-torch (see training/README.md)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def _byte_chars() -> list[str]:
    """CLIP's byte stand-ins in its vocabulary order: the printable bytes first, then the others."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def write_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt exactly as CLIP's (ids match OpenAI's tokenizer)."""
    with gzip.open(_bpe_path()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    chars = _byte_chars()
    vocab_list = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": 77,
                "tokenizer_class": "CLIPTokenizer",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        )
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )


def load_tokenizer(folder: Path):  # noqa: ANN201 - transformers' CLIPTokenizer
    """Write the files if needed and load them as SD's pipeline would."""
    from transformers import CLIPTokenizer

    if not (folder / "vocab.json").is_file():
        write_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    tokenizer.model_max_length = 77
    return tokenizer
