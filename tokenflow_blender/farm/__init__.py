"""The farm: Flamenco client, child calls, farm task (no bpy), OCIO share, submit, operators; no ui/."""
