"""Child processes: shared process helper, one-shot task, warm engine, task registry; never imports bpy."""
