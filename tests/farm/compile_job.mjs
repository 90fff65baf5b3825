// node tests/farm/compile_job.mjs JOBTYPE.js SETTINGS.json -> the compiled tasks as JSON on stdout.
import fs from "node:fs";

import { loadJobType } from "./flamenco_api.mjs";

const [file, settingsFile] = process.argv.slice(2);
const tasks = loadJobType(file).compile(JSON.parse(fs.readFileSync(settingsFile, "utf8")));
process.stdout.write(JSON.stringify(tasks, null, 2));
