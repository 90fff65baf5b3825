"""Colour spaces as the OpenColorIO config names them: which config Blender uses, and the canonical
name of a strip's colour space in it.

Blender 4.2 and 5.0 ship different configs (5.0 moved sRGB and the display encodings into
`display_colorspaces:`, added roles and aliases such as `lin_rec709_scene`), and files from older
versions carry legacy names ('Linear', 'Raw'). The engine converts frames with the same config, so
the job names the config file and a colour space the config defines; legacy names go through the
config's own aliases and roles, as OCIO resolves them. Blender's Python has no yaml module: this is
a small reader of the entries it needs (`name:`, `aliases:`, `isdata:` and `roles:`). No bpy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

BUNDLED = ("datafiles", "colormanagement", "config.ocio")
_SPACE_SECTIONS = ("colorspaces", "display_colorspaces")


class ColourError(ValueError):
    """A colour space or config the engine could not use; the message names both and the fix."""


@dataclass(frozen=True)
class Config:
    """What the job needs of an OCIO config: its colour spaces, their aliases and its roles."""

    path: str
    names: tuple[str, ...]  # canonical colour space names, in file order
    lookup: dict[str, str] = field(repr=False)  # lower-case name, alias or role -> canonical name
    data: frozenset[str] = frozenset()  # colour spaces marked `isdata: true` (Non-Color ...)
    roles: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str:
        """The config's own name for `name` (a name, an alias or a role, any case, as OCIO looks it
        up); raise ColourError naming the colour space and the config."""
        found = self.lookup.get(name.strip().lower())
        if found is None:
            examples = ", ".join(repr(n) for n in self.names[:6])
            raise ColourError(
                f"the colour space {name!r} is not defined in the OCIO config {self.path} (it defines "
                f"{len(self.names)} colour spaces, e.g. {examples}); set the strip's Source > Color Space "
                "to one of them, or start Blender with $OCIO set to the config the footage was set up with"
            )
        return found

    def is_data(self, name: str) -> bool:
        return self.resolve(name) in self.data

    @property
    def scene_linear(self) -> str:
        """The scene-linear space (what Blender writes to EXR); 'Linear Rec.709' in Blender's configs."""
        return self.resolve(self.roles.get("scene_linear", "Linear Rec.709"))


def config_path(environ: Mapping[str, str], blender_local: str) -> str:
    """The config Blender uses: `$OCIO` when set, else the one bundled with Blender
    (`bpy.utils.resource_path('LOCAL')` + datafiles/colormanagement/config.ocio)."""
    ocio = environ.get("OCIO", "").strip()
    if ocio:
        return os.path.abspath(os.path.expanduser(ocio))
    return os.path.join(blender_local, *BUNDLED)


def read_config(path: str) -> Config:
    """Read and parse the config at `path`; raise ColourError when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ColourError(
            f"cannot read the OCIO config {path} ({exc.strerror or exc}); check $OCIO or the Blender install"
        ) from exc
    config = parse_config(text, path)
    if not config.names:
        raise ColourError(f"the OCIO config {path} defines no colour spaces; check $OCIO")
    return config


def parse_config(text: str, path: str = "<config>") -> Config:
    """The colour spaces (with aliases and `isdata`) and roles of an OCIO config's text."""
    names: list[str] = []
    aliases: dict[str, list[str]] = {}
    data: set[str] = set()
    roles: dict[str, str] = {}
    section = ""
    current: str | None = None
    key_indent = -1
    for raw in text.splitlines():
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if indent == 0 and not body.startswith("-"):  # a top-level key starts a section
            section = body.split(":", 1)[0].strip()
            current, key_indent = None, -1
            continue
        if section == "roles":
            key, _, value = body.partition(":")
            if value.strip():
                roles[key.strip()] = _scalar(value)
            continue
        if section not in _SPACE_SECTIONS:
            continue
        if body.startswith("- "):  # a new entry: `- !<ColorSpace>` (its keys follow, deeper)
            current, key_indent = None, -1
            body = body[2:].strip()
            if body.startswith("!<"):
                continue
            indent += 2
        if key_indent < 0:
            key_indent = indent
        if indent != key_indent:  # a description's text or a nested block: not an entry key
            continue
        key, _, value = body.partition(":")
        key = key.strip()
        if key == "name":
            current = _scalar(value)
            names.append(current)
            aliases.setdefault(current, [])
        elif current is not None and key == "aliases":
            aliases[current].extend(_flow_list(value))
        elif current is not None and key == "isdata" and _scalar(value).lower() == "true":
            data.add(current)
    lookup: dict[str, str] = {}
    for name in names:  # names first: an alias never hides a colour space's own name
        lookup.setdefault(name.lower(), name)
    for name in names:
        for alias in aliases[name]:
            lookup.setdefault(alias.lower(), name)
    for role, target in roles.items():
        if target.lower() in lookup:
            lookup.setdefault(role.lower(), lookup[target.lower()])
    return Config(path, tuple(names), lookup, frozenset(data), roles)


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a '#' inside quotes is kept)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _scalar(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _flow_list(value: str) -> list[str]:
    """Items of a YAML flow sequence such as `[Linear, "CGI: Linear - Rec.709", lin_srgb]`."""
    value = value.strip()
    if not (value.startswith("[") and value.endswith("]")):
        return [_scalar(value)] if value else []
    items, item, quote = [], "", ""
    for ch in value[1:-1]:
        if quote:
            item += ch
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            item += ch
        elif ch == ",":
            items.append(item)
            item = ""
        else:
            item += ch
    items.append(item)
    return [_scalar(i) for i in items if i.strip()]


_CACHE: dict[tuple[str, float], Config] = {}


def load_config(path: str) -> Config:
    """:func:`read_config`, kept while the file is unchanged (it is read for every job)."""
    try:
        stamp = os.path.getmtime(path)
    except OSError:
        stamp = -1.0
    key = (path, stamp)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = read_config(path)
    return _CACHE[key]
