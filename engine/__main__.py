"""`python -m engine`: the engine's command line (see engine/cli.py)."""

import os
import sys

# OpenMP threads that spin while waiting make CPU runs many times slower whenever another process
# (Blender, a second job) wants a core; sleeping waits cost little. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

sys.exit(main())
