"""The Sequencer sidebar tab "TokenFlow": reads the job state and slots, never the registry's internals."""

from __future__ import annotations

from . import panels, takes_panel


def register() -> None:
    panels.register()
    takes_panel.register()


def unregister() -> None:
    takes_panel.unregister()
    panels.unregister()
