"""Blender glue: session, jobs (scripts) and settings/ runs/ edit/ takes/ farm/ sequencer/; no ui/, torch."""

from __future__ import annotations

from . import session
from .edit import operators as edit_operators
from .farm import operators as farm_operators
from .sequencer import operators as sequencer_operators
from .settings import preferences, properties
from .takes import listing
from .takes import operators as takes_operators

_modules = (
    properties,
    preferences,
    edit_operators,
    farm_operators,
    sequencer_operators,
    session,
    listing,
    takes_operators,
)


def register() -> None:
    for module in _modules:
        module.register()


def unregister() -> None:
    for module in reversed(_modules):
        module.unregister()
