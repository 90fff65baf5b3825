"""TokenFlow itself: DDIM inversion, PnP editing, extended attention, matching, keyframes. No bpy, no I/O."""
