"""Compress a set's labels with a codec (:mod:`condense.codecs`), keeping the stored arrays.

The returned set's labels are the *decoded* labels, i.e. exactly what evaluation will
train on, and its payload is exactly what will be written: what is measured is what is
stored.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from condense.codecs import LabelContext, canonical_codec, decode_labels, encode_labels, parse_codec
from condense.runtime.errors import ConfigError
from condense.synset import SynSet

from .projector import ProjectorFit, fit_projector


def compress(s: SynSet, codec: str, fit: ProjectorFit = ProjectorFit(), progress: bool = False) -> SynSet:
    """``s`` with its soft labels stored by ``codec`` (a spec string, e.g. ``"topk:k=3,bits=8"``).

    Raises ConfigError for an unknown codec, an out-of-range parameter (k > classes,
    rank too large) or hard labels given to a codec that compresses soft ones.
    """
    fam, params = parse_codec(codec)
    text = canonical_codec(codec)
    spec = s.label_spec
    if fam.name != "none" and spec.kind not in ("logits", "probabilities"):
        raise ConfigError(f"codec {fam.name!r} compresses soft labels; this set has {spec.kind} labels "
                          "(make soft labels with --teacher first)")
    report: dict[str, Any] = {}
    if fam.name == "projector":
        arrays, report = fit_projector(s, params, fit, progress)
    else:
        arrays = encode_labels(text, s.labels, s.label_context())
    new_spec = replace(spec, kind=fam.output_kind or spec.kind, codec=text)
    labels = decode_labels(text, arrays, tuple(s.labels.shape), LabelContext(s.images, new_spec, s.num_classes))
    history = list(s.provenance.get("label_codecs", [])) + [
        {"codec": text, "from": spec.codec, **{k: v for k, v in report.items() if k != "loss"}}]
    out = replace(s, labels=labels, label_spec=new_spec, label_payload=arrays,
                  provenance=dict(s.provenance, label_codecs=history))
    out.validate()
    return out
