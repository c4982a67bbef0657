"""Layer 5 (application): pipelines, ``condense run`` and the Python API for notebooks."""
