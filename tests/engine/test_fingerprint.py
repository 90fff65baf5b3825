"""The model's identity (the inversion cache key's model part) covers every weight and config file.

Two models that differ only in one attention weight (a merged LoRA, a fine-tune) must not share
inversions; a file rewritten with the same bytes keeps the identity; digests are remembered by
(path, size, mtime, ctime, inode) and a damaged index is rebuilt, never trusted.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from engine.model import devices, loading
from engine.model.fingerprint import INDEX_NAME, DigestIndex, files_digest
from tests.engine.conftest import run_in_process
from tests.engine.model_edits import UNET_FILE, model_copy

ATTN = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"


def _nudge(tensor) -> None:
    tensor[0, 0] += 1e-3  # a fine-tune's worth of difference in one attention weight


@pytest.fixture(scope="module")
def two_models(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    a = model_copy(tiny_model_dir, root / "a")
    b = model_copy(tiny_model_dir, root / "b", UNET_FILE, ATTN, _nudge)
    return a, b


def test_one_attention_weight_changes_identity_and_cache_entries(two_models, city16, tmp_path):
    placement = devices.choose("cpu")
    a, b = (loading.load(str(p), placement) for p in two_models)
    index = tmp_path / "cache" / INDEX_NAME
    assert a.fingerprint(DigestIndex(index)) != b.fingerprint(DigestIndex(index))

    common = dict(frames=[str(f) for f in city16[:4]], prompt="a red car", cache_dir=str(tmp_path / "cache"))
    code, first = run_in_process(a, output=str(tmp_path / "a"), **common)
    assert code == 0, first.getvalue()
    code, second = run_in_process(b, output=str(tmp_path / "b"), **common)
    assert code == 0, second.getvalue()
    (done,) = second.events("done")
    assert done["stats"]["cache_hits"] == 0
    assert done["stats"]["cache_misses"] == 4
    assert done["stats"]["inversion_unet_frames"] == 4 * 3


def test_rewrite_with_same_bytes_keeps_identity_and_remembers(two_models, tmp_path):
    folder = model_copy(two_models[0], tmp_path / "m")
    files = loading.model_files(str(folder))
    names = {name for name, _ in files}
    assert {"model_index.json", UNET_FILE, "unet/config.json", "tokenizer/vocab.json"} <= names
    index_path = tmp_path / INDEX_NAME

    first = DigestIndex(index_path)
    identity = files_digest(files, first)
    assert first.hashed == len(files) and index_path.is_file()

    again = DigestIndex(index_path)  # a later run: every digest comes from the index
    assert files_digest(files, again) == identity
    assert again.hashed == 0

    unet = folder / UNET_FILE
    unet.write_bytes(unet.read_bytes())  # same content, new mtime
    rewritten = DigestIndex(index_path)
    assert files_digest(files, rewritten) == identity
    assert rewritten.hashed == 1  # only the rewritten file was read again

    # Same size, another weight, modification time put back: ctime still tells it changed.
    st = os.stat(unet)
    other = two_models[1] / UNET_FILE
    assert other.stat().st_size == st.st_size
    unet.write_bytes(other.read_bytes())
    os.utime(unet, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files_digest(files, DigestIndex(index_path)) != identity


def test_moved_model_folder_keeps_identity(two_models, tmp_path):
    moved = model_copy(two_models[0], tmp_path / "elsewhere" / "renamed")
    index = DigestIndex(None)
    assert files_digest(loading.model_files(str(moved)), index) == files_digest(
        loading.model_files(str(two_models[0])), index
    )


@pytest.mark.parametrize("damage", ["garbage", "forged"])
def test_damaged_index_is_rebuilt_not_trusted(two_models, tmp_path, damage):
    files = loading.model_files(str(two_models[0]))
    identity = files_digest(files, DigestIndex(None))
    index_path = tmp_path / INDEX_NAME
    files_digest(files, DigestIndex(index_path))
    if damage == "garbage":
        index_path.write_bytes(b"\x00{not json")
    else:  # another file's digest under this file's path, with a stale signature
        data = json.loads(index_path.read_text())
        for entry in data["files"].values():
            entry["digest"] = "0" * 64
            entry["stat"][1] -= 1
        index_path.write_text(json.dumps(data))
    index = DigestIndex(index_path)
    assert files_digest(files, index) == identity
    assert index.hashed == len(files)


def test_single_file_checkpoint_includes_config_folder(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    config = tmp_path / "config"
    (config / "unet").mkdir(parents=True)
    (config / "unet" / "config.json").write_text("{}")
    files = dict(loading.model_files(str(checkpoint), str(config)))
    assert files == {
        "checkpoint.safetensors": checkpoint,
        "config/unet/config.json": config / "unet" / "config.json",
    }
    before = files_digest(files.items(), DigestIndex(None))
    (config / "unet" / "config.json").write_text('{"cross_attention_dim": 1024}')
    assert files_digest(files.items(), DigestIndex(None)) != before


def test_hub_id_hashes_its_local_snapshot(two_models, tmp_path):
    """A hub id resolves offline to its snapshot folder (the layout huggingface_hub writes)."""
    repo = tmp_path / "hub" / "models--someone--tiny-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    model_copy(two_models[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub = loading.model_files("someone/tiny-sd", hub_cache=str(tmp_path / "hub"))
    local = loading.model_files(str(two_models[0]))
    assert [n for n, _ in hub] == [n for n, _ in local]
    assert files_digest(hub, DigestIndex(None)) == files_digest(local, DigestIndex(None))


def test_model_built_in_memory_hashes_every_tensor(model):
    base = dataclasses.replace(model, files=None, _identity="")
    identity = base.identity
    unet = base.unet
    weight = dict(unet.named_parameters())[ATTN]
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] += 1e-3
        assert dataclasses.replace(base, _identity="").identity != identity
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert dataclasses.replace(base, _identity="").identity == identity


def test_loaded_model_lists_its_files(tiny_model_dir, model):
    assert model.files is not None
    assert {n for n, _ in model.files} == {n for n, _ in loading.model_files(str(tiny_model_dir))}
    assert all(Path(p).is_file() for _, p in model.files)


def test_model_files_gone_after_load_fall_back_to_the_tensors(tiny_model_dir, tmp_path, caplog):
    folder = model_copy(tiny_model_dir, tmp_path / "m")
    loaded = loading.load(str(folder), devices.choose("cpu"))
    (folder / UNET_FILE).unlink()
    in_memory = dataclasses.replace(loaded, files=None, _identity="").identity
    assert loaded.fingerprint(DigestIndex(tmp_path / INDEX_NAME)) == in_memory
    assert any("loaded weights" in r.getMessage() for r in caplog.records)


def test_index_keeps_other_machines_entries_up_to_its_cap(tmp_path, monkeypatch):
    """A shared farm cache holds every worker's entries: a path missing here is not dropped."""
    from engine.model import fingerprint

    index_path = tmp_path / INDEX_NAME
    elsewhere = {"/another/machine/unet.safetensors": {"stat": [1, 2, 3, 4], "digest": "a" * 64}}
    index_path.write_text(json.dumps({"format": 1, "hash": fingerprint.HASH, "files": elsewhere}))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    files_digest([("w", weights)], DigestIndex(index_path))
    stored = json.loads(index_path.read_text())["files"]
    assert set(stored) == {*elsewhere, str(weights.resolve())}

    monkeypatch.setattr(fingerprint, "MAX_ENTRIES", 1)
    other = tmp_path / "v.bin"
    other.write_bytes(b"v")
    files_digest([("v", other)], DigestIndex(index_path))
    assert set(json.loads(index_path.read_text())["files"]) == {str(other.resolve())}  # the newest kept
