"""Frames in and out: reading, EXR plates, colour management, mattes, delivery. No bpy, no model."""
