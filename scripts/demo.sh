#!/usr/bin/env bash
# The main job: headless Blender (the bpy module) builds a scene with an image strip of real frames
# (cityCC0.mpg, CC0), runs "Preview keyframes" then "Propagate" through the extension's own
# operators and the real engine subprocess, and saves the .blend and a before/after contact sheet.
#
#   bash scripts/demo.sh                       # offline: the trained micro SD (models/microsd)
#   bash scripts/demo.sh --model ID_OR_PATH    # a real model: hub id, diffusers folder or .safetensors
#   bash scripts/demo.sh --out DIR             # where the .blend, frames and contact sheet go (default out/demo)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
engine="$(bash scripts/setup_env.sh engine)"
bpy52="$(bash scripts/setup_env.sh bpy-5.2)"  # Blender 5.2 LTS (Python 3.13: found or built once)
export OMP_WAIT_POLICY=PASSIVE
export TOKENFLOW_ENGINE_PYTHON="$engine/bin/python"

args=("$@")
if [[ " $* " != *" --model "* ]]; then
  model="$root/models/microsd"  # the micro SD trained in this repository (training/), committed
  echo "No --model given: using the trained micro SD test model ($model)."
  echo "For a real edit: bash scripts/demo.sh --model stabilityai/stable-diffusion-2-1-base"
  args+=(--model "$model")
  # its captions (models/microsd/README.md); a prompt it never saw would give a meaningless edit
  [[ " $* " == *" --prompt "* ]] || args+=(--prompt "a pencil sketch of tall glass buildings at night")
  [[ " $* " == *" --source-prompt "* ]] || args+=(--source-prompt "tall glass buildings at night")
fi
exec "$bpy52/bin/python" scripts/demo.py "${args[@]}"
