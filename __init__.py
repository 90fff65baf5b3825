"""TokenFlow for Blender: text-driven, temporally consistent video editing in the Sequencer.

An extension (Blender 4.2+): relative imports only, no bl_info. The Blender side lives in
`tokenflow_blender/` and `ui/`; the engine (`engine/`) runs as a separate process in its own
Python environment and is never imported here beyond its standard-library protocol module.

The submodules are imported inside register(), not at the top: this folder is also the project's
root, and tools that import it as a package (pytest in the engine's environment) must not need bpy.
"""

from __future__ import annotations


def register() -> None:
    from . import tokenflow_blender, ui

    tokenflow_blender.register()
    ui.register()


def unregister() -> None:
    from . import tokenflow_blender, ui

    ui.unregister()
    tokenflow_blender.unregister()
