"""condense: dataset distillation that works, is fast, is tested and reports honest numbers.

Top-level names are the ones a notebook needs first: the Python API
(:func:`synthesize`, :func:`record_experts`, :func:`train_teacher`, :func:`evaluate_sets`, :func:`label_curve`,
keyword names identical to the CLI's flags), reading a set, and training on one. Everything
else lives in its module (``condense.data``, ``condense.nets``, ``condense.augment``, ...).
Importing condense changes nothing in the process and imports neither jax nor the layers
above the core until an API function is first used.
"""
from .synset import LabelSpec, SynSet, load_synset
from .train import TrainProtocol, evaluate, evaluate_synset
from .version import __version__

_API = ("synthesize", "record_experts", "train_teacher", "evaluate_sets", "label_curve")

__all__ = ["LabelSpec", "SynSet", "TrainProtocol", "evaluate", "evaluate_synset", "load_synset", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:  # the application layer, imported on first use
        from .workflows import api

        return getattr(api, name)
    raise AttributeError(f"module 'condense' has no attribute {name!r}")
