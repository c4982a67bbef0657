"""Layer 2: the expert-trajectory store and the expert recorder (see docs/ARCHITECTURE.md)."""
