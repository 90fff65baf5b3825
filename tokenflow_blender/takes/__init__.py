"""Takes: manifests and estimates (manifest.py, no bpy), the list, operators; must not import farm/, ui/."""
