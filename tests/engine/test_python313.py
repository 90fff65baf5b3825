"""scripts/python313.sh: a Python 3.13 for Blender 5.1+'s bpy, built once into a per-user cache.

The real build takes minutes, so these tests give the script a stand-in source tarball
(``TOKENFLOW_PYTHON313_SOURCE``) whose ``configure`` and ``Makefile`` behave like CPython's (configure
takes ``--prefix``, ``make install`` honours ``DESTDIR``) and install a stand-in interpreter that works
only while its library file is intact. Each fault is caused for real: a damaged file in the build, a
build killed half-way, a failing compile, a full disk, a broken interpreter named by the user.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "python313.sh"

CONFIGURE = """#!/bin/sh
prefix=""
for arg in "$@"; do case "$arg" in --prefix=*) prefix="${arg#--prefix=}" ;; esac; done
[ -z "$FAIL_CONFIGURE" ] || { echo "configure: error: no C compiler" >&2; exit 1; }
printf 'PREFIX = %s\\n' "$prefix" > Makefile.vars
"""
MAKEFILE = """include Makefile.vars
all:
\techo compiled >> "$(BUILDS)"
install:
\tmkdir -p "$(DESTDIR)$(PREFIX)/bin" "$(DESTDIR)$(PREFIX)/lib/python3.13"
\tcp fakepython "$(DESTDIR)$(PREFIX)/bin/python3.13"
\tchmod +x "$(DESTDIR)$(PREFIX)/bin/python3.13"
\techo "the standard library" > "$(DESTDIR)$(PREFIX)/lib/python3.13/os.py"
"""
# Works (exit 0) only while the library it installed beside itself is intact.
FAKEPYTHON = """#!/bin/sh
here="$(cd "$(dirname "$0")/.." && pwd)"
[ "$(cat "$here/lib/python3.13/os.py" 2>/dev/null)" = "the standard library" ]
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "src" / "Python-3.13.9"
    folder.mkdir(parents=True)
    for name, text in (("configure", CONFIGURE), ("Makefile", MAKEFILE), ("fakepython", FAKEPYTHON)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    tarball = tmp_path / "Python-3.13.9.tar.xz"
    with tarfile.open(tarball, "w:xz") as tar:
        tar.add(folder, arcname=folder.name)
    return tarball


def run(tmp_path: Path, source: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "TOKENFLOW_BUILD_CACHE": str(tmp_path / "cache"),
        "TOKENFLOW_PYTHON313": "build",  # never the machine's own Python 3.13
        "TOKENFLOW_PYTHON313_SOURCE": str(source),
        "BUILDS": str(tmp_path / "builds.log"),
    }
    return subprocess.run(
        ["bash", str(SCRIPT)], env={**base, **env}, capture_output=True, text=True, timeout=120
    )


def builds(tmp_path: Path) -> int:
    log = tmp_path / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_built_once_then_reused(tmp_path: Path, source: Path) -> None:
    first = run(tmp_path, source)
    assert first.returncode == 0, first.stderr
    python = tmp_path / "cache" / "python-3.13" / "bin" / "python3.13"
    assert first.stdout.strip() == str(python)
    assert subprocess.run([str(python)]).returncode == 0  # runs from its final place
    assert (python.parents[1] / "SHA256SUMS").is_file()
    second = run(tmp_path, source)
    assert second.returncode == 0 and second.stdout.strip() == str(python)
    assert builds(tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["python-3.13", "python-3.13.lock"]


@pytest.mark.parametrize("damage", ["truncated", "changed", "removed", "added"])
def test_a_damaged_build_is_detected_and_rebuilt(tmp_path: Path, source: Path, damage: str) -> None:
    assert run(tmp_path, source).returncode == 0
    build = tmp_path / "cache" / "python-3.13"
    library = build / "lib" / "python3.13" / "os.py"
    if damage == "truncated":
        library.write_text("the stan")
    elif damage == "changed":  # still runs: only the listing can tell
        (build / "bin" / "python3.13").write_text(FAKEPYTHON + "# edited\n")
    elif damage == "removed":
        library.unlink()
    else:
        (build / "lib" / "python3.13" / "stray.py").write_text("")
    again = run(tmp_path, source)
    assert again.returncode == 0, again.stderr
    assert "incomplete or damaged: building it again" in again.stderr
    assert builds(tmp_path) == 2
    assert library.read_text().strip() == "the standard library"
    assert not (build / "lib" / "python3.13" / "stray.py").exists()


def test_a_half_built_cache_is_rebuilt(tmp_path: Path, source: Path) -> None:
    """A build killed before its listing was written, and a killed build's staging folder."""
    assert run(tmp_path, source).returncode == 0
    build = tmp_path / "cache" / "python-3.13"
    (build / "SHA256SUMS").unlink()  # as if killed between install and listing
    leftover = tmp_path / "cache" / "python-3.13.partial-12345"
    (leftover / "src").mkdir(parents=True)
    again = run(tmp_path, source)
    assert again.returncode == 0, again.stderr
    assert builds(tmp_path) == 2
    assert (build / "SHA256SUMS").is_file()
    assert not leftover.exists()


def test_a_failed_build_leaves_nothing(tmp_path: Path, source: Path) -> None:
    result = run(tmp_path, source, FAIL_CONFIGURE="1")
    assert result.returncode == 4
    assert "building Python 3.13 failed" in result.stderr
    assert "no C compiler" in result.stderr  # the log's last lines name the cause
    assert result.stdout == ""
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["python-3.13.lock"]


def test_a_full_disk_is_refused_before_building(tmp_path: Path, source: Path) -> None:
    result = run(tmp_path, source, TOKENFLOW_PYTHON313_NEED_MB=str(10**9))
    assert result.returncode == 3
    assert "not enough disk space" in result.stderr and "TOKENFLOW_PYTHON313" in result.stderr
    assert builds(tmp_path) == 0
    assert not (tmp_path / "cache" / "python-3.13").exists()


def test_a_given_interpreter_must_work(tmp_path: Path, source: Path) -> None:
    broken = tmp_path / "python3.13"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    result = run(tmp_path, source, TOKENFLOW_PYTHON313=str(broken))
    assert result.returncode == 2
    assert f"TOKENFLOW_PYTHON313={broken} is not a working Python 3.13" in result.stderr
    assert builds(tmp_path) == 0


def test_an_existing_python313_is_used(tmp_path: Path, source: Path) -> None:
    """Found on PATH, nothing is built (a stand-in that answers like a Python 3.13)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3.13").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "python3.13").chmod(0o755)
    env = {"PATH": f"{bindir}{os.pathsep}/usr/bin:/bin", "TOKENFLOW_PYTHON313": ""}
    result = run(tmp_path, source, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(bindir / "python3.13")
    assert builds(tmp_path) == 0
