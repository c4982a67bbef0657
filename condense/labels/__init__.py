"""Soft labels (layer 3): teachers, relabelling per image or per augmented view, codecs
that compress labels, and the label-lightening projector's training.

    soft = relabel(synset, load_teacher(store, synset), views="per-epoch", epochs=300)
    small = compress(soft, "lowrank:rank=4")

Decoding lives in layer 1 (:mod:`condense.codecs`, :mod:`condense.codec_projector`), so any
reader of a synthetic set gets the labels whatever codec stored them.
"""
from .compress import compress
from .relabel import relabel
from .teachers import Teacher, load_teacher

__all__ = ["Teacher", "compress", "load_teacher", "relabel"]
