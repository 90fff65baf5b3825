"""An edit from button to strip: job, start, result, operators; must not import farm/ or ui/."""
