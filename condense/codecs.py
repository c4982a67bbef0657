"""Label codecs: how a synthetic set's labels are stored, and how to read them back.

This module is layer 1: it holds every codec's *decoder* (so :func:`condense.load_synset`
hands out labels of any codec) and the encoders that are plain array math. The
label-lightening projector's encoder trains a network and lives in layer 3
(:mod:`condense.labels.projector`); it produces the stored arrays directly.

A codec is named by a spec string ``name`` or ``name:key=value,key=value``
(``topk:k=3,bits=8``); :func:`parse_codec` checks it and gives the canonical string
stored in the file. A codec stores its arrays as datasets inside the set's ``labels/``
group; what is stored is counted byte for byte (``nbytes`` of those arrays), split into
label bytes and label-generator bytes (the projector's weights).

Codecs and what they keep (K classes; labels [N, K] static or [V, N, K] per view):

``none``       the labels as they are (float32 soft, int64 hard). Lossless.
``fp16``       float16. Relative error <= 2^-11 per entry.
``topk``       per label: the k largest probabilities of softmax(logits / T) as indices
               (uint8, or uint16 beyond 256 classes) and values quantised to ``bits``
               (4, 8, 16; 4-bit values packed two per byte); the remaining mass
               1 - sum(top k) is spread uniformly over the other K - k classes. Decodes to
               probabilities. Error bound per entry: a kept entry is off by at most
               d = 1 / (2 (2^bits - 1)); any other entry by at most p_(k+1) + k d / (K - k),
               where p_(k+1) is the largest probability not kept.
``lowrank``    the label matrix (per view: [V, N*K], views x (image, class); static:
               [N, K]) as its row mean plus a rank-``rank`` truncated SVD of the centred
               matrix, factors stored as float16 (``bits=16``) or float32. Works on logits
               (probabilities are turned into T * log p first) and decodes to logits. The
               Frobenius error equals the discarded singular values' energy (Eckart-Young),
               plus float16 rounding of the factors.
``projector``  no labels at all: a small label generator (HeLlO's label-lightening
               projector) regenerates them from the images. See :mod:`condense.codec_projector`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .runtime.errors import ConfigError, FormatError


@dataclass(frozen=True)
class Param:
    """One codec parameter: its type, default (None: required) and allowed values."""

    kind: type
    default: Any = None
    allowed: tuple[Any, ...] | None = None
    minimum: int | None = None


@dataclass(frozen=True)
class LabelContext:
    """What a decoder may need besides its arrays: the set's images [N, C, H, W] and label
    meaning (temperature, view mode, view seed and strategy; see :class:`condense.synset.LabelSpec`)."""

    images: torch.Tensor | None
    spec: Any  # LabelSpec (imported lazily: synset imports this module)
    num_classes: int


Encoder = Callable[[torch.Tensor, LabelContext, Mapping[str, Any]], dict[str, np.ndarray]]
Decoder = Callable[[Mapping[str, np.ndarray], tuple[int, ...], LabelContext, Mapping[str, Any]], torch.Tensor]
Check = Callable[[Mapping[str, np.ndarray], tuple[int, ...], LabelContext, Mapping[str, Any]], None]

# A label file is small and its header is attacker-controlled: the declared label shape may
# only be decoded if the stored arrays determine it and the decoded tensor stays within a
# memory budget, so no declared count can make a load allocate or loop far beyond the file.
MAX_LABEL_ELEMENTS = 2 ** 31
MAX_LABEL_DIMS = 8


@lru_cache(maxsize=1)
def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def label_element_budget(bytes_per_element: int) -> tuple[int, str]:
    """(most decoded label values a codec may produce, what sets that bound): the fixed
    :data:`MAX_LABEL_ELEMENTS`, or a quarter of the RAM at ``bytes_per_element`` if lower."""
    ram = physical_memory()
    if ram is not None and ram // 4 // bytes_per_element < MAX_LABEL_ELEMENTS:
        return ram // 4 // bytes_per_element, f"a quarter of this machine's {ram / 2**30:.1f} GiB of RAM"
    return MAX_LABEL_ELEMENTS, "the label size limit"


def check_budget(shape: tuple[int, ...], bytes_per_element: int) -> None:
    """FormatError unless labels of ``shape`` (decoded at ``bytes_per_element``) fit the budget."""
    count = int(np.prod(shape, dtype=object))
    bound, why = label_element_budget(bytes_per_element)
    if count > bound:
        raise FormatError(f"declared label shape {tuple(shape)} decodes to {count:,} values, "
                          f"above the bound of {bound:,} ({why})")


@dataclass(frozen=True)
class Codec:
    """A codec family. ``encode(labels, ctx, params) -> {name: array}`` (None: made
    elsewhere, e.g. the projector's training) and ``decode(arrays, shape, ctx, params) ->
    labels`` where ``shape`` is the decoded labels' shape. ``output_kind`` is the label kind
    decoding yields (None: the kind that was encoded); arrays named in ``generator_arrays``
    are counted as label-generator bytes, the rest as label bytes. ``check(arrays, shape,
    ctx, params)`` raises FormatError before decoding when the stored arrays do not
    determine ``shape`` or decoding it would cost far more than the arrays' size."""

    name: str
    decode: Decoder
    encode: Encoder | None
    lossless: bool
    params: Mapping[str, Param] = field(default_factory=dict)
    output_kind: str | None = None
    generator_arrays: Callable[[str], bool] = lambda name: False
    summary: str = ""
    check: Check | None = None


_CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> None:
    """Make ``codec`` available by name to writers and readers of synthetic sets."""
    _CODECS[codec.name] = codec


def codec_names() -> list[str]:
    return sorted(_CODECS)


def parse_codec(text: str) -> tuple[Codec, dict[str, Any]]:
    """``"topk:k=3,bits=8"`` -> (codec, {"k": 3, "bits": 8}) with defaults filled in.

    Raises ConfigError (one line) for an unknown codec, an unknown or malformed
    parameter, or a value out of range.
    """
    name, _, rest = str(text).partition(":")
    name = name.strip()
    if name not in _CODECS:
        raise ConfigError(f"unknown label codec {name!r}; known: {', '.join(codec_names())}")
    codec = _CODECS[name]
    given: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in codec.params:
            known = ", ".join(codec.params) or "none"
            raise ConfigError(f"codec {name!r}: bad parameter {item!r} (parameters: {known}; write key=value)")
        given[key.strip()] = value.strip()
    params: dict[str, Any] = {}
    for key, rule in codec.params.items():
        if key not in given:
            if rule.default is None:
                raise ConfigError(f"codec {name!r} needs {key}=... (e.g. {name}:{key}=4)")
            params[key] = rule.default
            continue
        try:
            value = rule.kind(given[key])
        except ValueError:
            raise ConfigError(f"codec {name!r}: {key}={given[key]!r} is not a {rule.kind.__name__}") from None
        if rule.allowed is not None and value not in rule.allowed:
            raise ConfigError(f"codec {name!r}: {key} must be one of {', '.join(map(str, rule.allowed))}, got {value}")
        if rule.minimum is not None and value < rule.minimum:
            raise ConfigError(f"codec {name!r}: {key} must be >= {rule.minimum}, got {value}")
        params[key] = value
    return codec, params


def canonical_codec(text: str) -> str:
    """The spec string as stored: name, then every parameter in declaration order."""
    codec, params = parse_codec(text)
    return codec.name if not params else codec.name + ":" + ",".join(f"{k}={v}" for k, v in params.items())


def get_codec(text: str) -> Codec:
    """The codec family a spec string names (parameters checked)."""
    return parse_codec(text)[0]


def encode_labels(text: str, labels: torch.Tensor, ctx: LabelContext) -> dict[str, np.ndarray]:
    """Encode ``labels`` with codec spec ``text``; ConfigError if this codec is made elsewhere."""
    codec, params = parse_codec(text)
    if codec.encode is None:
        raise ConfigError(f"labels of codec {codec.name!r} are made by `condense labels --codec {codec.name}:...`, "
                          "not re-encoded from decoded labels")
    return codec.encode(labels, ctx, params)


def canonical_array(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` in one fixed layout: C-contiguous, native byte order, at a 64-byte
    aligned address. BLAS and oneDNN pick kernels (and summation orders) by alignment and
    strides, so decoding the arrays of a set just compressed in memory and those read back
    from its file gave labels differing in the last bits on some CPUs; decoding always from
    this layout makes the two paths bit-equal."""
    a = np.asarray(a)
    dtype = a.dtype.newbyteorder("=") if a.dtype.byteorder not in ("=", "|") else a.dtype
    buf = np.empty(a.nbytes + 64, dtype=np.uint8)
    start = -buf.ctypes.data % 64
    out = buf[start:start + a.nbytes].view(dtype).reshape(a.shape)
    out[...] = a
    return out


def decode_labels(text: str, arrays: Mapping[str, np.ndarray], shape: tuple[int, ...],
                  ctx: LabelContext) -> torch.Tensor:
    """Decode stored ``arrays`` to labels of ``shape``; FormatError for a corrupt block.

    ``shape`` is the declared shape of the labels ([N] hard, [N, K] static, [V, N, K] per
    view). Before any work it is checked against the stored arrays (the codec's ``check``):
    a shape the arrays do not determine, a dimension below 1, or a decoded size above
    :func:`label_element_budget` is refused with one line naming the count and the bound.
    Arrays and images are then copied to :func:`canonical_array`'s layout, so the labels
    do not depend on where the arrays came from (a file, memory, a strided view)."""
    codec, params = parse_codec(text)
    try:
        shape = _declared_shape(shape)
        if codec.check is not None:
            codec.check({k: np.asarray(v) for k, v in arrays.items()}, shape, ctx, params)
    except FormatError as e:
        raise FormatError(f"corrupt label block (codec {text!r}: {e})") from None
    arrays = {k: canonical_array(v) for k, v in arrays.items()}
    if ctx.images is not None:
        images = ctx.images.detach().cpu()
        ctx = replace(ctx, images=torch.from_numpy(canonical_array(images.numpy())))
    try:
        labels = codec.decode(arrays, tuple(shape), ctx, params)
    except (ValueError, IndexError, RuntimeError) as e:
        raise FormatError(f"corrupt label block (codec {text!r}: {e})") from None
    if tuple(labels.shape) != tuple(shape):
        raise FormatError(f"label codec {text!r} decoded shape {tuple(labels.shape)}, expected {tuple(shape)}")
    return labels


def _declared_shape(shape: Any) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise FormatError(f"declared label shape {shape!r} is not a list of sizes") from None
    if not 1 <= len(dims) <= MAX_LABEL_DIMS:
        raise FormatError(f"declared label shape has {len(dims)} dimensions, "
                          f"expected 1 to {MAX_LABEL_DIMS}")
    out = []
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise FormatError(f"declared label shape {dims} holds {d!r}, not a size")
        if int(d) < 1:
            raise FormatError(f"declared label shape {tuple(int(x) for x in dims)} has a "
                              f"dimension of {int(d)}; every size must be at least 1")
        out.append(int(d))
    return tuple(out)


def split_bytes(text: str, arrays: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(label bytes, label-generator bytes) of stored ``arrays``: exactly their nbytes."""
    codec = get_codec(text)
    gen = sum(int(a.nbytes) for k, a in arrays.items() if codec.generator_arrays(k))
    return sum(int(a.nbytes) for a in arrays.values()) - gen, gen


def _need(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...], codec: str) -> list[np.ndarray]:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise FormatError(f"label codec {codec!r} is missing its array(s) {missing}: the file is corrupt")
    return [np.asarray(arrays[k]) for k in keys]


def _soft(labels: torch.Tensor, codec: str) -> torch.Tensor:
    if not labels.is_floating_point():
        raise ConfigError(f"codec {codec!r} applies to soft labels only; hard labels are stored as they are")
    return labels.detach().cpu().float()


def probabilities(labels: torch.Tensor, spec: Any) -> torch.Tensor:
    """The class probabilities soft ``labels`` stand for: softmax(logits / T), or themselves."""
    return labels if spec.kind == "probabilities" else torch.softmax(labels / spec.temperature, dim=-1)


def logits_of(labels: torch.Tensor, spec: Any) -> torch.Tensor:
    """Logits with the same softmax(. / T) as soft ``labels`` (T * log p for probabilities)."""
    return labels if spec.kind == "logits" else spec.temperature * torch.log(labels.clamp_min(1e-12))


# --- none, fp16 ---------------------------------------------------------------------------------

def _encode_none(labels, ctx, params):
    t = labels.detach().cpu()
    return {"data": t.numpy() if t.dtype == torch.int64 else t.float().numpy()}


def _decode_none(arrays, shape, ctx, params):
    (data,) = _need(arrays, ("data",), "none")
    if tuple(data.shape) != tuple(shape):
        raise FormatError(f"labels have shape {tuple(data.shape)}, expected {tuple(shape)}")
    return torch.from_numpy(data.copy())


def _check_none(arrays, shape, ctx, params):
    # Decoding copies the stored array, so its shape is the whole bound.
    (data,) = _need(arrays, ("data",), "none")
    if tuple(data.shape) != tuple(shape):
        raise FormatError(f"labels have shape {tuple(data.shape)}, expected {tuple(shape)}")


def _encode_fp16(labels, ctx, params):
    return {"data": _soft(labels, "fp16").to(torch.float16).numpy()}


def _decode_fp16(arrays, shape, ctx, params):
    return _decode_none(arrays, shape, ctx, params).float()


# --- topk ---------------------------------------------------------------------------------------

def _pack4(q: np.ndarray) -> np.ndarray:
    """uint8 [..., k] values < 16 -> [..., ceil(k / 2)] two per byte (low nibble first)."""
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _unpack4(packed: np.ndarray, k: int) -> np.ndarray:
    q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[:-1] + (-1,))
    return q[..., :k]


def _encode_topk(labels, ctx, params):
    k, bits = params["k"], params["bits"]
    num = int(labels.shape[-1])
    if k > num:
        raise ConfigError(f"codec 'topk': k={k} exceeds the {num} classes")
    p = probabilities(_soft(labels, "topk"), ctx.spec)
    values, indices = torch.topk(p, k, dim=-1, sorted=True)
    levels = (1 << bits) - 1
    q = torch.round(values.clamp(0, 1) * levels).to(torch.int64).numpy()
    idx = indices.numpy().astype(np.uint8 if num <= 256 else np.uint16)
    if bits == 4:
        stored = _pack4(q.astype(np.uint8))
    else:
        stored = q.astype(np.uint8 if bits == 8 else np.uint16)
    return {"indices": idx, "values": stored}


def _check_topk(arrays, shape, ctx, params):
    """The indices [..., k] fix every dimension but the classes K; their dtype bounds K
    (uint8 indices are written up to 256 classes, uint16 beyond), the budget the rest."""
    k, bits = params["k"], params["bits"]
    idx, stored = _need(arrays, ("indices", "values"), "topk")
    if len(shape) < 2 or tuple(idx.shape) != tuple(shape[:-1]) + (k,):
        raise FormatError(f"topk indices of shape {tuple(idx.shape)} do not fit labels {tuple(shape)} (k={k})")
    want = tuple(shape[:-1]) + ((k + 1) // 2 if bits == 4 else k,)
    if tuple(stored.shape) != want:
        raise FormatError(f"topk values of shape {tuple(stored.shape)} do not fit labels {tuple(shape)} "
                          f"(k={k}, bits={bits}: expected {want})")
    if idx.dtype not in (np.uint8, np.uint16):
        raise FormatError(f"topk indices are {idx.dtype}, expected uint8 or uint16")
    classes, most = shape[-1], 1 << (8 * idx.dtype.itemsize)
    if not k <= classes <= most:
        raise FormatError(f"topk labels declare {classes:,} classes; {idx.dtype} indices with k={k} "
                          f"allow {k} to {most:,}")
    check_budget(shape, 8)  # float32 labels plus one temporary of their size


def _decode_topk(arrays, shape, ctx, params):
    k, bits = params["k"], params["bits"]
    idx, stored = _need(arrays, ("indices", "values"), "topk")
    num = shape[-1]
    if tuple(idx.shape) != tuple(shape[:-1]) + (k,) or int(idx.max(initial=0)) >= num:
        raise FormatError(f"topk indices of shape {tuple(idx.shape)} do not fit labels {tuple(shape)} (k={k})")
    q = _unpack4(stored, k) if bits == 4 else stored
    values = torch.from_numpy(q.astype(np.float32)) / float((1 << bits) - 1)
    rest = num - k
    p = torch.zeros(shape, dtype=torch.float32)
    if rest:
        p += ((1.0 - values.sum(-1, keepdim=True)).clamp_min(0.0) / rest)
    p.scatter_(-1, torch.from_numpy(idx.astype(np.int64)), values)
    return p


# --- lowrank ------------------------------------------------------------------------------------

def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows x columns the label tensor is factorised as: views x (images*classes), or images x classes."""
    return (shape[0], shape[1] * shape[2]) if len(shape) == 3 else (shape[0], shape[1])


def _encode_lowrank(labels, ctx, params):
    rank, bits = params["rank"], params["bits"]
    z = logits_of(_soft(labels, "lowrank"), ctx.spec).double()
    rows, cols = _matrix_shape(tuple(z.shape))
    if rank > min(rows, cols):
        raise ConfigError(f"codec 'lowrank': rank={rank} exceeds min({rows}, {cols}) of the {rows} x {cols} label matrix")
    m = z.reshape(rows, cols)
    mean = m.mean(0)
    u, s, vt = torch.linalg.svd(m - mean, full_matrices=False)
    dtype = np.float16 if bits == 16 else np.float32
    return {"mean": mean.numpy().astype(dtype), "left": (u[:, :rank] * s[:rank]).numpy().astype(dtype),
            "right": vt[:rank].numpy().astype(dtype)}


def _check_lowrank(arrays, shape, ctx, params):
    """The factors fix rows (left), columns (right, mean) and the rank; decoding costs
    rank x rows x columns operations, at most the stored values times the budget's root."""
    mean, left, right = _need(arrays, ("mean", "left", "right"), "lowrank")
    rank = params["rank"]
    if len(shape) not in (2, 3):
        raise FormatError(f"lowrank labels must be [N, K] or [V, N, K], declared {tuple(shape)}")
    rows, cols = _matrix_shape(shape)
    if tuple(mean.shape) != (cols,) or tuple(left.shape) != (rows, rank) or tuple(right.shape) != (rank, cols):
        raise FormatError(f"lowrank factors {tuple(left.shape)} x {tuple(right.shape)} do not fit labels {tuple(shape)}")
    if rank > min(rows, cols):
        raise FormatError(f"lowrank rank {rank:,} exceeds min({rows:,}, {cols:,}) of the label matrix")
    check_budget(shape, 12)  # float64 accumulator, then the float32 labels


def _decode_lowrank(arrays, shape, ctx, params):
    mean, left, right = (torch.from_numpy(a.astype(np.float64)) for a in _need(arrays, ("mean", "left", "right"), "lowrank"))
    rows, cols = _matrix_shape(shape)
    if tuple(mean.shape) != (cols,) or tuple(left.shape) != (rows, params["rank"]) or \
            tuple(right.shape) != (params["rank"], cols):
        raise FormatError(f"lowrank factors {tuple(left.shape)} x {tuple(right.shape)} do not fit labels {tuple(shape)}")
    # mean + left @ right as rank elementwise float64 updates, not a BLAS product: each entry is
    # summed in one fixed order whatever the CPU, its vector width or the arrays' alignment.
    out = mean.expand(rows, cols).clone()
    for r in range(params["rank"]):
        out += left[:, r:r + 1] * right[r]
    return out.float().reshape(shape)


# --- projector (decoder only; trained by condense.labels.projector) ------------------------------

def _check_projector(arrays, shape, ctx, params):
    from .codec_projector import check_projector

    if ctx.images is None:
        raise FormatError("projector labels need the set's images to be regenerated")
    check_projector(arrays, shape, tuple(ctx.images.shape), ctx.num_classes,
                    getattr(ctx.spec, "view_mode", "static"), params)
    check_budget(shape, 4)


def _decode_projector(arrays, shape, ctx, params):
    from .codec_projector import regenerate_labels

    if ctx.images is None:
        raise FormatError("projector labels need the set's images to be regenerated")
    return regenerate_labels(arrays, shape, ctx.images, ctx.spec, ctx.num_classes, params)


register_codec(Codec("none", _decode_none, _encode_none, lossless=True, summary="as they are (float32 / int64)",
                     check=_check_none))
register_codec(Codec("fp16", _decode_fp16, _encode_fp16, lossless=False, summary="float16", check=_check_none))
register_codec(Codec("topk", _decode_topk, _encode_topk, lossless=False, output_kind="probabilities",
                     params={"k": Param(int, None, minimum=1), "bits": Param(int, 8, allowed=(4, 8, 16))},
                     summary="top-k probabilities, quantised, uniform remainder", check=_check_topk))
register_codec(Codec("lowrank", _decode_lowrank, _encode_lowrank, lossless=False, output_kind="logits",
                     params={"rank": Param(int, None, minimum=1), "bits": Param(int, 16, allowed=(16, 32))},
                     summary="row mean + truncated SVD of the label matrix", check=_check_lowrank))
register_codec(Codec("projector", _decode_projector, None, lossless=False, output_kind="logits",
                     params={"rank": Param(int, None, minimum=1), "width": Param(int, 32, minimum=1),
                             "depth": Param(int, 3, minimum=1), "seed": Param(int, 0, minimum=0),
                             "bits": Param(int, 16, allowed=(16, 32))},
                     generator_arrays=lambda name: True,
                     summary="label-lightening projector: seeded backbone + low-rank adapters (HeLlO)",
                     check=_check_projector))
