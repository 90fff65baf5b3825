"""Settings: scene properties, job state, preferences (bpy); imports only bpy-free modules elsewhere."""
