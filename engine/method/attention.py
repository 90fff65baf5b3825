"""TokenFlow's self-attention, as a diffusers attention processor, plus PnP residual injection.

Installed through diffusers' public extension points (`UNet2DConditionModel.set_attn_processor`)
and torch forward hooks; no diffusers internals are patched. Every UNet call in an edit sees
three copies of its frames, stacked on the batch axis: [source, edit with the negative prompt,
edit with the prompt]; in the steps where nothing reads the source copy (no injection, and no
field to search: see `TokenFlowState.copies`) only the two edit copies. One
:class:`TokenFlowState` tells all processors what the current call is:

- ``plain``: ordinary attention (inversion, decoding-free passes).
- ``keyframe``: the keyframes. Edit copies attend jointly to the keys/values of all keyframes
  (extended attention); the source copy attends per frame. Outputs and source input tokens are kept.
- ``propagate``: a chunk of frames. Self-attention is not computed: each frame takes the kept
  keyframe outputs at the nearest-neighbour positions of its source tokens, blended between its
  two nearest keyframes.
- ``per_frame``: per-frame PnP (no TokenFlow), the baseline the benchmarks compare against.

PnP injection copies the source copy's self-attention queries/keys (chosen layers, first steps)
and residual features (chosen ResNet, first steps) into the two edit copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .keyframes import FrameSource
from .matching import MatchOptions, nearest_tokens, reduce, unit

COPIES = 3  # source, negative, prompt
EDIT_COPIES = 2  # negative, prompt: a step that needs nothing from the source copy
# The reference implementation's PnP layers (SD's decoder).
DEFAULT_QK_LAYERS = (
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.2",
    "up_blocks.2.attentions.0",
    "up_blocks.2.attentions.1",
    "up_blocks.2.attentions.2",
    "up_blocks.3.attentions.0",
    "up_blocks.3.attentions.1",
    "up_blocks.3.attentions.2",
)
DEFAULT_CONV_LAYERS = ("up_blocks.1.resnets.1",)
# SDXL's decoder has three levels (latent/4 with 10 transformer layers per block, latent/2 with 2,
# the full latent size without attention). The reference's choice mapped by resolution: the residual
# of the second ResNet of the first decoder level with attention (latent/4 in both), and queries/keys
# of every decoder attention block after the first. Chosen from bench/sdxl_layer_probe.py's figures:
# docs/engine.md, "PnP layers".
SDXL_QK_LAYERS = (
    "up_blocks.0.attentions.1",
    "up_blocks.0.attentions.2",
    "up_blocks.1.attentions.0",
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.2",
)
SDXL_CONV_LAYERS = ("up_blocks.0.resnets.1",)
MODES = ("plain", "keyframe", "propagate", "per_frame")


@dataclass
class TokenFlowState:
    """Shared by all processors and hooks of one UNet: what the current call is and what was kept."""

    mode: str = "plain"
    step: int = 0
    copies: int = COPIES  # this step's copies per frame: COPIES, or EDIT_COPIES without the source
    inject_qk: bool = False
    inject_conv: bool = False
    # Where kept keyframe features live; the CPU keeps device memory flat for many keyframes.
    store_device: torch.device | None = None
    keyframe_tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # (K, S, D or dims), unit
    keyframe_outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # (3, K, S, D)
    plan: list[FrameSource] = field(default_factory=list)  # the current chunk's frames
    # The shot indices of the current chunk's frames and of this step's keyframes: a field is
    # remembered by (scope, frame, keyframe), so a reused field is never the wrong pair's.
    chunk_frames: list[int] = field(default_factory=list)
    keyframe_frames: list[int] = field(default_factory=list)
    n_keyframes: int = 0
    match: MatchOptions = field(default_factory=MatchOptions)
    reuse_from: int | None = None  # the first step that reuses the step before's fields
    fields: dict[tuple[object, int, int], torch.Tensor] = field(default_factory=dict)
    searches: int = 0  # nearest-neighbour searches run (a field reused is not one)
    owned: list[tuple[int, int]] = field(default_factory=list)
    injections: set[tuple[int, str]] = field(default_factory=set)  # (step, "qk" | "conv")
    # The owned indices as tensors per (owned pairs, tokens' device, store device): made once per
    # distinct keyframe pass of a run (every step's in `fixed` mode is the same), not once per layer
    # or step (a Python list as an index is a host-to-device copy per use on a GPU).
    _owned_index: dict[
        tuple[tuple[tuple[int, int], ...], torch.device, torch.device], tuple[torch.Tensor, torch.Tensor]
    ] = field(default_factory=dict)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown attention mode {mode!r}")
        self.mode = mode

    def begin_step(
        self,
        step: int,
        inject_qk: bool,
        inject_conv: bool,
        n_keyframes: int = 0,
        keyframes: Sequence[int] = (),
        copies: int = COPIES,
    ) -> None:
        if copies not in (COPIES, EDIT_COPIES):
            raise ValueError(f"a step runs {COPIES} or {EDIT_COPIES} copies per frame, not {copies}")
        if copies != COPIES and (inject_qk or inject_conv):
            raise ValueError("PnP injection copies from the source copy: a step that injects runs it")
        self.copies = copies
        self.step, self.inject_qk, self.inject_conv = step, inject_qk, inject_conv
        self.n_keyframes = n_keyframes
        self.keyframe_frames = list(keyframes)
        self.keyframe_tokens.clear()
        self.keyframe_outputs.clear()
        if self.reuse_from is None or step < self.reuse_from:
            self.fields.clear()

    def begin_chunk(self, frames: list[int], plan: list[FrameSource]) -> None:
        """The next propagate call's frames. Fields outlive the call only while they may be reused:
        from the step before `reuse_from` on; otherwise memory stays one chunk's fields."""
        self.chunk_frames, self.plan = frames, plan
        if self.reuse_from is None or self.step < self.reuse_from - 1:
            self.fields.clear()

    def nearest(
        self,
        scope: object,
        i: int,
        key: int,
        queries: Callable[[], torch.Tensor],
        key_tokens: torch.Tensor | None,
    ) -> torch.Tensor:
        """The field of chunk frame i onto keyframe position `key`: remembered, or searched.

        `queries` is a callable giving the frame's unit source tokens (only called on a search).
        """
        name = (scope, self.chunk_frames[i], self.keyframe_frames[key]) if self.keyframe_frames else None
        found = self.fields.get(name) if name else None
        if found is not None:
            return found
        if self.copies != COPIES:  # the tokens at hand are an edit copy's: a field from them is wrong
            raise RuntimeError(
                f"step {self.step} runs without the source copy but has no field for frame "
                f"{self.chunk_frames[i] if self.chunk_frames else i} to reuse; fields are searched on the "
                "source tokens"
            )
        assert key_tokens is not None  # kept by every keyframe pass that runs the source copy
        q = reduce(queries(), self.match.dims)  # the keyframes' tokens were reduced once, in keep()
        idx = nearest_tokens(
            q, key_tokens[key].to(q.device), normalized=True, same_position=self.match.same_position
        )
        self.searches += 1
        if name:
            self.fields[name] = idx
        return idx

    def set_keyframe_batch(self, owned: list[tuple[int, int]]) -> None:
        """Which frames of the next keyframe pass to keep: (batch index, keyframe position) pairs.

        A keyframe pass may carry context keyframes (neighbours, anchors) whose outputs another
        pass keeps; only the owned ones are stored.
        """
        self.owned = owned

    def keep(self, layer: str, tokens: torch.Tensor | None, outputs: torch.Tensor) -> None:
        """Store the owned keyframes' source tokens (n, S, D) and outputs (copies, n, S, D); a step
        without the source copy has no tokens (its fields are the step before's).

        Tokens are kept normalised (float32) and, with `match.dims`, already projected: they only
        serve the nearest-neighbour search, which would otherwise project them again per frame.
        """
        device = self.store_device or outputs.device
        if tokens is not None:
            tokens = reduce(unit(tokens), self.match.dims)
        if layer not in self.keyframe_outputs:
            k = self.n_keyframes
            if tokens is not None:
                self.keyframe_tokens[layer] = tokens.new_empty((k, *tokens.shape[1:]), device=device)
            self.keyframe_outputs[layer] = outputs.new_empty(
                (outputs.shape[0], k, *outputs.shape[2:]), device=device
            )
        name = (tuple(self.owned), outputs.device, device)
        index = self._owned_index.get(name)
        if index is None:
            index = (
                torch.tensor([b for b, _ in self.owned], device=outputs.device),
                torch.tensor([p for _, p in self.owned], device=device),
            )
            self._owned_index[name] = index
        batch, positions = index
        if tokens is not None:
            self.keyframe_tokens[layer][positions] = tokens[batch].to(device)
        self.keyframe_outputs[layer][:, positions] = outputs[:, batch].to(device)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, inner = x.shape
    return x.view(b, s, heads, inner // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


class TokenFlowAttnProcessor:
    """Self-attention processor (attn1 of each transformer block) implementing TokenFlow and PnP."""

    def __init__(self, state: TokenFlowState, layer: str, inject_qk: bool) -> None:
        self.state = state
        self.layer = layer
        self.inject_qk = inject_qk

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        mode = self.state.mode
        if mode == "plain" or encoder_hidden_states is not None or attention_mask is not None:
            return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        copies = self.state.copies
        if hidden_states.ndim != 3 or hidden_states.shape[0] % copies:
            raise ValueError(
                f"{self.layer}: expected ({copies}*frames, tokens, dim), got {tuple(hidden_states.shape)}"
            )
        if mode == "propagate":
            return self._propagate(hidden_states)

        n = hidden_states.shape[0] // copies
        x = hidden_states
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        if self.inject_qk and self.state.inject_qk:
            q = q[:n].repeat(COPIES, 1, 1)
            k = torch.cat([k[:n], k[:n], k[:n]])
            self.state.injections.add((self.state.step, "qk"))
        q, k, v = (_split_heads(t, attn.heads) for t in (q, k, v))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)

        if mode == "keyframe" and copies == COPIES:
            source = F.scaled_dot_product_attention(q[:n], k[:n], v[:n])
            edits = self._extended(q[n:], k[n:], v[n:], n)
            out = torch.cat([source, edits])
        elif mode == "keyframe":  # the edit copies only
            out = self._extended(q, k, v, n)
        else:  # per_frame
            out = F.scaled_dot_product_attention(q, k, v)
        out = attn.to_out[1](attn.to_out[0](_merge_heads(out).to(q.dtype)))
        if attn.residual_connection:
            out = out + hidden_states
        out = out / attn.rescale_output_factor
        if mode == "keyframe":
            tokens = hidden_states[:n] if copies == COPIES else None
            self.state.keep(self.layer, tokens, out.view(copies, n, *out.shape[1:]))
        return out

    @staticmethod
    def _extended(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
        """Each keyframe of each edit copy attends to the tokens of all n keyframes of that copy.

        The keyframes' tokens are laid end to end in one sequence per copy, so no key/value is
        repeated per keyframe (the reference repeats them n times) and SDPA's fused kernels apply.
        """
        copies, heads, s, d = q.shape[0] // n, q.shape[1], q.shape[2], q.shape[3]

        def joined(t: torch.Tensor) -> torch.Tensor:
            return t.view(copies, n, heads, s, d).transpose(1, 2).reshape(copies, heads, n * s, d)

        out = F.scaled_dot_product_attention(joined(q), joined(k), joined(v))
        return out.view(copies, heads, n, s, d).transpose(1, 2).reshape(copies * n, heads, s, d)

    def _propagate(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Gather kept keyframe outputs along the source tokens' nearest neighbours; no attention."""
        state = self.state
        n = hidden_states.shape[0] // state.copies
        if len(state.plan) != n:
            raise RuntimeError(f"{self.layer}: the chunk plan has {len(state.plan)} frames, the batch {n}")
        key_tokens = state.keyframe_tokens.get(self.layer)  # None without the source copy
        key_outputs = state.keyframe_outputs[self.layer]
        device, dtype = hidden_states.device, hidden_states.dtype
        # "level": one field per resolution (token count) for all layers of that resolution
        scope = self.layer if state.match.scope == "layer" else ("level", hidden_states.shape[1])
        frames = []
        for i, src in enumerate(state.plan):
            out_a = key_outputs[:, src.a].to(device)
            if src.exact:
                frames.append(out_a.to(dtype))
                continue
            made: list[torch.Tensor] = []

            def queries(i: int = i, made: list[torch.Tensor] = made) -> torch.Tensor:
                if not made:  # normalised once per frame, however many searches need it
                    made.append(unit(hidden_states[i]))
                return made[0]

            idx_a = state.nearest(scope, i, src.a, queries, key_tokens)
            mixed = out_a[:, idx_a].float()
            if src.b != src.a:
                idx_b = state.nearest(scope, i, src.b, queries, key_tokens)
                out_b = key_outputs[:, src.b].to(device)[:, idx_b].float()
                # lerp form: a frame between two equal keyframes gets exactly their output
                mixed = torch.lerp(out_b, mixed, src.weight_a)
            frames.append(mixed.to(dtype))
        return torch.stack(frames, dim=1).reshape(state.copies * n, *hidden_states.shape[1:])


def default_layers(family: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The PnP (query/key, residual) layers of a model family (engine/model/family.py's names)."""
    if family == "sdxl":
        return SDXL_QK_LAYERS, SDXL_CONV_LAYERS
    return DEFAULT_QK_LAYERS, DEFAULT_CONV_LAYERS


def layer_problem(unet: Any, qk_layers: Sequence[str], conv_layers: Sequence[str]) -> str | None:
    """What is wrong with PnP layer names for this UNet (None: all there), naming the ones it has."""
    attention_blocks = sorted(
        {n.split(".transformer_blocks.")[0] for n in unet.attn_processors if ".transformer_blocks." in n}
    )
    resnets = [
        f"up_blocks.{i}.resnets.{j}"
        for i, block in enumerate(unet.up_blocks)
        for j in range(len(block.resnets))
    ]
    missing_qk = [layer for layer in qk_layers if layer not in attention_blocks]
    missing_conv = [layer for layer in conv_layers if layer not in resnets]
    if missing_qk:
        decoder = [b for b in attention_blocks if b.startswith("up_")]
        return (
            f"this UNet has no attention block {', '.join(missing_qk)} for PnP query/key injection; its "
            f"decoder's are {', '.join(decoder) or 'none'}"
        )
    if missing_conv:
        return (
            f"this UNet has no ResNet {', '.join(missing_conv)} for PnP residual injection; its decoder's "
            f"are {', '.join(resnets)}"
        )
    return None


def install(
    unet: Any,
    state: TokenFlowState,
    qk_layers: Sequence[str] = DEFAULT_QK_LAYERS,
    conv_layers: Sequence[str] = DEFAULT_CONV_LAYERS,
) -> Installed:
    """Give every self-attention layer a TokenFlow processor and hook the PnP ResNet layers.

    Returns what :func:`uninstall` needs to restore the UNet as it was.
    """
    original = dict(unet.attn_processors)
    processors: dict[str, Any] = {}
    found_qk: set[str] = set()
    for name in unet.attn_processors:
        layer = name.removesuffix(".processor")
        if layer.endswith("attn1"):
            inject = next((p for p in qk_layers if layer.startswith(p + ".")), None)
            if inject:
                found_qk.add(inject)
            processors[name] = TokenFlowAttnProcessor(state, layer, inject_qk=inject is not None)
        else:
            processors[name] = AttnProcessor2_0()
    missing = sorted(set(qk_layers) - found_qk)
    if missing:
        raise ValueError(
            f"the UNet has no self-attention in PnP layer(s) {', '.join(missing)}; "
            "give layers this model has (pnp_qk_layers)"
        )
    unet.set_attn_processor(processors)

    def inject_residual(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if state.inject_conv and state.mode != "plain" and output.shape[0] % COPIES == 0:
            state.injections.add((state.step, "conv"))
            n = output.shape[0] // COPIES
            return output[:n].repeat(COPIES, 1, 1, 1)
        return None

    handles = []
    for layer in conv_layers:
        try:
            conv = unet.get_submodule(layer + ".conv2")
        except AttributeError as exc:
            raise ValueError(f"the UNet has no ResNet {layer} for PnP residual injection") from exc
        handles.append(conv.register_forward_hook(inject_residual))
    return Installed(original, handles)


@dataclass
class Installed:
    processors: dict[str, Any]
    hooks: list[torch.utils.hooks.RemovableHandle]


def uninstall(unet: Any, installed: Installed) -> None:
    """Remove the hooks and give the UNet back the processors it had before :func:`install`."""
    for handle in installed.hooks:
        handle.remove()
    unet.set_attn_processor(installed.processors)
