// node --test tests/farm: the Flamenco job type compiles a 240-frame shot into the right tasks.
import assert from "node:assert/strict";
import path from "node:path";
import test from "node:test";
import { fileURLToPath } from "node:url";

import { loadJobType } from "./flamenco_api.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const jobType = loadJobType(path.join(here, "..", "..", "farm", "flamenco", "tokenflow-video-edit.js"));

const settings = {
  job_file: "/farm/shots/sh010/tokenflow-job.json",
  prompt: "a watercolor painting",
  model: "/farm/models/sd-2-1-base",
  frame_count: 240,
  keyframe_stride: 8,
  chunk_size: 60, // not a multiple of 8: rounds up to 64
  output: "/farm/shots/sh010/edit_v001",
  cache_dir: "/farm/cache/tokenflow",
};

test("settings declare prompt, model and chunk size with types", () => {
  const keys = Object.fromEntries(jobType.JOB_TYPE.settings.map((s) => [s.key, s]));
  assert.equal(keys.prompt.type, "string");
  assert.equal(keys.model.type, "string");
  assert.equal(keys.chunk_size.type, "int32");
  assert.equal(keys.engine_python.default, "{tokenflow_python}");
});

test("240 frames: prepare, four chunks of 64/64/64/48, merge", () => {
  const tasks = jobType.compile(settings);
  assert.deepEqual(tasks.map((t) => t.name),
    ["prepare", "chunk-0-63", "chunk-64-127", "chunk-128-191", "chunk-192-239", "merge"]);
  for (const task of tasks) {
    assert.equal(task.commands.length, 1);
    assert.equal(task.commands[0].type, "exec");
    assert.equal(task.commands[0].parameters.exe, "{tokenflow_python}");
  }
  const [prepare, ...rest] = tasks;
  const merge = rest.pop();
  assert.deepEqual(prepare.commands[0].parameters.args, [
    "{tokenflow_engine}/launch.py", "run", settings.job_file, "--stage", "invert",
    "--prompt", settings.prompt, "--model", settings.model, "--cache-dir", settings.cache_dir,
  ]);
  assert.deepEqual(prepare.dependencies, []);
  const ranges = rest.map((t) => {
    const args = t.commands[0].parameters.args;
    assert.deepEqual(args.slice(0, 3), ["{tokenflow_engine}/launch.py", "run", settings.job_file]);
    assert.deepEqual(t.dependencies, ["prepare"]);
    const range = args[args.indexOf("--frame-range") + 1];
    assert.equal(args[args.indexOf("--prompt") + 1], settings.prompt);
    assert.equal(args[args.indexOf("--model") + 1], settings.model);
    return [range, args[args.indexOf("--output") + 1]];
  });
  assert.deepEqual(ranges, [
    ["0:64", "/farm/shots/sh010/edit_v001.chunks/000000-000064"],
    ["64:128", "/farm/shots/sh010/edit_v001.chunks/000064-000128"],
    ["128:192", "/farm/shots/sh010/edit_v001.chunks/000128-000192"],
    ["192:240", "/farm/shots/sh010/edit_v001.chunks/000192-000240"],
  ]);
  assert.equal(merge.type, "file-management");
  assert.deepEqual(merge.dependencies, rest.map((t) => t.name));
  assert.deepEqual(merge.commands[0].parameters.args,
    ["{tokenflow_engine}/launch.py", "merge", "--out", settings.output, ...ranges.map((r) => r[1])]);
});

test("every chunk starts on a keyframe-stride multiple and the chunks tile the shot", () => {
  for (const [frames, stride, size] of [[240, 8, 48], [241, 8, 48], [7, 8, 48], [100, 6, 10]]) {
    const tasks = jobType.compile({ ...settings, frame_count: frames, keyframe_stride: stride, chunk_size: size });
    const ranges = tasks.filter((t) => t.name.startsWith("chunk-")).map((t) => {
      const args = t.commands[0].parameters.args;
      return args[args.indexOf("--frame-range") + 1].split(":").map(Number);
    });
    let expected = 0;
    for (const [start, end] of ranges) {
      assert.equal(start, expected);
      assert.equal(start % stride, 0);
      assert.ok(end > start);
      expected = end;
    }
    assert.equal(expected, frames);
  }
});

test("without a shared cache the cache flag is left out; bad numbers are refused", () => {
  const tasks = jobType.compile({ ...settings, cache_dir: "" });
  assert.ok(!tasks[0].commands[0].parameters.args.includes("--cache-dir"));
  assert.throws(() => jobType.compile({ ...settings, frame_count: 0 }), /frame_count/);
});
