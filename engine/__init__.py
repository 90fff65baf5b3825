"""TokenFlow engine: text-driven, temporally consistent video editing with Stable Diffusion.

Runs in its own Python environment (torch, diffusers, transformers) as a subprocess of Blender or
from the command line (`python -m engine --help`). This package's top level imports only the
standard library, so that Blender can import :mod:`engine.protocol` without the ML stack.
"""
