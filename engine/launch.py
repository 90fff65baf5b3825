"""Run the engine by file path, `python /path/to/engine/launch.py ARGS`, where `python -m engine`
cannot be used because the working directory is not the extension's (farm workers, job types)."""

import os
import runpy
import sys

if __name__ == "__main__":
    # Replace this folder on the path by its parent, so `engine` imports as a package.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.argv[0] = "python -m engine"
    runpy.run_module("engine", run_name="__main__", alter_sys=True)
