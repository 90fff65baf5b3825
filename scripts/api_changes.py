"""What changed in Blender's Python API between two versions, for the names the extension uses.

    python scripts/api_changes.py .venvs/bpy-5.0 .venvs/bpy-5.2 [--all]

Blender's own API change log is generated from its RNA; this asks the two `bpy` modules themselves
(each in its own environment) for their types, properties (type, read-only, enum items), function
arguments, operators' properties and the names in `bpy.app`, `bpy.utils`, `bpy.path`, and prints
what was removed, added or changed among the names that the extension's code (tokenflow_blender/,
ui/, __init__.py, scripts/demo.py, scripts/render_panel.py) or its Blender tests mention. Enum
items that were only added are left out (they break nothing). `--all` prints every change.
Run it when a new Blender comes out, before the suite: it says where to look.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ["tokenflow_blender", "ui", "__init__.py", "scripts/demo.py", "scripts/render_panel.py"]
TESTS = ["tests/blender"]

DUMP = r"""
import bpy, json, sys
types = {}
for name in dir(bpy.types):
    rna = getattr(getattr(bpy.types, name), "bl_rna", None)
    if rna is None:
        continue
    props = {}
    for p in rna.properties:
        entry = {"type": p.type, "readonly": p.is_readonly}
        if p.type == "ENUM":
            try:
                entry["items"] = sorted(i.identifier for i in p.enum_items)
            except Exception:
                pass
        props[p.identifier] = entry
    funcs = {
        f.identifier: [[a.identifier, a.type, a.is_required] for a in f.parameters] for f in rna.functions
    }
    types[name] = {"props": props, "funcs": funcs}
ops = {}
for group in dir(bpy.ops):
    for op in dir(getattr(bpy.ops, group)):
        try:
            rna = getattr(getattr(bpy.ops, group), op).get_rna_type()
        except Exception:
            continue
        ops[f"{group}.{op}"] = sorted(p.identifier for p in rna.properties if p.identifier != "rna_type")
modules = {m: sorted(dir(getattr(bpy, m))) for m in ("app", "utils", "path")}
json.dump({"version": bpy.app.version_string, "types": types, "ops": ops, "modules": modules}, sys.stdout)
"""


def dump(venv: Path) -> dict:
    python = venv / "bin" / "python"
    if not python.is_file():
        sys.exit(f"no Python at {python}: make the environment with scripts/setup_env.sh")
    done = subprocess.run([str(python), "-c", DUMP], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"{python} could not describe its bpy:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout[done.stdout.index("{") :])


def used_names(folders: list[str]) -> set[str]:
    """Attribute names, keyword names and identifier-like strings in the given files and folders."""
    names: set[str] = set()
    for entry in folders:
        path = ROOT / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Attribute):
                    names.add(node.attr)
                elif isinstance(node, ast.keyword) and node.arg:
                    names.add(node.arg)
                elif (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and re.fullmatch(r"[a-z_][a-z0-9_.]*", node.value)
                ):
                    names.update(node.value.split("."))
    return names


def changes(old: dict, new: dict, wanted: set[str] | None) -> list[str]:
    """Lines describing what differs, limited to `wanted` names (None: all)."""

    def keep(name: str) -> bool:
        return wanted is None or name in wanted

    lines = []
    for t in sorted(set(old["types"]) - set(new["types"])):
        if keep(t):
            lines.append(f"type {t}: removed")
    for t in sorted(set(old["types"]) & set(new["types"])):
        a, b = old["types"][t], new["types"][t]
        lines += _members(t, "", a["props"], b["props"], keep, _property_change)
        lines += _members(t, "()", a["funcs"], b["funcs"], keep, _arguments_change)
    for op in sorted(set(old["ops"]) | set(new["ops"])):
        if not (keep(op.split(".")[1]) or keep(op)):
            continue
        if op not in new["ops"]:
            lines.append(f"bpy.ops.{op}: removed")
        elif op not in old["ops"]:
            lines.append(f"bpy.ops.{op}: added")
        elif old["ops"][op] != new["ops"][op]:
            gone = sorted(set(old["ops"][op]) - set(new["ops"][op]))
            added = sorted(set(new["ops"][op]) - set(old["ops"][op]))
            lines.append(f"bpy.ops.{op}: properties removed {gone}, added {added}")
    for module, names in old["modules"].items():
        for name in sorted(set(names) - set(new["modules"][module])):
            if keep(name):
                lines.append(f"bpy.{module}.{name}: removed")
    return lines


def _members(owner: str, suffix: str, old: dict, new: dict, keep, describe) -> list[str]:
    """Removed, added and changed members (properties or functions) of one type."""
    lines = []
    for name in sorted(set(old) | set(new)):
        if not keep(name):
            continue
        if name not in new:
            lines.append(f"{owner}.{name}{suffix}: removed")
        elif name not in old:
            lines.append(f"{owner}.{name}{suffix}: added")
        elif old[name] != new[name] and (what := describe(old[name], new[name])):
            lines.append(f"{owner}.{name}{suffix}: {what}")
    return lines


def _property_change(x: dict, y: dict) -> str:
    """A property's type, read-only flag or removed enum items (added items break nothing)."""
    gone = sorted(set(x.get("items", [])) - set(y.get("items", [])))
    other = {k: (x.get(k), y.get(k)) for k in ("type", "readonly") if x.get(k) != y.get(k)}
    return " ".join([f"changed {other}"] * bool(other) + [f"items removed {gone}"] * bool(gone))


def _arguments_change(x: list, y: list) -> str:
    return f"arguments {[p[0] for p in x]} -> {[p[0] for p in y]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="a virtual environment with the older bpy")
    parser.add_argument("new", type=Path, help="a virtual environment with the newer bpy")
    parser.add_argument("--all", action="store_true", help="every change, not only the names used")
    args = parser.parse_args(argv)
    old, new = dump(args.old), dump(args.new)
    code, tests = used_names(CODE), used_names(TESTS)
    print(f"Blender {old['version']} -> {new['version']}")
    lines = changes(old, new, None if args.all else code | tests)
    # Per-strip-type repeats (ImageStrip.x, MovieStrip.x, ...) are folded into one line each.
    folded: dict[str, list[str]] = {}
    for line in lines:
        owner, _, rest = line.partition(".")
        key = re.sub(r"^\w+Strip$", "Strip", owner) + "." + rest if "Strip" in owner else line
        folded.setdefault(key, []).append(owner)
    for key, owners in folded.items():
        where = "extension" if key.split(".")[-1].split(":")[0].rstrip("()") in code else "tests"
        many = f"  ({len(owners)} types)" if len(owners) > 1 else ""
        print(f"  [{where}] {key}{many}")
    if not lines:
        print("  nothing that the extension's code or tests use")
    return 0


if __name__ == "__main__":
    sys.exit(main())
