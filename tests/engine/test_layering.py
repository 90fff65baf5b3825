"""The architecture's rules, checked on the source with `ast` (no imports are executed):

- `engine/` never imports bpy; the Blender side's bpy-free folders and modules never do either;
- `engine/protocol.py` and `engine/model/family.py` import only the standard library and
  `engine/errors.py`, which imports only the standard library (Blender imports them from its own Python);
- the Blender side (`tokenflow_blender/`, `ui/`, the extension root) never imports torch, diffusers,
  transformers or numpy at module level (Blender's Python has none of them);
- no two modules import each other, directly or through a chain (imports inside functions count:
  a lazy import hides a cycle, it does not remove it).
Each rule is also run on a small planted tree that breaks it, so a checker that finds nothing fails.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLENDER_SIDE = ["tokenflow_blender", "ui"]
# Folders and modules of the Blender side that child processes and plain tests import: no bpy.
BPY_FREE = [
    "tokenflow_blender/runs",
    "tokenflow_blender/takes/manifest.py",
    "tokenflow_blender/farm/flamenco.py",
    "tokenflow_blender/farm/calls.py",
    "tokenflow_blender/farm/task.py",
    "tokenflow_blender/farm/ocio_share.py",
    "tokenflow_blender/sequencer/planning.py",
    "tokenflow_blender/sequencer/imageinfo.py",
    "tokenflow_blender/sequencer/colour.py",
    "tokenflow_blender/edit/results.py",
    "tokenflow_blender/edit/model_info.py",
]
HEAVY = {"torch", "diffusers", "transformers", "numpy"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted ("engine.run.runner")
    target: str  # what it imports, dotted and absolute ("engine.model.loading", "torch")
    top_level: bool  # at module level (not inside a function or class body)
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__root__"


def imports_of(root: Path, path: Path) -> list[Import]:
    """Every import in a file, resolved to absolute dotted names (relative ones against its package)."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(name, a.name, not in_function, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from . import x` may name a module: keep the name, resolve() walks up to a module
            found.extend(Import(name, f"{stem}.{a.name}", not in_function, node.lineno) for a in node.names)
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def project_modules(root: Path, folders: list[str]) -> dict[str, Path]:
    out = {}
    for folder in folders:
        base = root / folder
        for path in sorted(base.rglob("*.py")) if base.is_dir() else [base] if base.is_file() else []:
            out[module_name(root, path)] = path
    return out


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The project module an import names (a submodule, or the module a name is imported from)."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def cycles(root: Path, folders: list[str]) -> list[list[str]]:
    """Each import cycle among the project's modules, as the list of modules around it."""
    modules = project_modules(root, folders)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, path in modules.items():
        for imp in imports_of(root, path):
            t = resolve(imp.target, modules)
            if t is not None and t != m and not m.startswith(t + "."):  # a package's own __init__
                graph[m].add(t)
    found, state, stack = [], dict.fromkeys(graph, 0), []

    def visit(m: str) -> None:
        state[m], _ = 1, stack.append(m)
        for t in sorted(graph[m]):
            if state[t] == 1:
                ring = stack[stack.index(t) :]
                start = ring.index(min(ring))  # the same cycle reads the same from wherever it was entered
                found.append(ring[start:] + ring[:start] + [min(ring)])
            elif state[t] == 0:
                visit(t)
        state[m], _ = 2, stack.pop()

    for m in sorted(graph):
        if state[m] == 0:
            visit(m)
    return found


def violations(root: Path, blender: list[str], bpy_free: list[str]) -> list[str]:
    """Every broken rule but cycles, one line each (file:line and what)."""
    out = []
    engine = project_modules(root, ["engine"])
    for m, path in engine.items():
        for imp in imports_of(root, path):
            if imp.target.split(".")[0] == "bpy":
                out.append(f"{path.relative_to(root)}:{imp.line}: the engine imports bpy")
            if m in ("engine.protocol", "engine.errors", "engine.model.family"):
                allowed = set() if m == "engine.errors" else {"engine.errors"}
                first = imp.target.split(".")[0]
                if first not in sys.stdlib_module_names and resolve(imp.target, engine) not in allowed:
                    out.append(f"{path.relative_to(root)}:{imp.line}: {m} imports {imp.target}")
    free = project_modules(root, bpy_free)
    blender_modules = project_modules(root, blender)
    for m, path in free.items():
        for imp in imports_of(root, path):
            if imp.target.split(".")[0] == "bpy" or imp.target.endswith(".bpy"):
                out.append(f"{path.relative_to(root)}:{imp.line}: {m} must not import bpy")
            # nor through another module of the Blender side that is not bpy-free itself
            target = resolve(imp.target, blender_modules)
            if target is not None and target not in free and not m.startswith(target + "."):
                out.append(f"{path.relative_to(root)}:{imp.line}: {m} (bpy-free) imports {target}")
    for path in project_modules(root, blender).values():
        for imp in imports_of(root, path):
            if imp.top_level and imp.target.split(".")[0] in HEAVY:
                out.append(f"{path.relative_to(root)}:{imp.line}: the Blender side imports {imp.target}")
    return out


def test_the_project_keeps_its_layers() -> None:
    assert violations(ROOT, BLENDER_SIDE + ["__init__.py"], BPY_FREE) == []


def test_no_import_cycles() -> None:
    assert cycles(ROOT, ["engine", *BLENDER_SIDE]) == []


def test_the_bpy_free_folders_exist() -> None:
    for entry in BPY_FREE:
        assert (ROOT / entry).exists(), f"{entry} is named as bpy-free but does not exist"


# --- the checker finds what it should: planted violations --------------------------------------
def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"engine/run/x.py": "def f():\n    import bpy\n"}, "engine/run/x.py:2: the engine imports bpy"),
        ({"engine/protocol.py": "import torch\n"}, "engine/protocol.py:1: engine.protocol imports torch"),
        (
            {"engine/protocol.py": "from .run import outputs\n", "engine/run/outputs.py": ""},
            "engine.protocol imports engine.run.outputs",
        ),
        ({"engine/errors.py": "from . import protocol\n"}, "engine.errors imports engine.protocol"),
        ({"tokenflow_blender/runs/task.py": "import bpy\n"}, "must not import bpy"),
        (
            {
                "tokenflow_blender/runs/task.py": "from ..edit import start\n",
                "tokenflow_blender/edit/start.py": "",
            },
            "tokenflow_blender.runs.task (bpy-free) imports tokenflow_blender.edit.start",
        ),
        ({"tokenflow_blender/edit/job.py": "import numpy as np\n"}, "the Blender side imports numpy"),
    ],
)
def test_a_planted_violation_is_found(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    _plant(tmp_path, {"engine/__init__.py": "", "engine/protocol.py": "import json\n", **files})
    found = violations(tmp_path, ["tokenflow_blender"], ["tokenflow_blender/runs"])
    assert any(expected in line for line in found), found


def test_numpy_inside_a_function_is_allowed_on_the_blender_side(tmp_path: Path) -> None:
    _plant(tmp_path, {"engine/__init__.py": "", "tokenflow_blender/x.py": "def f():\n    import numpy\n"})
    assert violations(tmp_path, ["tokenflow_blender"], []) == []


def test_a_planted_cycle_is_found(tmp_path: Path) -> None:
    _plant(
        tmp_path,
        {
            "engine/__init__.py": "",
            "engine/run/__init__.py": "",
            "engine/run/a.py": "from . import b\n",
            "engine/run/b.py": "def f():\n    from ..model import c\n",  # lazily: still a cycle
            "engine/model/__init__.py": "",
            "engine/model/c.py": "from ..run.a import thing\n",
        },
    )
    cycle = ["engine.model.c", "engine.run.a", "engine.run.b", "engine.model.c"]
    assert cycles(tmp_path, ["engine"]) == [cycle]
    (tmp_path / "engine/model/c.py").write_text("import json\n")
    assert cycles(tmp_path, ["engine"]) == []
