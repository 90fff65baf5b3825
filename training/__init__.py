"""Training of the micro Stable Diffusion test model (not part of the extension zip, not run in CI)."""
