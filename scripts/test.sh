#!/usr/bin/env bash
# Set up every environment from nothing (idempotent) and run the whole test suite:
#   ruff, the engine tests (engine venv), the extension's tests inside real Blender 4.2 LTS, 4.5 LTS
#   and 5.0 (bpy module venvs, driving the real engine venv), and Blender's own manifest validator + build.
#
# The environments are set up concurrently (downloads), and the engine tests run beside the Blender
# suites (see "run the suites" below); each concurrent part writes its own log, printed whole and in
# a fixed order with its exit code, and any failure fails the script.
#   TOKENFLOW_TEST_JOBS=1  runs the suites one after another instead (default 2 lanes).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
logs="$(mktemp -d "${TMPDIR:-/tmp}/tokenflow-test.XXXXXX")"
trap 'rm -rf "$logs"' EXIT

# --- concurrent parts: started in the background, each with its own log -------------------------
names=()
pids=()
start() {  # start NAME COMMAND...: run COMMAND in the background, its output into $logs/NAME.log
  local name="$1"
  shift
  ("$@") >"$logs/$name.log" 2>&1 &
  names+=("$name")
  pids+=("$!")
}
finish() {  # wait for every started part in start order; print its header, log and exit code
  local i rc failed=0
  for i in "${!names[@]}"; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    echo "== ${names[$i]}"
    cat "$logs/${names[$i]}.log"
    echo "-- ${names[$i]}: exit code $rc"
    [ "$rc" -eq 0 ] || failed=1
  done
  names=()
  pids=()
  return "$failed"
}
summary() {  # the exit codes again, last, so that a failure is not lost in the logs above it
  local rc=0 name
  for name in "$@"; do
    [ -f "$logs/$name.rc" ] && echo "   $name: exit code $(cat "$logs/$name.rc")"
    [ "$(cat "$logs/$name.rc" 2>/dev/null || echo 1)" = 0 ] || rc=1
  done
  return "$rc"
}

# --- environments (pip downloads and installs; independent of each other) ----------------------
for env in engine bpy-5.0 bpy-4.2 bpy-4.5; do
  start "setup $env" bash -c 'bash scripts/setup_env.sh "$1" >"$2"' _ "$env" "$logs/$env.path"
done
echo "== environments (set up concurrently)"
finish
engine="$(cat "$logs/engine.path")"
bpy50="$(cat "$logs/bpy-5.0.path")"
bpy42="$(cat "$logs/bpy-4.2.path")"
bpy45="$(cat "$logs/bpy-4.5.path")"

export HF_HUB_OFFLINE=1            # no test may reach for a model hub
export OMP_WAIT_POLICY=PASSIVE     # see engine/__main__.py
export TOKENFLOW_ENGINE_PYTHON="$engine/bin/python"

echo "== ruff"
"$engine/bin/ruff" check .
echo "== Flamenco job type (Node $(node --version))"
node --test tests/farm/

# --- run the suites ------------------------------------------------------------------------------
# The engine tests are CPU-bound in one process; the Blender suites mostly wait for the engine
# subprocesses they start. With 2 lanes, lane 1 runs the engine tests and lane 2 the three Blender
# versions one after another, so two cores are both busy for most of the run.
engine_tests() {
  echo "torch $("$engine/bin/python" -c 'import torch; print(torch.__version__)')"
  "$engine/bin/python" -m pytest tests/engine -q -p no:cacheprovider
}
blender_tests() {  # blender_tests VENV
  local venv="$1" demo=()
  echo "Blender $("$venv/bin/python" -c 'import bpy; print(bpy.app.version_string)' 2>/dev/null | tail -n 1)"
  # scripts/demo.sh runs in Blender 5.0, so its test (two real demo runs) runs there only.
  [ "$venv" = "$bpy50" ] || demo=(--ignore=tests/blender/test_demo.py)
  "$venv/bin/python" -m pytest tests/blender -q -p no:cacheprovider "${demo[@]}"
}
suite() {  # suite NAME COMMAND...: run it, its exit code into $logs/NAME.rc (never stops the lane)
  local name="$1" rc=0
  shift
  echo "== $name"
  "$@" || rc=$?
  echo "-- $name: exit code $rc"
  echo "$rc" >"$logs/$name.rc"
}
lane_engine() { suite "engine tests" engine_tests; }
lane_blender() {
  suite "extension tests in Blender 4.2" blender_tests "$bpy42"
  suite "extension tests in Blender 4.5" blender_tests "$bpy45"
  suite "extension tests in Blender 5.0" blender_tests "$bpy50"
}
suites=("engine tests" "extension tests in Blender 4.2" "extension tests in Blender 4.5" "extension tests in Blender 5.0")
if [ "${TOKENFLOW_TEST_JOBS:-2}" = 1 ]; then
  lane_engine
  lane_blender
else
  echo "== engine tests and extension tests in Blender 4.2, 4.5, 5.0 (2 lanes; logs follow when done)"
  start "lane 1" lane_engine
  start "lane 2" lane_blender
  finish || true  # the per-suite exit codes below decide
fi
echo "== exit codes"
summary "${suites[@]}"

echo "== extension manifest: Blender's validator and build"
bash scripts/build_extension.sh "$bpy50" "$root/build"
