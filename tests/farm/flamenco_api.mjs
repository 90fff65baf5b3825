// A small implementation of Flamenco 3's job-authoring API (as documented for job type scripts:
// JOB_TYPE, compileJob(job), author.Task / author.Command, task.addCommand / addDependency,
// job.addTask, the `path` module, print), enough to compile a job type file outside the Manager.
import fs from "node:fs";
import posixPath from "node:path/posix";
import vm from "node:vm";

export function loadJobType(file) {
  const tasks = [];
  let counter = 0;
  const author = {
    Task(name, type) {
      if (typeof name !== "string" || !name) throw new Error("author.Task needs a name");
      const task = { id: ++counter, name, type, commands: [], dependencies: [] };
      task.addCommand = (cmd) => { task.commands.push(cmd); };
      task.addDependency = (other) => {
        if (!other || !other.id) throw new Error(`${name}: addDependency needs a task`);
        task.dependencies.push(other);
      };
      return task;
    },
    Command(type, parameters) {
      return { type, parameters };
    },
  };
  const job = {
    settings: {},
    metadata: {},
    addTask(task) {
      if (tasks.some((t) => t.name === task.name)) throw new Error(`duplicate task name ${task.name}`);
      tasks.push(task);
    },
  };
  const context = vm.createContext({ author, path: posixPath, print: () => {}, console });
  vm.runInContext(fs.readFileSync(file, "utf8") + "\n;globalThis.__jt = { JOB_TYPE, compileJob };", context);
  const { JOB_TYPE, compileJob } = context.__jt;

  function compile(settings) {
    tasks.length = 0;
    // The Manager fills in defaults for settings the submission leaves out.
    const filled = {};
    for (const setting of JOB_TYPE.settings) {
      if (setting.key in settings) filled[setting.key] = settings[setting.key];
      else if ("default" in setting) filled[setting.key] = setting.default;
      else if (setting.required) throw new Error(`required setting ${setting.key} missing`);
    }
    compileJob({ ...job, settings: filled });
    // Plain data out of the script's realm: dependencies by task name.
    return tasks.map((t) => ({
      name: t.name,
      type: t.type,
      commands: JSON.parse(JSON.stringify(t.commands)),
      dependencies: t.dependencies.map((d) => d.name),
    }));
  }
  return { JOB_TYPE, compile };
}
