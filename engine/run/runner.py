"""One engine run: check the job, load the model, invert (cached), edit, write the result atomically."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import protocol
from ..errors import BadInput, EngineError
from ..images import delivery, frames
from ..method import attention
from ..method.editing import Editor, EditSettings, Prompts, decode_chunks, edit_timesteps, injection_steps
from ..method.inversion import (
    InversionCache,
    InversionSettings,
    encode,
    inversion_timesteps,
    invert,
    schedule_fingerprint,
)
from ..method.matching import REFERENCE_SEARCH, MatchOptions
from ..model import devices
from ..model import family as families
from ..model.conditioning import TextConditioning
from ..model.fingerprint import INDEX_NAME, DigestIndex
from ..model.loading import Model, detect_family, load
from ..protocol import MANIFEST
from . import preflight
from .events import CancelToken, Emitter, Progress
from .outputs import Destination, disk_full, refuse_existing
from .preflight import default_cache_dir

log = logging.getLogger(__name__)


def check_output(output: str) -> Path:
    """The destination must not exist: results never overwrite anything."""
    dest = Path(output).expanduser().absolute()
    refuse_existing(dest)
    return dest


def settings_from_job(job: protocol.Job, family: families.Family | None = None) -> EditSettings:
    """The edit's settings; PnP layers the job does not name are the model family's."""
    qk, conv = attention.default_layers(family.name if family else families.SD1)
    return EditSettings(
        qk_layers=protocol.layer_list(job.pnp_qk_layers) or qk,
        conv_layers=protocol.layer_list(job.pnp_conv_layers) or conv,
        steps=job.steps,
        guidance=job.guidance,
        pnp_f_t=job.pnp_f_t,
        pnp_attn_t=job.pnp_attn_t,
        edit_mode=job.edit_mode,
        sdedit_strength=job.sdedit_strength,
        method=job.method,
        keyframe_stride=job.keyframe_stride,
        keyframe_mode=job.keyframe_mode,
        seed=job.seed,
        chunk_size=job.chunk_size,
        keyframe_batch=job.keyframe_batch,
        keyframe_anchors=job.keyframe_anchors,
        frame_range=tuple(job.frame_range) if job.frame_range else None,
        match=REFERENCE_SEARCH
        if job.propagation == "reference"
        else MatchOptions(job.match_scope, job.match_reuse, job.match_dims),
        propagation=job.propagation,
    )


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """RGB [0, 1] HxWx3 arrays -> (B, 3, H, W) in [-1, 1], contiguous: the VAE's convolutions on the
    channels-last view a bare permute gives are 5x further from a float64 encoding (1e-5 relative
    on the tiny model) and from the reference code's latents (bench/reference_parity.py)."""
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2.0 - 1.0).contiguous()


class Run:
    """State of one run; `execute()` returns the `done` event's payload."""

    def __init__(
        self,
        job: protocol.Job,
        emit: Emitter,
        cancel: CancelToken,
        model: Model | None = None,
        loader: Callable[[protocol.Job], Model] | None = None,
        inversions: Any = None,
        ready: preflight.Ready | None = None,
    ) -> None:
        self.job = job
        self.ready = ready
        self.emit = emit
        self.cancel = cancel
        self.model = model
        self.loader = loader  # the warm engine's: its loaded model, or a load (engine/serve.py)
        self.inversions = inversions  # the warm engine's in-memory inversions (engine/memo.Bounded)
        self.progress = Progress(emit)
        self.stats: dict[str, Any] = {
            "inversion_unet_frames": 0,
            "keyframe_unet_frames": 0,
            "propagate_unet_frames": 0,
            "cache_hits": 0,
            "cache_misses": 0,
            "cache_rejected": 0,  # bad entries found, deleted and recomputed
            "cache_writes_failed": 0,  # entries not written: the cache folder is read-only or full
        }

    # -- stages ---------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Check (unless the caller did), announce, then do the work; the output claim is always let go."""
        if self.ready is None:
            self.ready = preflight.check(self.job)
        try:
            return self._execute(self.ready)
        finally:
            self.ready.release()

    def _open(self, ready: preflight.Ready, **announce: Any) -> tuple[frames.Shot, frames.Geometry, Model]:
        """What every run does first: announce it (`started` is the first event), read and check the
        frames, load the model. Returns the shot, its working geometry and the model."""
        job = self.job
        self.delivery = delivery.from_job(job)  # colour space and matte, refused before any work
        self.cancel.check()
        # the family (a refusal of what cannot be edited) and its native size, before any weight loads
        if self.model is not None:
            self.family: families.Family | None = self.model.family
        else:
            self.family = detect_family(job.model, job.extra.get("model_config", ""))
        placement = self.model.placement if self.model is not None else devices.choose(job.device)
        source_size = ready.size
        if not all(source_size):  # no header was understood: the size comes from decoding
            source_size = frames.read_shot(job.frames[:1]).size
        self.working_size = job.size or (self.family.native_size if self.family else 512)
        size = frames.geometry(*source_size, self.working_size)
        if self.family is not None:
            announce = {**announce, "model_family": self.family.name, "native_size": self.family.native_size}
        self.emit(
            protocol.EVENT_STARTED,
            frames=len(job.frames),
            width=size.padded[0],
            height=size.padded[1],
            padding=list(size.padding),
            source_width=source_size[0],
            source_height=source_size[1],
            **announce,
            **placement.describe(),
        )
        self.progress.stage("read")
        with self.cancel.interruptible():
            shot = frames.read_shot(job.frames)
        self.delivery.check(shot, job.evaluate)
        if job.frame_range and job.frame_range[1] > len(shot):
            raise BadInput(f"frame_range {job.frame_range} runs past the shot's {len(shot)} frames")
        self.cancel.check()
        self.progress.stage("load")
        if self.model is None:
            with self.cancel.interruptible():  # seconds to minutes for a real model: no checks inside
                self.model = self._load_model(placement)
        if job.stage != protocol.STAGE_INVERT:
            check = settings_from_job(job, self.model.family)
            problem = attention.layer_problem(self.model.unet, check.qk_layers, check.conv_layers)
            if problem:
                raise BadInput(f"{problem}: fix pnp_qk_layers / pnp_conv_layers, or leave them empty")
        return shot, size, self.model

    def _execute(self, ready: preflight.Ready) -> dict[str, Any]:
        job = self.job
        invert_only = job.stage == protocol.STAGE_INVERT
        shot, size, model = self._open(ready)
        settings = settings_from_job(job, model.family)
        preview = job.stage == protocol.STAGE_PREVIEW
        prompts = Prompts(
            self._encode(job.source_prompt),
            self._encode(job.negative_prompt, negative=True),
            self._encode(job.prompt),
        )
        editor = Editor(model, settings, lambda t: source(t), prompts, on_call=self._on_edit_call)
        needed = list(range(len(shot))) if invert_only else editor.needed(len(shot), preview)
        timed = time.monotonic()
        source = self._source_latents(shot, size, needed)
        self._timed(timed)
        if invert_only:
            return {
                "output": None,
                "files": [],
                "keyframes": [],
                "indices": [],
                "stats": self.stats,
                "metrics": None,
            }
        editor.matte = self.delivery.latent_matte(len(shot), size, model.vae_factor)
        self._plan_edit(settings, editor, len(shot), preview)
        timed = time.monotonic()
        result = editor.run(preview=preview, cancelled=self.cancel.check)
        self._timed(timed)
        self.emit(protocol.EVENT_KEYFRAMES, indices=result.keyframes)
        conv, qk = injection_steps(settings)
        self.stats["injection_steps"] = {"residual": conv, "qk": qk}
        self.stats["match_searches"] = editor.state.searches  # a reused or shared field is not one
        assert ready.destination is not None
        return self._write(
            shot, size, ready.destination, result.frames, result.latents, result.keyframes, preview
        )

    def _source_latents(self, shot: frames.Shot, size: frames.Geometry, needed: list[int]):
        """Inverted latents at every edit timestep for the frames the run reads, cached per frame.

        Frames the run never reads (outside a farm chunk's reach) stay zero and are not inverted. The
        inversion may take more steps than the edit (`inversion_steps`); it keeps the edit's timesteps.
        """
        model, job = self.model, self.job
        assert model is not None
        steps = job.inversion_steps or job.steps
        wanted = sorted(edit_timesteps(model, EditSettings(steps=job.steps)))
        passed = inversion_timesteps(model, steps)
        if not set(wanted) <= set(passed):  # the job's check assumed leading spacing; this is the model's
            raise BadInput(
                f"inversion_steps {steps} does not reach every timestep of the edit's {job.steps} steps "
                f"with this model's noise schedule ({model.scheduler_config.get('timestep_spacing')!r} "
                f"spacing): missing {sorted(set(wanted) - set(passed))[:4]}; use inversion_steps 0 (the "
                "edit's own count) or a count whose timesteps include the edit's"
            )
        cache = InversionCache(job.cache_dir or default_cache_dir(), memory=self.inversions)
        if self.ready is not None and self.ready.cache_problem:
            cache.write_error = self.ready.cache_problem  # warned once by the pre-flight: no write tried
        assert cache.root is not None
        inv = InversionSettings(
            model_identity=model.fingerprint(DigestIndex(cache.root / INDEX_NAME)),
            dtype=str(model.placement.dtype),
            width=size.padded[0],
            height=size.padded[1],
            steps=steps,
            prompt=job.source_prompt,
            scheduler=schedule_fingerprint(model.scheduler_config),
            edit_steps=job.steps if steps != job.steps else 0,  # not a coarse inversion's entry
        )
        h, w = size.padded[1] // model.vae_factor, size.padded[0] // model.vae_factor
        shape = (len(wanted), 4, h, w)
        found = {i: cache.get(inv, shot.frames[i].cache_key, wanted, shape) for i in needed}
        missing = [i for i in needed if found[i] is None]
        self.stats["cache_hits"] = len(needed) - len(missing)
        self.stats["cache_misses"] = len(missing)
        self.stats["cache_rejected"] = cache.rejected
        if missing:
            self.progress.plan("inversion", len(missing) * steps)
            embeds = self._encode(job.source_prompt)
            for start in range(0, len(missing), job.chunk_size):
                self.cancel.check()
                chunk = missing[start : start + job.chunk_size]
                images = _to_tensor(
                    [frames.to_working(self.delivery.model_input(shot.frames[i]), size) for i in chunk]
                )
                clean = encode(model, images)

                def on_call(n: int = len(chunk)) -> None:
                    self.cancel.check()
                    self.stats["inversion_unet_frames"] += n
                    self.progress.advance("inversion", n)

                timesteps, latents = invert(model, clean, embeds, steps, on_call, keep=wanted)
                if timesteps != wanted:
                    raise EngineError(f"inversion timesteps {timesteps[:3]}... differ from the edit's")
                for j, i in enumerate(chunk):
                    found[i] = latents[:, j].contiguous()  # a plain layout, as a cache load gives
                    cache.put(inv, shot.frames[i].cache_key, timesteps, found[i])
            self.stats["cache_writes_failed"] = cache.writes_failed
        stacked = torch.zeros(len(wanted), len(shot), 4, h, w)  # (T, N, 4, h, w)
        for i, latents in found.items():
            stacked[:, i] = latents
        index = {t: k for k, t in enumerate(wanted)}
        return lambda t: stacked[index[int(t)]]

    def _load_model(self, placement: Any) -> Model:
        """The warm engine's loaded model (its loader), or a fresh load for a one-shot run."""
        job = self.job
        if self.loader is not None:
            return self.loader(job)
        return load(job.model, placement, job.extra.get("model_config", ""))

    def _encode(self, text: str, negative: bool = False) -> TextConditioning:
        """A prompt's conditioning (a variation run encodes each distinct prompt once)."""
        assert self.model is not None
        return self.model.encode_prompt(text, negative)

    def _timed(self, since: float) -> None:
        """Add the seconds since `since` to the time spent in UNet work (inversion and denoising):
        with the UNet frame counts it gives this machine's speed, which Blender's estimates use."""
        self.stats["unet_seconds"] = round(self.stats.get("unet_seconds", 0.0) + time.monotonic() - since, 3)

    def _plan_edit(self, settings: EditSettings, editor: Editor, n: int, preview: bool) -> None:
        from ..method import keyframes

        steps = len(editor.timesteps)
        keys = keyframes.choose(settings.keyframe_mode, n, settings.keyframe_stride, settings.seed, 0)
        if settings.method == "per-frame":
            self.progress.plan("per-frame", steps * (len(keys) if preview else len(editor.produce(n))))
        else:
            batches = keyframes.passes(len(keys), settings.keyframe_batch, settings.keyframe_anchors)
            self.progress.plan("keyframes", steps * sum(len(p.members) for p in batches))
            if not preview:  # every carried frame but (paper's rule) the step's keyframes
                carried = len(editor.needed(n, preview=False))
                rerun = 0 if editor.reruns_keyframes else len(keys)
                self.progress.plan("propagate", steps * (carried - rerun))

    def _on_edit_call(self, stage: str, n: int) -> None:
        key = "keyframe_unet_frames" if stage == "keyframes" else "propagate_unet_frames"
        self.stats[key] += n
        self.progress.advance(stage, n)

    def _write(
        self,
        shot: frames.Shot,
        size: frames.Geometry,
        destination: Destination,
        produced: list[int],
        latents: torch.Tensor,
        keys: list[int],
        preview: bool,
    ) -> dict[str, Any]:
        """Decode and write into the claimed temporary folder, then rename it into place at once."""
        model, job = self.model, self.job
        assert model is not None
        dest, tmp = destination.path, destination.temp
        self.progress.stage("decode", 0, len(produced))
        names: list[str] = []
        written = 0
        try:
            # Decoded a few at a time and written at once: full-size images never pile up in memory.
            for k, (i, image) in enumerate(zip(produced, decode_chunks(model, latents), strict=True)):
                self.cancel.check()
                name = self.delivery.write(tmp, shot.frames[i], i, image.permute(1, 2, 0).numpy(), size)
                written += (tmp / name).stat().st_size
                names.append(name)
                self.progress.stage("write", k + 1, len(produced))
            metrics = self._evaluate(shot, tmp, produced) if job.evaluate and not preview else None
            manifest = {
                "protocol": protocol.PROTOCOL_VERSION,
                "stage": job.stage,
                "frame_range": job.frame_range,
                "frame_count": len(shot),
                "files": names,
                "indices": produced,
                "keyframes": keys,
                "sources": [str(f.path) for f in shot.frames],
                "job": job.to_dict(),
                "model_family": model.family.name,  # what the model is and the size it ran at
                "working_size": self.working_size,
                "stats": self.stats,
                "metrics": metrics,
                **self.delivery.describe(),
                "seconds": round(time.monotonic() - self.progress.start, 2),  # the run so far
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        except OSError as exc:
            if not names:  # nothing written yet: a source frame's size is the best guess of one result
                written = shot.frames[produced[0]].path.stat().st_size if produced else 0
            raise disk_full(dest.parent, written, max(len(names), 1), len(produced), exc) from exc
        self.cancel.check()  # a cancel, or a caller gone (stdin or stdout closed), before the rename
        os.rename(tmp, dest)  # atomic on one file system; refuses an existing non-empty folder
        files = [str(dest / n) for n in names]
        if preview:
            self.emit(protocol.EVENT_PREVIEW, files=files, indices=produced)
        return {
            "output": str(dest),
            "files": files,
            "keyframes": keys,
            "indices": produced,
            "stats": self.stats,
            "metrics": metrics,
        }

    def _evaluate(self, shot: frames.Shot, edited: Path, produced: list[int]) -> dict[str, Any]:
        """Temporal consistency and structure of the written frames against their sources."""
        from ..quality.evaluate import evaluate_frames

        total = len(produced)

        def on_frame(i: int) -> None:
            self.cancel.check()
            self.progress.stage("evaluate", i + 1, total)

        return evaluate_frames(
            [shot.frames[i].path for i in produced],
            sorted(edited.glob("*.png")),
            prompt=self.job.prompt,
            max_side=self.working_size,  # measure at the working size: larger adds time, not information
            on_frame=on_frame,
        )
