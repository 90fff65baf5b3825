#!/usr/bin/env bash
# Set up every environment from nothing (idempotent) and run the whole test suite:
#   ruff, the engine tests (engine venv), the extension's tests inside real Blender 4.2 LTS, 4.5 LTS,
#   5.0, 5.1 and 5.2 LTS (bpy module venvs, driving the real engine venv), and Blender's own manifest
#   validator + build in each of those versions.
#
# The environments are set up concurrently (mostly downloads; Blender 5.1+ needs a Python 3.13, which
# scripts/python313.sh finds or, once per machine, builds). The test suites then run in two lanes at
# once; each suite writes its own log, and the logs are printed whole, in a fixed order, with each
# suite's exit code; any failure fails the script.
#   TOKENFLOW_TEST_LANES=2  (the default) two lanes.
#   TOKENFLOW_TEST_LANES=1  the suites one after another, their output live.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
logs="$(mktemp -d "${TMPDIR:-/tmp}/tokenflow-test.XXXXXX")"
trap 'rm -rf "$logs"' EXIT

echo "== environments (set up concurrently)"
pids=()
envs=(engine bpy-5.0 bpy-4.2 bpy-4.5 bpy-5.2 bpy-5.1)
for env in "${envs[@]}"; do
  bash scripts/setup_env.sh "$env" >"$logs/$env.path" 2>"$logs/$env.setup.log" &
  pids+=("$!")
done
failed=0
for env in "${envs[@]}"; do
  rc=0
  wait "${pids[0]}" || rc=$?
  pids=("${pids[@]:1}")
  cat "$logs/$env.setup.log"
  echo "$env: $(cat "$logs/$env.path") (exit code $rc)"
  [ "$rc" -eq 0 ] || failed=1
done
[ "$failed" -eq 0 ] || { echo "== setting up an environment failed" >&2; exit 1; }
engine="$(cat "$logs/engine.path")"
bpy50="$(cat "$logs/bpy-5.0.path")"
bpy42="$(cat "$logs/bpy-4.2.path")"
bpy45="$(cat "$logs/bpy-4.5.path")"
bpy52="$(cat "$logs/bpy-5.2.path")"
bpy51="$(cat "$logs/bpy-5.1.path")"

export HF_HUB_OFFLINE=1            # no test may reach for a model hub
export OMP_WAIT_POLICY=PASSIVE     # see engine/__main__.py
export TOKENFLOW_ENGINE_PYTHON="$engine/bin/python"

echo "== ruff"
"$engine/bin/ruff" check .
echo "== Flamenco job type (Node $(node --version))"
node --test tests/farm/

# --- the test suites -------------------------------------------------------------------------------
engine_tests() {
  echo "torch $("$engine/bin/python" -c 'import torch; print(torch.__version__)')"
  "$engine/bin/python" -m pytest tests/engine -q -p no:cacheprovider
}
blender_tests() {  # blender_tests VENV
  local venv="$1" demo=()
  echo "Blender $("$venv/bin/python" -c 'import bpy; print(bpy.app.version_string)' 2>/dev/null | tail -n 1)"
  # The demo's test (two real demo runs) runs in 5.2, the version scripts/demo.sh uses, and in 5.0.
  [ "$venv" = "$bpy52" ] || [ "$venv" = "$bpy50" ] || demo=(--ignore=tests/blender/test_demo.py)
  "$venv/bin/python" -m pytest tests/blender -q -p no:cacheprovider "${demo[@]}"
}
names=("engine tests" "extension tests in Blender 4.2" "extension tests in Blender 4.5"
  "extension tests in Blender 5.0" "extension tests in Blender 5.2" "extension tests in Blender 5.1")
run_suite() {  # run_suite INDEX (into names)
  case "$1" in
    0) engine_tests ;;
    1) blender_tests "$bpy42" ;;
    2) blender_tests "$bpy45" ;;
    3) blender_tests "$bpy50" ;;
    4) blender_tests "$bpy52" ;;
    5) blender_tests "$bpy51" ;;
  esac
}

suite() {  # suite INDEX: run suite INDEX, its output into $logs/suite-INDEX.log, its exit code into .rc
  local i="$1" rc=0 started=$SECONDS
  run_suite "$i" >"$logs/suite-$i.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/suite-$i.rc"
  echo "-- ${names[$i]}: exit code $rc after $((SECONDS - started)) s"
}

if [ "${TOKENFLOW_TEST_LANES:-2}" = 1 ]; then
  for i in "${!names[@]}"; do
    echo "== ${names[$i]}"
    run_suite "$i"
  done
else
  # Each suite keeps about one core busy, so one after another the second core mostly idles. Two
  # lanes of about equal CPU time use both cores (each suite takes 3.5-5 minutes here).
  # The suites share nothing they write: each Blender session has its own HOME, assets and engine
  # cache, and pytest's numbered temporary folders are made for concurrent sessions.
  echo "== engine tests and extension tests in Blender 4.2, 4.5, 5.0, 5.2, 5.1: two lanes at once (engine, 4.2, 5.1 | 5.2, 5.0, 4.5); logs follow"
  { suite 0; suite 1; suite 5; } &
  lane1=$!
  { suite 4; suite 3; suite 2; } &
  lane2=$!
  wait "$lane1" || true  # a suite's exit code is in its .rc file; a missing one is a failure below
  wait "$lane2" || true
  failed=()
  for i in "${!names[@]}"; do
    echo "== ${names[$i]}"
    cat "$logs/suite-$i.log" 2>/dev/null || echo "(no log)"
    rc="$(cat "$logs/suite-$i.rc" 2>/dev/null || echo "none")"
    echo "-- ${names[$i]}: exit code $rc"
    [ "$rc" = 0 ] || failed+=("${names[$i]} (exit code $rc)")
  done
  if [ "${#failed[@]}" -gt 0 ]; then
    printf '== FAILED: %s\n' "${failed[@]}" >&2
    exit 1
  fi
fi

# Each version's own extension tool validates the manifest and builds the zip; 5.2's zip is kept.
for venv in "$bpy42" "$bpy45" "$bpy50" "$bpy51" "$bpy52"; do
  echo "== extension manifest: the validator and build of $(basename "$venv")"
  out="$logs/build-$(basename "$venv")"
  [ "$venv" != "$bpy52" ] || out="$root/build"
  bash scripts/build_extension.sh "$venv" "$out"
done
