"""The diffusion model: loading, devices, fingerprints, speed-ups, finite checks, the tiny test model.

No bpy; the engine's run folder uses it, never the other way round.
"""
