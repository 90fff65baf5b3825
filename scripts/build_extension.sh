#!/usr/bin/env bash
# Validate the extension's manifest with Blender's own extension CLI (shipped inside the bpy wheel)
# and build the installable zip (engine/ and the Flamenco job type included; tests, benchmarks,
# CI and scripts excluded by [build] paths_exclude_pattern in blender_manifest.toml).
#
#   bash scripts/build_extension.sh [BPY_VENV] [OUT_DIR]
#     BPY_VENV  a virtual environment with the bpy module (default .venvs/bpy-5.2)
#     OUT_DIR   where the zip goes (default build/)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venvs/bpy-5.2}"
out="${2:-$root/build}"
python="$venv/bin/python"
[ -x "$python" ] || { echo "no Python at $python: run bash scripts/setup_env.sh bpy-5.2" >&2; exit 2; }

scripts=""
for candidate in "$venv"/lib/python3.*/site-packages/bpy/*/scripts; do
  if [ -f "$candidate/addons_core/bl_pkg/cli/blender_ext.py" ]; then scripts="$candidate"; fi
done
[ -n "$scripts" ] || { echo "Blender's extension CLI not found in $venv (bpy/<ver>/scripts)" >&2; exit 2; }
cli="$scripts/addons_core/bl_pkg/cli/blender_ext.py"
tags="$scripts/modules/_bpy_internal/extensions/tags.py"

echo "validate: $cli"
"$python" "$cli" validate "$root" --valid-tags "$tags"
mkdir -p "$out"
id="$(sed -n 's/^id *= *"\(.*\)"/\1/p' "$root/blender_manifest.toml")"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/blender_manifest.toml")"
rm -f "$out/$id-$version.zip"
"$python" "$cli" build --source-dir "$root" --output-dir "$out" --valid-tags "$tags"
zip="$out/$id-$version.zip"
[ -f "$zip" ] || { echo "the build did not produce $zip" >&2; exit 1; }
# The zip must carry the licence and the engine, and none of the development files.
"$python" - "$zip" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
missing = [n for n in ("blender_manifest.toml", "LICENSE", "__init__.py", "engine/__main__.py", "engine/protocol.py",
                       "engine/requirements.txt", "tokenflow_blender/__init__.py", "ui/panels.py",
                       "farm/flamenco/tokenflow-video-edit.js") if n not in names]
extra = [n for n in names if n.split("/")[0] in ("tests", "bench", "training", "models", "scripts", ".venvs", ".ci", ".git")]
if missing or extra:
    sys.exit(f"bad extension zip: missing {missing}, unexpected {extra[:5]}")
print(f"{sys.argv[1]}: {len(names)} files")
PY
