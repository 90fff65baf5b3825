"""Preview variations: N previews of one shot in one run, differing in seed and/or prompt.

Trying a word or a seed is the artist's loop; each try as its own engine process would load the model,
read the frames and look up (or compute) the inversion again. Here the model loads once, the keyframes
are inverted once, every distinct prompt is encoded once, and only the keyframe denoising runs per
variation. Each variation is written like a single preview (its own folder, `protocol.variation_output`,
with a manifest whose job carries the variation's prompt and seed), so propagating one later is an
ordinary job and, in `fixed` keyframe mode, reproduces the variation's keyframes.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from .. import protocol
from ..method.editing import Editor, Prompts, injection_steps
from ..model.conditioning import TextConditioning
from . import preflight
from .runner import Run, settings_from_job


def variation_jobs(job: protocol.Job) -> list[protocol.Job]:
    """One plain preview job per variation, as it would have been run alone (what its manifest records)."""
    out = []
    for i, entry in enumerate(job.variations):
        out.append(
            dataclasses.replace(
                job,
                prompt=entry.get("prompt", job.prompt),
                seed=entry.get("seed", job.seed),
                output=protocol.variation_output(job.output, i),
                variations=[],
                extra={**job.extra, "variation": {"index": i, "of": len(job.variations), "run": job.output}},
            )
        )
    return out


class VariationRun(Run):
    """A run of `job.variations`; `execute()` returns a `done` payload that lists every variation."""

    def _execute(self, ready: preflight.Ready) -> dict[str, Any]:
        base = self.job
        jobs = variation_jobs(base)
        shot, size, model = self._open(ready, variations=len(jobs))
        self._embeds: dict[tuple[str, bool], TextConditioning] = {}
        encode = self._encode
        source_embeds, negative = encode(base.source_prompt), encode(base.negative_prompt, negative=True)
        editors = []
        for job in jobs:
            prompts = Prompts(source_embeds, negative, encode(job.prompt))
            settings = settings_from_job(job, model.family)
            editors.append(Editor(model, settings, lambda t: source(t), prompts, self._on_edit_call))
        # Resampled keyframes depend on the seed: invert every frame some variation needs, once.
        needed = sorted({i for e in editors for i in e.needed(len(shot), preview=True)})
        timed = time.monotonic()
        source = self._source_latents(shot, size, needed)
        self._timed(timed)
        shared = dict(self.stats)
        for editor in editors:
            editor.matte = self.delivery.latent_matte(len(shot), size, model.vae_factor)
            self._plan_edit(editor.settings, editor, len(shot), preview=True)
        written: list[Path] = []
        results = []
        try:
            for k, (job, editor, dest) in enumerate(zip(jobs, editors, ready.destinations, strict=True)):
                # Each variation's stats are its own work; the first also carries the shared inversion.
                self.stats = {**shared, "unet_seconds": shared.get("unet_seconds", 0.0) if k == 0 else 0.0}
                if k:
                    self.stats.update(inversion_unet_frames=0, cache_hits=0, cache_misses=0)
                self.stats["shared_run"] = {"variations": len(jobs), "index": k}
                timed = time.monotonic()
                result = editor.run(preview=True, cancelled=self.cancel.check)
                self._timed(timed)
                self.emit(protocol.EVENT_KEYFRAMES, indices=result.keyframes, variation=k)
                conv, qk = injection_steps(editor.settings)
                self.stats["injection_steps"] = {"residual": conv, "qk": qk}
                self.job = job  # the manifest records the variation as a job of its own
                try:
                    done = self._write(
                        shot, size, dest, result.frames, result.latents, result.keyframes, True
                    )
                finally:
                    self.job = base
                written.append(dest.path)
                results.append({**done, "prompt": job.prompt, "seed": job.seed})
        except BaseException:
            # A cancelled or failed run adds nothing, not even the variations it had finished.
            for path in written:
                shutil.rmtree(path, ignore_errors=True)
            raise
        totals = {
            key: sum(r["stats"].get(key, 0) for r in results)
            for key in ("inversion_unet_frames", "keyframe_unet_frames", "propagate_unet_frames")
        }
        totals.update(cache_hits=shared["cache_hits"], cache_misses=shared["cache_misses"])
        totals["prompt_encodings"] = len(self._embeds)
        return {
            "output": None,
            "files": [],
            "keyframes": results[0]["keyframes"],
            "indices": results[0]["indices"],
            "stats": totals,
            "metrics": None,
            "variations": results,
        }

    def _encode(self, text: str, negative: bool = False) -> TextConditioning:
        if (text, negative) not in self._embeds:
            self._embeds[(text, negative)] = super()._encode(text, negative)
        return self._embeds[(text, negative)]
