#!/usr/bin/env bash
# Print the path of a working Python 3.13 (what Blender 5.1+'s bpy module needs), building one once
# from the distribution's source package where the machine has none.
#
#   bash scripts/python313.sh            # prints e.g. /root/.cache/tokenflow/python-3.13/bin/python3.13
#
# Where it looks, in order:
#   1. $TOKENFLOW_PYTHON313, if set: an interpreter you provide (it must work, or the script stops),
#      or the word "build" to skip the search and use (or make) the cached build.
#   2. python3.13 on PATH, /usr/bin, /usr/local/bin, pyenv's versions: the first that runs, reports
#      3.13 and has venv, ssl, zlib, ctypes, sqlite3, lzma and bz2 (a pyenv shim of a version that is
#      not selected fails to run, and is skipped).
#   3. The per-user build cache: ${TOKENFLOW_BUILD_CACHE:-${XDG_CACHE_HOME:-~/.cache}/tokenflow-build}/python-3.13,
#      outside any clone, so later runs and CI on the same machine reuse it. A build is used only when
#      its listing (every file's sha256, written last) still matches: a half-built, truncated or
#      otherwise damaged build is removed and built again.
#   4. Otherwise it is built (about 6 minutes on 2 cores): CPython's source from Debian 13's source
#      package (apt-get source, through a private apt list so the machine's own sources and package
#      lists are untouched; apt checks the archive's signature), or from the tarball named by
#      $TOKENFLOW_PYTHON313_SOURCE; ./configure && make && make install into a hidden .partial folder,
#      renamed into place only when complete and checked.
# Exit codes: 0 found; 2 a given interpreter is broken; 3 not enough disk; 4 the build failed.
set -euo pipefail
modules="import venv, ensurepip, ssl, zlib, ctypes, sqlite3, lzma, bz2"
cache="${TOKENFLOW_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenflow-build}"  # not the inversion cache: clearing that keeps this
build="$cache/python-3.13"
say() { echo "python313.sh: $*" >&2; }

works() {  # works PYTHON: runs, is 3.13, has the modules a venv with pip and bpy needs
  "$1" -c "import sys; assert sys.version_info[:2] == (3, 13); $modules" >/dev/null 2>&1
}

if [ -n "${TOKENFLOW_PYTHON313:-}" ] && [ "$TOKENFLOW_PYTHON313" != build ]; then
  works "$TOKENFLOW_PYTHON313" || {
    say "TOKENFLOW_PYTHON313=$TOKENFLOW_PYTHON313 is not a working Python 3.13 (it must run and import: $modules)."
    say "  Point it at another interpreter, or unset it to build one into $build."
    exit 2
  }
  echo "$TOKENFLOW_PYTHON313"; exit 0
fi

candidates=(python3.13 /usr/bin/python3.13 /usr/local/bin/python3.13)
[ "${TOKENFLOW_PYTHON313:-}" != build ] || candidates=()
[ "${TOKENFLOW_PYTHON313:-}" = build ] ||
  for dir in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*; do candidates+=("$dir/bin/python3.13"); done
for candidate in ${candidates[@]+"${candidates[@]}"}; do
  path="$(command -v "$candidate" 2>/dev/null)" || continue
  if works "$path"; then echo "$path"; exit 0; fi
done

# Every file's sha256 but the listing's own and compiled bytecode (Python rewrites .pyc files as it
# likes and checks them against their sources itself).
listing() { (cd "$1" && find . \( -path ./SHA256SUMS -o -name __pycache__ \) -prune -o -type f -print0 | sort -z | xargs -0 sha256sum); }
intact() {  # intact DIR: a complete build whose files are all as they were when it was finished
  [ -f "$1/SHA256SUMS" ] && [ "$(listing "$1")" = "$(cat "$1/SHA256SUMS")" ] && works "$1/bin/python3.13"
}
if [ -d "$build" ]; then
  if intact "$build"; then echo "$build/bin/python3.13"; exit 0; fi
  say "the Python 3.13 build in $build is incomplete or damaged: building it again."
  rm -rf "$build"
fi

# Room for the source, the build tree and the installation (measured about 700 MB; some to spare).
mkdir -p "$cache"
need_mb="${TOKENFLOW_PYTHON313_NEED_MB:-1500}"
free_mb=$(( $(df -Pk "$cache" | awk 'NR == 2 {print $4}') / 1024 ))
if [ "$free_mb" -lt "$need_mb" ]; then
  say "not enough disk space in $cache to build Python 3.13: $free_mb MB free, about $need_mb MB needed."
  say "  Free space on that disk, or install a Python 3.13 and set TOKENFLOW_PYTHON313."
  exit 3
fi
# Leftovers of a build that was killed (a .partial folder) are removed once no build holds them.
exec 9>"$cache/python-3.13.lock"
flock 9
if intact "$build" 2>/dev/null; then echo "$build/bin/python3.13"; exit 0; fi  # built while we waited
rm -rf "$cache"/python-3.13.partial-* "$build"
work="$cache/python-3.13.partial-$$"
mkdir -p "$work/src"
trap 'rm -rf "$work"' EXIT

if [ -n "${TOKENFLOW_PYTHON313_SOURCE:-}" ]; then
  tarball="$TOKENFLOW_PYTHON313_SOURCE"
else
  say "no Python 3.13 here: building CPython 3.13 from Debian 13's source package into $build (about 6 minutes)."
  mirror="$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/* *$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  apt_dir="$work/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$apt_dir/sources.list"
  apt_opts=(-q -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
  (cd "$work/src" && apt-get "${apt_opts[@]}" update >&2 && apt-get "${apt_opts[@]}" source --download-only python3.13 >&2) || {
    say "could not fetch Debian's python3.13 source package (apt-get source). Install a Python 3.13"
    say "  (your distribution's python3.13, pyenv install 3.13, python.org) and set TOKENFLOW_PYTHON313."
    exit 4
  }
  tarball="$(ls "$work"/src/python3.13_3.13.*.orig.tar.xz | head -n 1)"
fi
tar -xf "$tarball" -C "$work/src"
srcdir="$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'Python-3.13*' | head -n 1)"
[ -n "$srcdir" ] || { say "$tarball holds no Python-3.13* folder"; exit 4; }
dest="$work/dest"  # make install DESTDIR: the files for $build, staged until complete
(
  cd "$srcdir"
  ./configure --prefix="$build" --with-ensurepip=install >"$work/configure.log" 2>&1
  make -j"$(nproc)" >"$work/make.log" 2>&1
  make install DESTDIR="$dest" >"$work/install.log" 2>&1
) || {
  say "building Python 3.13 failed; the last lines of the logs:"
  tail -n 20 "$work"/*.log >&2
  exit 4
}
staged="$dest$build"
works "$staged/bin/python3.13" || {
  say "the Python 3.13 built in $staged lacks modules ($modules):"
  say "  install the development packages (Debian: libssl-dev zlib1g-dev libffi-dev libsqlite3-dev liblzma-dev libbz2-dev) and run again."
  exit 4
}
listing "$staged" >"$staged/SHA256SUMS"  # last: its presence means complete
mv "$staged" "$build"
say "built $build/bin/python3.13"
echo "$build/bin/python3.13"
