"""condense: dataset distillation that works, is fast, is tested and reports honest numbers."""
__version__ = "0.1.0"
