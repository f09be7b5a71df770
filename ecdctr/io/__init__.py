"""Files on any filesystem: storage, JSON, the work-folder layout, whole-then-visible commits, locks."""
