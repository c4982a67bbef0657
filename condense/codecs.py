"""Label codecs: how a synthetic set's labels are stored, and how to read them back.

This module is layer 1: it holds the *decoders* (and the trivial encoders), so that
:func:`condense.load_synset` can hand out labels of any codec. Codecs that need
training or heavy machinery register themselves from layer 3 with
:func:`register_codec`.

A codec stores its arrays as datasets inside the synthetic set's ``labels/`` HDF5
group and must report the exact number of bytes it stores, so that storage is
accounted honestly next to accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from .errors import ConfigError, FormatError


@dataclass(frozen=True)
class Codec:
    """An encoder/decoder pair.

    ``encode(labels) -> {name: ndarray}`` and ``decode({name: ndarray}, shape) -> Tensor``,
    where ``shape`` is the decoded label tensor's shape ([N] hard, [N, K] or [V, N, K] soft).
    """

    name: str
    encode: Callable[[torch.Tensor], dict[str, np.ndarray]]
    decode: Callable[[Mapping[str, np.ndarray], tuple[int, ...]], torch.Tensor]
    lossless: bool


_CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> None:
    """Make ``codec`` available by name to writers and readers of synthetic sets."""
    _CODECS[codec.name] = codec


def get_codec(name: str) -> Codec:
    try:
        return _CODECS[name]
    except KeyError:
        raise ConfigError(f"unknown label codec {name!r}; known: {', '.join(sorted(_CODECS))}") from None


def codec_names() -> list[str]:
    return sorted(_CODECS)


def _check_keys(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...], codec: str) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise FormatError(f"label codec {codec!r} is missing its array(s) {missing}: the file is corrupt")


def _encode_none(labels: torch.Tensor) -> dict[str, np.ndarray]:
    t = labels.detach().cpu()
    return {"data": t.numpy() if t.dtype == torch.int64 else t.float().numpy()}


def _decode_none(arrays: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
    _check_keys(arrays, ("data",), "none")
    data = np.asarray(arrays["data"])
    if tuple(data.shape) != tuple(shape):
        raise FormatError(f"labels have shape {tuple(data.shape)}, expected {tuple(shape)}")
    return torch.from_numpy(data.copy())


def _encode_fp16(labels: torch.Tensor) -> dict[str, np.ndarray]:
    if not labels.is_floating_point():
        raise ConfigError("codec 'fp16' applies to soft labels only; hard labels are stored as they are")
    return {"data": labels.detach().cpu().to(torch.float16).numpy()}


def _decode_fp16(arrays: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
    return _decode_none(arrays, shape).float()


register_codec(Codec("none", _encode_none, _decode_none, lossless=True))
register_codec(Codec("fp16", _encode_fp16, _decode_fp16, lossless=False))
