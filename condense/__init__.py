"""condense: dataset distillation that works, is fast, is tested and reports honest numbers.

Top-level names are the ones a notebook needs first; everything else lives in its
module (``condense.data``, ``condense.nets``, ``condense.augment``, ...).
"""
from .synset import LabelSpec, SynSet, load_synset
from .train import TrainProtocol, evaluate, evaluate_synset
from .version import __version__

__all__ = ["LabelSpec", "SynSet", "TrainProtocol", "evaluate", "evaluate_synset", "load_synset", "__version__"]
