"""One job from its checks to the result folder: preflight, outputs, events, the run kinds, merge. No bpy."""
