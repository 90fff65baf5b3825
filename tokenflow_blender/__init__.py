"""Blender glue for TokenFlow: settings, preferences, operators, strip I/O and the job controller.

Nothing here imports torch, diffusers or numpy: the engine runs as a subprocess (see `engine/`).
Plain-Python parts (`controller`, `planning`, `imageinfo`, `engine_env`, `flamenco`, `farm_task`)
hold the logic; the bpy parts (`properties`, `preferences`, `operators`, `strips`, `jobs`,
`farm_jobs`) stay thin over them.
"""

from __future__ import annotations

from . import jobs, operators, preferences, properties, takes_ops

_modules = (properties, preferences, operators, jobs, takes_ops)


def register() -> None:
    for module in _modules:
        module.register()


def unregister() -> None:
    for module in reversed(_modules):
        module.unregister()
