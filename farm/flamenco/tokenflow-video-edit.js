// SPDX-License-Identifier: GPL-3.0-or-later
// Flamenco 3.x job type: TokenFlow video edit of one shot, split into chunks across workers.
//
// Install: copy this file into the Manager's `scripts/` folder and restart the Manager.
// Tasks: one `prepare` task fills the shared inversion cache, one task per chunk runs the
// engine on its frame range (every chunk recomputes the same keyframes, so the chunks join
// without seams), and one `merge` task checks and assembles the chunks into the output folder.
// Route the job to GPU workers with a worker tag when submitting (Blender's "Submit to farm"
// sets the tag from the extension's preferences).

const JOB_TYPE = {
  label: "TokenFlow Video Edit",
  description: "Text-driven, temporally consistent edit of an image sequence (TokenFlow engine)",
  settings: [
    { key: "job_file", type: "string", subtype: "file_path", required: true,
      description: "Engine job JSON on shared storage (frames, prompts, model, settings)" },
    { key: "prompt", type: "string", required: true, description: "What the edited shot should look like" },
    { key: "model", type: "string", required: true,
      description: "Model as the workers see it: hub id, diffusers folder or .safetensors file" },
    { key: "frame_count", type: "int32", required: true, description: "Number of frames in the shot" },
    { key: "keyframe_stride", type: "int32", default: 8, required: true,
      description: "One keyframe per this many frames; chunks are multiples of it" },
    { key: "chunk_size", type: "int32", default: 48, required: true,
      description: "Frames per worker task (rounded up to a multiple of the keyframe stride)" },
    { key: "output", type: "string", subtype: "dir_path", required: true,
      description: "Final output folder (must not exist); chunks go next to it" },
    { key: "cache_dir", type: "string", subtype: "dir_path", default: "",
      description: "Shared inversion cache (empty: each worker inverts what it needs)" },
    { key: "engine_python", type: "string", default: "{tokenflow_python}", required: true,
      description: "The engine environment's Python on the workers (a Manager variable by default)" },
    { key: "engine_dir", type: "string", default: "{tokenflow_engine}", required: true,
      description: "The extension's engine/ folder on the workers (a Manager variable by default)" },
  ],
};

function chunkRanges(frameCount, chunkSize, stride) {
  const size = Math.max(stride, Math.ceil(chunkSize / stride) * stride);
  const ranges = [];
  for (let start = 0; start < frameCount; start += size) {
    ranges.push([start, Math.min(start + size, frameCount)]);
  }
  return ranges;
}

function pad(n) {
  return String(n).padStart(6, "0");
}

function compileJob(job) {
  const s = job.settings;
  if (s.frame_count < 1) throw `frame_count must be at least 1, got ${s.frame_count}`;
  if (s.keyframe_stride < 1) throw `keyframe_stride must be at least 1, got ${s.keyframe_stride}`;
  const launch = path.join(s.engine_dir, "launch.py");
  const common = ["--prompt", s.prompt, "--model", s.model];
  if (s.cache_dir) common.push("--cache-dir", s.cache_dir);
  const chunksDir = `${s.output}.chunks`;

  const prepare = author.Task("prepare", "misc");
  prepare.addCommand(author.Command("exec", {
    exe: s.engine_python,
    args: [launch, "run", s.job_file, "--stage", "invert"].concat(common),
  }));
  job.addTask(prepare);

  const chunkDirs = [];
  const chunkTasks = [];
  for (const [start, end] of chunkRanges(s.frame_count, s.chunk_size, s.keyframe_stride)) {
    const dir = path.join(chunksDir, `${pad(start)}-${pad(end)}`);
    const task = author.Task(`chunk-${start}-${end - 1}`, "misc");
    task.addCommand(author.Command("exec", {
      exe: s.engine_python,
      args: [launch, "run", s.job_file, "--frame-range", `${start}:${end}`, "--output", dir].concat(common),
    }));
    task.addDependency(prepare);
    job.addTask(task);
    chunkDirs.push(dir);
    chunkTasks.push(task);
  }

  const merge = author.Task("merge", "file-management");
  merge.addCommand(author.Command("exec", {
    exe: s.engine_python,
    args: [launch, "merge", "--out", s.output].concat(chunkDirs),
  }));
  for (const task of chunkTasks) merge.addDependency(task);
  job.addTask(merge);
}
