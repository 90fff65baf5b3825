"""DDIM schedulers made from the model's own scheduler config.

A model ships the config of the sampler it was published with (SDXL base: Euler's, with
`interpolation_type` and `use_karras_sigmas`); DDIM reads its betas, spacing and prediction type and
has no use for the rest. Those keys are left out here, so that diffusers does not warn a user to
"verify your scheduler_config.json" about a correct model.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from diffusers import DDIMInverseScheduler, DDIMScheduler

Scheduler = TypeVar("Scheduler", DDIMScheduler, DDIMInverseScheduler)


def ddim_config(cls: type[Scheduler], config: dict[str, Any]) -> dict[str, Any]:
    """The keys of `config` that `cls` takes."""
    accepted = inspect.signature(cls.__init__).parameters
    return {key: value for key, value in config.items() if key in accepted}


def ddim(cls: type[Scheduler], config: dict[str, Any], **overrides: Any) -> Scheduler:
    """`cls` (DDIM or its inverse) from the keys of `config` it takes, then `overrides`."""
    return cls.from_config({**ddim_config(cls, config), **overrides})
