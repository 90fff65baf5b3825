"""Caches on disk and in memory: atomic file writes, the warm engine's bounded memo. Standard library only."""
