"""Configuration: settings declared once (:mod:`.declare`), shared parts (:mod:`.parts`), presets (:mod:`.presets`)."""
from .declare import Setting, check_fields, configclass, declared, describe, make_config, setting
from .presets import META_KEYS, PRESET_DIR, load_preset, preset_names, preset_path, preset_section

__all__ = ["META_KEYS", "PRESET_DIR", "Setting", "check_fields", "configclass", "declared", "describe", "load_preset",
           "make_config", "preset_names", "preset_path", "preset_section", "setting"]
