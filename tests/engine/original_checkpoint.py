"""Write a diffusers SD folder as one original-layout `.safetensors` checkpoint, for single-file tests.

The engine loads single files with diffusers' `from_single_file`, whose converters
(`diffusers/loaders/single_file_utils.py`) read CompVis LDM keys (SD 1.x / 2.x) and Stability's SGM
keys (SDXL). No such file of a tiny model exists, so this is their inverse: the exact-key tables are
diffusers' own `DIFFUSERS_TO_LDM_MAPPING` (the very tables the loader reads), the block layout is a
loop over the UNet's and VAE's configs, and `from_single_file(out, config=folder)` gives back every
tensor of the UNet, the VAE and the text encoder(s) exactly.

What is not an exact inverse, and why:
- SDXL is recognised as the base (`infer_diffusers_model_type` -> "xl_base") only by the bias of the
  OpenCLIP encoder's 10th block (bigG has 32). A smaller encoder gets that one tensor as a marker
  (zeros); diffusers' loader drops it, as no layer of the folder's encoder takes it.
- SD 2.x is recognised by cross-attention width 1024, so a narrower SD 2 file reads as "v1" to
  `infer_diffusers_model_type` (its OpenCLIP keys still make the engine and the loader treat it as SD 2).
- OpenCLIP's last block, which diffusers drops for SD 2, and its `logit_scale` / `attn_mask` are not
  in the folder, so they are not written; the SD 2 `text_projection` is not written for the same reason.
- diffusers picks SDXL's second-encoder converter by comparing the first encoder's width with the
  second's: equally wide encoders would load the first's weights into `text_encoder_2`, so the tiny
  SDXL's are 32 and 48 wide (SDXL's: 768 and 1280).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import load_file, save_file

from engine.model import family

# Leaf renames (whole dotted names) inside one block: diffusers -> original.
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# q/k/v are joined into `self_attn.in_proj_*` before these renames
OPEN_CLIP_BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "fc1": "c_fc",
    "fc2": "c_proj",
    "self_attn": "attn",
}

# The original files' top-level prefixes.
UNET, VAE = "model.diffusion_model.", "first_stage_model."
SD1_CLIP, SD2_OPEN_CLIP = "cond_stage_model.transformer.", "cond_stage_model.model."
SDXL_CLIP, SDXL_OPEN_CLIP = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
SDXL_BASE_MARKER = "transformer.resblocks.9.mlp.c_proj.bias"  # CHECKPOINT_KEY_NAMES["xl_base"], unprefixed

# (diffusers prefix, original prefix, leaf renames inside it)
Rule = tuple[str, str, dict[str, str]]
CONV_ATTENTION = ".mid.attn_1."  # LDM's VAE attention is 1x1 convs where diffusers has linears


def _unet_rules(config: dict) -> list[Rule]:
    """Where each UNet block goes in LDM's flat input / middle / output block lists."""
    per = config["layers_per_block"]
    rules: list[Rule] = [
        ("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET),
        ("mid_block.attentions.0.", "middle_block.1.", {}),
        ("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET),
    ]
    for b in range(len(config["down_block_types"])):
        first = 1 + b * (per + 1)  # input_blocks.0 is conv_in; each level: its resnets, a downsampler
        for j in range(per):
            rules.append((f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{first + j}.0.", UNET_RESNET))
            rules.append((f"down_blocks.{b}.attentions.{j}.", f"input_blocks.{first + j}.1.", {}))
        rules.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{first + per}.0.op.", {}))
    for b, block in enumerate(config["up_block_types"]):
        first = b * (per + 1)
        for j in range(per + 1):
            rules.append((f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{first + j}.0.", UNET_RESNET))
            rules.append((f"up_blocks.{b}.attentions.{j}.", f"output_blocks.{first + j}.1.", {}))
        slot = 2 if "CrossAttn" in block else 1  # the upsampler follows the last resnet (and attention)
        rules.append((f"up_blocks.{b}.upsamplers.0.", f"output_blocks.{first + per}.{slot}.", {}))
    return rules


def _vae_rules(config: dict) -> list[Rule]:
    """The VAE's blocks: LDM numbers the decoder's up blocks from the bottom, diffusers from the top."""
    rules: list[Rule] = []
    for part in ("encoder", "decoder"):
        for k in range(2):
            rules.append((f"{part}.mid_block.resnets.{k}.", f"{part}.mid.block_{k + 1}.", VAE_RESNET))
        rules.append((f"{part}.mid_block.attentions.0.", f"{part}{CONV_ATTENTION}", VAE_ATTENTION))
    for i in range(len(config["down_block_types"])):
        rules.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", VAE_RESNET))
        rules.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", {}))
    n = len(config["up_block_types"])
    for i in range(n):
        rules.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.", VAE_RESNET))
        rules.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.", {}))
    return rules


def _rename(
    state: dict[str, torch.Tensor], exact: dict[str, str], rules: list[Rule], out_prefix: str
) -> dict[str, torch.Tensor]:
    """Every tensor of `state` under its original name; one no table names is an error, never dropped
    (a diffusers layer this does not know would otherwise vanish from the file unnoticed)."""
    out = {}
    for key, tensor in state.items():
        if key in exact:
            out[out_prefix + exact[key]] = tensor
            continue
        rule = max((r for r in rules if key.startswith(r[0])), key=lambda r: len(r[0]), default=None)
        if rule is None:
            raise ValueError(f"no original-layout name for the diffusers tensor {key!r}")
        old, new, leaves = rule
        rest = "." + key[len(old) :]
        for a, b in leaves.items():
            rest = rest.replace(f".{a}.", f".{b}.")
        if new.endswith(CONV_ATTENTION) and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[out_prefix + new + rest[1:]] = tensor
    return out


def _load(folder: Path) -> dict[str, torch.Tensor]:
    """A component's tensors (all its safetensors shards)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def _hf_clip(folder: Path) -> dict[str, torch.Tensor]:
    """A CLIP text encoder's tensors named as the original files do (transformers 5 saves
    CLIPTextModel without the `text_model.` its keys had, and still had in SD checkpoints)."""
    state = _load(folder)
    keep = ("text_model.", "text_projection.")
    return {(k if k.startswith(keep) else f"text_model.{k}"): v for k, v in state.items()}


def _open_clip(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP's names: q/k/v as one `in_proj`, the projection as a matrix applied from the right."""
    state = _hf_clip(folder)
    layers = "text_model.encoder.layers."
    for key in [k for k in state if k.startswith(layers) and ".self_attn.q_proj." in k]:
        block, leaf = key.split(".q_proj.")  # leaf: weight / bias
        parts = [state.pop(f"{block}.{p}_proj.{leaf}") for p in "qkv"]
        state[f"{block}.in_proj_{leaf}"] = torch.cat(parts)
    if "text_projection.weight" in state:
        state["text_projection.weight"] = state["text_projection.weight"].T.contiguous()
    exact = DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]
    return _rename(state, exact, [(layers, "transformer.resblocks.", OPEN_CLIP_BLOCK)], prefix)


def layout(folder: Path) -> str:
    """The file layout for a folder: SGM with two embedders ("sdxl"), LDM with OpenCLIP ("sd2") or with
    CLIP ("sd1"), by the engine's reading of the folder's family."""
    found = family.from_folder(str(folder), folder)
    assert found is not None, f"{folder} has no unet/config.json"
    return found.name


def write_original_checkpoint(folder: Path, out: Path) -> Path:
    """Write `folder` (an SD 1.x, SD 2.x or SDXL diffusers folder) as one original-layout file at `out`."""
    folder, out = Path(folder), Path(out)
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    name = layout(folder)
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    unet_tables = DIFFUSERS_TO_LDM_MAPPING["unet"]
    unet_exact = dict(unet_tables["layers"])
    if unet_config.get("addition_embed_type") == "text_time":  # SDXL's pooled text + size embedding
        unet_exact |= unet_tables["addition_embed_type"]
    if unet_config.get("class_embed_type") in ("timestep", "projection"):
        unet_exact |= unet_tables["class_embed_type"]
    tensors = _rename(_load(folder / "unet"), unet_exact, _unet_rules(unet_config), UNET)
    tensors |= _rename(_load(folder / "vae"), DIFFUSERS_TO_LDM_MAPPING["vae"], _vae_rules(vae_config), VAE)
    if name == "sdxl":
        tensors |= {SDXL_CLIP + k: v for k, v in _hf_clip(folder / "text_encoder").items()}
        tensors |= _open_clip(folder / "text_encoder_2", SDXL_OPEN_CLIP)
        if SDXL_OPEN_CLIP + SDXL_BASE_MARKER not in tensors:
            width = tensors[SDXL_OPEN_CLIP + "ln_final.bias"].shape[0]
            tensors[SDXL_OPEN_CLIP + SDXL_BASE_MARKER] = torch.zeros(width)
    elif name == "sd2":
        tensors |= _open_clip(folder / "text_encoder", SD2_OPEN_CLIP)
    else:
        tensors |= {SD1_CLIP + k: v for k, v in _hf_clip(folder / "text_encoder").items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata={"format": "pt"})
    return out
