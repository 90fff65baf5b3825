"""The edit: PnP (or SDEdit) denoising with TokenFlow keyframe attention and propagation.

At every denoising step the keyframes go through the UNet together (extended attention); then the
shot goes through in chunks, each frame taking the keyframes' self-attention outputs along its
source tokens' nearest neighbours. Latents of the shot live on the CPU; only a chunk (or the
keyframes) is on the device at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler

from ..images import matte
from ..model.conditioning import TextConditioning
from ..model.finite import require_finite
from ..model.loading import Model
from . import attention, keyframes, schedulers
from .matching import MatchOptions


@dataclass
class EditSettings:
    steps: int = 50
    guidance: float = 7.5
    pnp_f_t: float = 0.8
    pnp_attn_t: float = 0.5
    edit_mode: str = "pnp"  # or "sdedit"
    sdedit_strength: float = 0.9
    method: str = "tokenflow"  # or "per-frame"
    keyframe_stride: int = 8
    keyframe_mode: str = "fixed"  # or "resample"
    seed: int = 1
    chunk_size: int = 8
    keyframe_batch: int = 8
    keyframe_anchors: int = 3
    frame_range: tuple[int, int] | None = None  # produce only these frames [start, end) (farm chunks)
    match: MatchOptions = field(default_factory=MatchOptions)  # how propagation searches its fields
    # "paper": two nearest keyframes, linear weights; "reference": the reference code's rule (with
    # resample keyframes and matching.REFERENCE_SEARCH), which also re-runs the keyframes.
    propagation: str = "paper"
    qk_layers: Sequence[str] = attention.DEFAULT_QK_LAYERS
    conv_layers: Sequence[str] = attention.DEFAULT_CONV_LAYERS


@dataclass
class Prompts:
    """Text conditioning (1, 77, D; SDXL's with its pooled embedding): the source copy's, the negative
    prompt's and the prompt's."""

    source: TextConditioning
    negative: TextConditioning
    positive: TextConditioning


@dataclass
class EditResult:
    frames: list[int]  # positions of the produced frames in the shot
    latents: torch.Tensor  # (len(frames), 4, h, w) on the CPU
    keyframes: list[int]  # the keyframes of the last step
    injections: set[tuple[int, str]] = field(default_factory=set)


def edit_timesteps(model: Model, settings: EditSettings) -> list[int]:
    """The descending timesteps the edit visits (SDEdit skips the noisiest part of the schedule)."""
    scheduler = schedulers.ddim(DDIMScheduler, model.scheduler_config, clip_sample=False)
    scheduler.set_timesteps(settings.steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    if settings.edit_mode == "sdedit":
        start = settings.steps - max(1, round(settings.steps * settings.sdedit_strength))
        timesteps = timesteps[start:]
    return timesteps


def injection_steps(settings: EditSettings) -> tuple[int, int]:
    """How many leading steps get (residual, query/key) injection: int(T * fraction), as the reference."""
    if settings.edit_mode != "pnp":
        return 0, 0
    return int(settings.steps * settings.pnp_f_t), int(settings.steps * settings.pnp_attn_t)


class Editor:
    """Runs the preview (keyframes only) or the full propagation for one shot."""

    def __init__(
        self,
        model: Model,
        settings: EditSettings,
        source: Callable[[int], torch.Tensor],
        prompts: Prompts,
        on_call: Callable[[str, int], None] | None = None,
    ) -> None:
        """`source(t)` gives the inverted latents of all frames at timestep t, (N, 4, h, w) on the CPU."""
        self.model = model
        self.settings = settings
        self.source = source
        self.prompts = prompts
        self.on_call = on_call or (lambda stage, frames: None)
        self.state = attention.TokenFlowState(match=settings.match)
        self.scheduler = schedulers.ddim(DDIMScheduler, model.scheduler_config, clip_sample=False)
        self.scheduler.set_timesteps(settings.steps)
        self.timesteps = edit_timesteps(model, settings)
        reuse = int(len(self.timesteps) * settings.match.reuse)  # as injection_steps rounds
        if reuse:  # the first step always searches
            self.state.reuse_from = max(1, len(self.timesteps) - reuse)
        # (N, 1, h, w) on the latent grid, or None: outside it the latents follow the source's.
        self.matte: torch.Tensor | None = None
        self._t_device: dict[int, torch.Tensor] = {}

    # -- one UNet call on [source, negative, positive] copies of n frames ----------------------
    def _guided_eps(self, src: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
        """The guided noise prediction of x; the source copy runs beside it only in the steps that
        read it (`self.state.copies`)."""
        placement = self.model.placement
        n = x.shape[0]
        p = self.prompts
        parts, texts = [x, x], [p.negative.expand(n), p.positive.expand(n)]
        if self.state.copies == attention.COPIES:
            parts, texts = [src, *parts], [p.source.expand(n), *texts]
        batch = torch.cat(parts).to(placement.device, placement.dtype)
        # guidance is linear, so it applies alike to a noise or a v prediction (the scheduler reads which)
        eps = self.model.predict(batch, self._timestep(t), TextConditioning.cat(texts)).float()
        uncond, cond = eps[-2 * n :].chunk(2)
        return uncond + self.settings.guidance * (cond - uncond)

    def copies(self, step: int, preview: bool) -> int:
        """How many copies step `step` runs per frame. The source copy serves PnP injection and the
        propagation's nearest-neighbour search; a step with neither (after the injection steps: a
        preview, per-frame PnP, SDEdit per frame, and TokenFlow `fixed` while it reuses the step
        before's fields) leaves it out, a third less UNet work. The edit copies see exactly what they
        would see beside it: the source copy never mixes into them after injection."""
        n_conv, n_qk = injection_steps(self.settings)
        if step < max(n_conv, n_qk):
            return attention.COPIES
        if preview or self.settings.method == "per-frame":
            return attention.EDIT_COPIES
        reuse_from = self.state.reuse_from
        reusing = reuse_from is not None and step >= reuse_from
        # resample draws other keyframes every step: their fields are new, searched on source tokens
        return (
            attention.EDIT_COPIES if reusing and self.settings.keyframe_mode == "fixed" else attention.COPIES
        )

    def _timestep(self, t: int) -> torch.Tensor:
        """The timestep as a tensor on the device: given an int, the UNet makes one per call (a
        host-to-device copy per UNet call on a GPU). All steps' are made in one copy before the loop."""
        if not self._t_device:
            made = torch.tensor(self.timesteps, device=self.model.placement.device)
            self._t_device = dict(zip(self.timesteps, made.unbind(), strict=True))  # views, no copies
        return self._t_device[t]

    def _denoise(self, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        x = x.to(eps.device, torch.float32)
        x = self.scheduler.step(eps, t, x).prev_sample.cpu()  # the one copy out, a sync of its own
        where = f"the UNet during the edit (timestep {int(t)})"
        # checked on the host copy: on a GPU, checking on the device would be one more sync per call
        require_finite(x, where, self.model.placement.dtype, self.settings.guidance)
        return x

    def _keyframes(self, n_frames: int, step: int, preview: bool) -> list[int]:
        s = self.settings
        if preview and s.keyframe_mode == "resample":
            # A preview keeps one set of keyframes for all steps: the last step's draw.
            step = len(self.timesteps) - 1
        return keyframes.choose(s.keyframe_mode, n_frames, s.keyframe_stride, s.seed, step)

    @torch.no_grad()
    def run(self, preview: bool, cancelled: Callable[[], None] = lambda: None) -> EditResult:
        s = self.settings
        handles = attention.install(self.model.unet, self.state, s.qk_layers, s.conv_layers)
        try:
            return self._run(preview, cancelled)
        finally:
            attention.uninstall(self.model.unet, handles)

    def produce(self, n_frames: int) -> range:
        r = self.settings.frame_range
        return range(*r) if r else range(n_frames)

    def needed(self, n_frames: int, preview: bool) -> list[int]:
        """Frames whose source latents the run reads: the keyframes, and for a propagation the
        produced frames plus every frame that is a keyframe at some step (see keyframes.tracked)."""
        s = self.settings
        if preview:
            return sorted(self._keyframes(n_frames, 0, preview=True))
        if s.method == "per-frame":
            return list(self.produce(n_frames))
        steps = len(self.timesteps)
        return keyframes.tracked(
            s.keyframe_mode, n_frames, s.keyframe_stride, s.seed, steps, self.produce(n_frames)
        )

    def _run(self, preview: bool, cancelled: Callable[[], None]) -> EditResult:
        s, state = self.settings, self.state
        x = self.source(self.timesteps[0]).clone()
        n_frames = x.shape[0]
        carried = self.needed(n_frames, preview=False)
        n_conv, n_qk = injection_steps(s)
        keys: list[int] = []
        self._timestep(self.timesteps[0])  # every step's timestep on the device, before the loop
        for step, t in enumerate(self.timesteps):
            cancelled()
            src = self.source(t)
            if self.matte is not None and step:
                x = matte.limit(x, src, self.matte)
            keys = self._keyframes(n_frames, step, preview)
            state.begin_step(
                step,
                step < n_qk,
                step < n_conv,
                n_keyframes=len(keys),
                keyframes=keys,
                copies=self.copies(step, preview),
            )
            if s.method == "per-frame":
                x = self._per_frame_step(x, src, t, keys if preview else carried, cancelled)
                continue
            denoised = self._keyframe_pass(x, src, t, keys, cancelled)
            if preview:
                x = denoised
                continue
            state.set_mode("propagate")
            others = self.propagated(carried, keys)
            for start in range(0, len(others), s.chunk_size):
                cancelled()
                chunk = others[start : start + s.chunk_size]
                state.begin_chunk(chunk, self._sources(chunk, keys))
                eps = self._guided_eps(src[chunk], x[chunk], t)
                denoised[chunk] = self._denoise(eps, t, x[chunk])
                self.on_call("propagate", len(chunk))
            x = denoised
        state.set_mode("plain")
        produced = keys if preview else list(self.produce(n_frames))
        reported = [] if s.method == "per-frame" and not preview else keys
        return EditResult(produced, x[produced].clone(), reported, set(state.injections))

    @property
    def reruns_keyframes(self) -> bool:
        """Whether the keyframes go through propagation too (the reference code's rule)."""
        return self.settings.propagation == "reference"

    def propagated(self, carried: list[int], keys: list[int]) -> list[int]:
        """The frames a step propagates. With the paper's rule the keyframe pass has stepped the
        keyframes: a keyframe in a propagation chunk would take its own kept outputs and get the same
        step again (19% more UNet work at stride 8), so only the other frames go. The reference
        discards the keyframe pass's step and propagates every frame, keyframes blended with the
        previous block's keyframe."""
        if self.reruns_keyframes:
            return list(carried)
        keyset = set(keys)
        return [f for f in carried if f not in keyset]

    def _sources(self, chunk: list[int], keys: list[int]) -> list[keyframes.FrameSource]:
        if self.settings.propagation == "reference":
            return keyframes.reference_sources(chunk, keys, self.settings.keyframe_stride)
        return keyframes.sources(chunk, keys)

    def _keyframe_pass(
        self, x: torch.Tensor, src: torch.Tensor, t: int, keys: list[int], cancelled: Callable[[], None]
    ) -> torch.Tensor:
        """Run the keyframes (in bounded groups), keep their features; return x with them denoised."""
        s, state = self.settings, self.state
        passes = keyframes.passes(len(keys), s.keyframe_batch, s.keyframe_anchors)
        state.store_device = torch.device("cpu") if len(passes) > 1 else None
        state.set_mode("keyframe")
        denoised = x.clone()
        for kp in passes:
            cancelled()
            members = [keys[p] for p in kp.members]
            slot = {p: i for i, p in enumerate(kp.members)}
            state.set_keyframe_batch([(slot[p], p) for p in kp.owned])
            eps = self._guided_eps(src[members], x[members], t)
            owned = [keys[p] for p in kp.owned]
            # the owned keyframes are consecutive members: their rows of eps are a view (a list as
            # an index would be a host-to-device copy per pass on a GPU)
            first = slot[kp.owned[0]]
            if [slot[p] for p in kp.owned] != list(range(first, first + len(owned))):
                raise RuntimeError(f"keyframe pass {kp}: owned keyframes are not consecutive members")
            denoised[owned] = self._denoise(eps.narrow(0, first, len(owned)), t, x[owned])
            self.on_call("keyframes", len(members))
        return denoised

    def _per_frame_step(
        self, x: torch.Tensor, src: torch.Tensor, t: int, targets: list[int], cancelled: Callable[[], None]
    ) -> torch.Tensor:
        self.state.set_mode("per_frame")
        x = x.clone()
        for start in range(0, len(targets), self.settings.chunk_size):
            cancelled()
            chunk = targets[start : start + self.settings.chunk_size]
            eps = self._guided_eps(src[chunk], x[chunk], t)
            x[chunk] = self._denoise(eps, t, x[chunk])
            self.on_call("per-frame", len(chunk))
        return x


@torch.no_grad()
def decode_chunks(model: Model, latents: torch.Tensor, chunk: int = 4) -> Iterator[torch.Tensor]:
    """VAE-decode (B, 4, h, w) latents to (3, H, W) images in [0, 1] on the CPU, one at a time,
    `chunk` frames per VAE call: the caller writes each image before the next chunk is decoded."""
    for start in range(0, latents.shape[0], chunk):
        z = latents[start : start + chunk].to(model.placement.device, model.placement.vae_dtype)
        images = model.vae.decode(z / model.latent_scale).sample.float()
        require_finite(images, "the VAE decoder (writing the results)", model.placement.vae_dtype)
        yield from ((images + 1) / 2).clamp(0, 1).cpu()
