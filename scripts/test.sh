#!/usr/bin/env bash
# Set up every environment from nothing (idempotent) and run the whole test suite:
#   ruff, the engine tests (engine venv), the extension's tests inside real Blender 4.2 LTS, 4.5 LTS
#   and 5.0 (bpy module venvs, driving the real engine venv), and Blender's own manifest validator + build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
engine="$(bash scripts/setup_env.sh engine)"
bpy50="$(bash scripts/setup_env.sh bpy-5.0)"
bpy42="$(bash scripts/setup_env.sh bpy-4.2)"
bpy45="$(bash scripts/setup_env.sh bpy-4.5)"

export HF_HUB_OFFLINE=1            # no test may reach for a model hub
export OMP_WAIT_POLICY=PASSIVE     # see engine/__main__.py
export TOKENFLOW_ENGINE_PYTHON="$engine/bin/python"

echo "== ruff"
"$engine/bin/ruff" check .
echo "== Flamenco job type (Node $(node --version))"
node --test tests/farm/
echo "== engine tests (torch $("$engine/bin/python" -c 'import torch; print(torch.__version__)'))"
"$engine/bin/python" -m pytest tests/engine -q -p no:cacheprovider
for venv in "$bpy42" "$bpy45" "$bpy50"; do
  echo "== extension tests in Blender $("$venv/bin/python" -c 'import bpy; print(bpy.app.version_string)' 2>/dev/null | tail -n 1)"
  # scripts/demo.sh runs in Blender 5.0, so its test (two real demo runs) runs there only.
  demo=(); [ "$venv" = "$bpy50" ] || demo=(--ignore=tests/blender/test_demo.py)
  "$venv/bin/python" -m pytest tests/blender -q -p no:cacheprovider "${demo[@]}"
done
echo "== extension manifest: Blender's validator and build"
bash scripts/build_extension.sh "$bpy50" "$root/build"
