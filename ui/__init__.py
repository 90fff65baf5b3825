"""The Sequencer sidebar tab "TokenFlow"."""

from __future__ import annotations

from . import panels


def register() -> None:
    panels.register()


def unregister() -> None:
    panels.unregister()
