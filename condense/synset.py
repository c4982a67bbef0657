"""The synthetic-set file: one self-describing, versioned HDF5 file per distilled set.

A set carries everything needed to view it and to train on it: the images in the
space they were optimised in, the pixel transform that maps them back to [0, 1]
(normalisation or ZCA, with the ZCA matrices themselves), what the labels mean
(kind, loss, temperature, view mode) and how they are stored (codec), the learned
learning rate, the full configuration and provenance. Layout (docs/FORMATS.md):

    /            attrs: format="condense.synset", version, method, dataset, ipc,
                        num_classes, image_shape, condense_version, created,
                        config (JSON), provenance (JSON), data (JSON: split facts)
    /images      float32 [N, C, H, W]
    /classes     int64 [N]        the class each image was made for
    /labels/     attrs: kind, loss, temperature, view_mode, view_seed, view_strategy, codec,
                 shape; datasets written by the codec (codec "none": data)
    /lr          float64 scalar   (only when a learning rate was learned)
    /indices     int64 [N]        (only for subsets of the real training set)
    /compensated/ attrs: groups G, members M; datasets base [G, K, C, H, W], compensators
                 [G, M, C, H, W]: INFER's stored form, written instead of /images (format
                 version 2; :mod:`condense.compensators`), the instances expanded on load
    /memory/     attrs: group g, frames T; datasets statics [K, S, C, H, W] and, unless the set
                 is static-only, dynamics [K, S, T, 1, H, W], weight [C, C + 1, 3, 3, 3], bias [C]:
                 a video set's stills, dynamic memories and integrator, written instead of
                 /images (format version 3; :mod:`condense.video_memory`), the clips expanded on load

A video set's images are clips: /images is [N, T, C, H, W] and image_shape [T, C, H, W].
    /transform/  attrs: kind ("normalize" | "zca" | "none"), mean, std, eps, key;
                 datasets zca_mean [D], zca_whiten [D, D], zca_unwhiten [D, D] for ZCA

Writers go through a temporary file and an atomic rename, so a kill never leaves a
half-written set under the final name. Readers refuse anything they do not fully
understand with one :class:`~condense.runtime.errors.FormatError` line.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .compensators import Compensated
from .video_memory import VideoMemory
from .texture import texture_of
from .codecs import LabelContext, decode_labels, encode_labels, parse_codec, split_bytes
from .data.transform import TRANSFORM_KINDS, PixelTransform
from .data.zca import ZCA
from .runtime.errors import ConfigError, FormatError
from .runtime.files import attr, dataset, json_attr, read_h5, write_h5
from .version import __version__

FORMAT_NAME = "condense.synset"
FORMAT_VERSION = 3  # 2: /compensated; 3: /memory (a set of plain images is still written as version 1)

LABEL_KINDS = {"hard": "ce", "probabilities": "kl", "logits": "kl", "regression": "mse", "representation": "mse"}
LABEL_LOSSES = ("ce", "kl", "mse")
VIEW_MODES = ("static", "per-view")


@dataclass(frozen=True)
class LabelSpec:
    """What a set's labels mean and how they are stored.

    kind: ``hard`` (int64 [N]), ``probabilities`` or ``logits`` ([N, K], or [V, N, K] with
    per-view labels), ``regression`` (targets of any trailing shape), ``representation`` (a
    self-supervised teacher's features [N, D] of an unlabelled set: :mod:`condense.jax.krr_st`;
    such a set has no classes and is stored as one group, ``num_classes`` 1). ``loss`` is the
    training loss they need (ce | kl | mse); ``temperature`` divides logits before the
    softmax; ``view_mode`` is ``static`` (one label per image) or ``per-view`` (one per
    augmented view: labels [V, N, K], row e holding the labels of the views of epoch e,
    regenerated from ``view_seed`` with the DSA strategy ``view_strategy``, see
    :func:`condense.augment.view_draw`). ``codec`` is a codec spec string (:mod:`condense.codecs`).
    """

    kind: str = "hard"
    loss: str = "ce"
    temperature: float = 1.0
    view_mode: str = "static"
    view_seed: int | None = None
    codec: str = "none"
    view_strategy: str | None = None

    def validate(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise FormatError(f"unknown label kind {self.kind!r}; known: {', '.join(LABEL_KINDS)}")
        if self.loss not in LABEL_LOSSES:
            raise FormatError(f"unknown label loss {self.loss!r}; known: {', '.join(LABEL_LOSSES)}")
        if self.kind == "hard" and self.loss != "ce":
            raise FormatError(f"hard labels train with loss 'ce', not {self.loss!r}")
        if self.kind == "representation" and (self.loss != "mse" or self.view_mode != "static"):
            raise FormatError("representation targets are static and train with loss 'mse'")
        if self.view_mode not in VIEW_MODES:
            raise FormatError(f"unknown view mode {self.view_mode!r}; known: {', '.join(VIEW_MODES)}")
        if self.view_mode == "per-view" and (self.view_seed is None or not self.view_strategy):
            raise FormatError("per-view labels need the view_seed and view_strategy that regenerate their views")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise FormatError(f"label temperature must be a positive number, got {self.temperature}")
        try:
            parse_codec(self.codec)
        except ConfigError as e:
            raise FormatError(str(e)) from None


@dataclass
class SynSet:
    """A synthetic (distilled) training set in memory.

    images: float32 [N, C, H, W] in the space given by ``transform``;
    classes: int64 [N], the class each image stands for;
    labels: the decoded labels (int64 [N] for hard labels, float [N, K] or [V, N, K] soft).
    """

    images: torch.Tensor
    classes: torch.Tensor
    labels: torch.Tensor
    dataset: str
    num_classes: int
    method: str
    label_spec: LabelSpec = field(default_factory=LabelSpec)
    transform: PixelTransform = field(default_factory=PixelTransform)
    lr: float | None = None
    indices: torch.Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    # The codec's stored arrays when the labels came from a file or a lossy encoder: written
    # back verbatim, so saving never re-encodes (or re-trains) what is already encoded.
    label_payload: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    # INFER's stored form of ``images`` (base images + compensators); written instead of the
    # images as long as it still expands to them exactly
    compensated: Compensated | None = field(default=None, repr=False, compare=False)
    # a video set's stored form (stills + dynamic memories + integrator), written likewise
    memory: VideoMemory | None = field(default=None, repr=False, compare=False)

    @property
    def ipc(self) -> int:
        """Images per class (sets are class-balanced; :meth:`validate` enforces it)."""
        return int(self.images.shape[0]) // int(self.num_classes)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of an image, (T, C, H, W) of a video set's clip."""
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def is_video(self) -> bool:
        return self.images.ndim == 5

    @property
    def texture(self) -> tuple[tuple[int, int], int] | None:
        """((h, w), crops per canvas per step) of a set of textures (:mod:`condense.texture`); None otherwise."""
        return texture_of(self.data)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) (clips: (T, C, H, W)) of what a network trains on: the images, or a texture's crops."""
        t = self.texture
        return self.image_shape if t is None else (self.image_shape[0], *t[0])

    @property
    def budget_ipc(self) -> int:
        """Images per class of storage, rounded up: what a random-real baseline of the same storage
        holds (the ipc, but INFER's G (M + 1) instances per class cost G (K + M) / K, and a texture
        canvas as many images as it holds crops' areas)."""
        per_image = 4 * math.prod(self.sample_shape)
        return max(1, math.ceil(self.image_bytes() / (per_image * self.num_classes) - 1e-9))

    @property
    def ipc_label(self) -> str:
        """How a title names the set's size: 'IPC 10', 'IPC 10 (24 instances per class)' (INFER),
        'IPC 1 textures (4 images' storage per class)'."""
        budget = self.budget_ipc
        if self.label_spec.kind == "representation":
            return f"{self.images.shape[0]} images, no classes"
        if self.is_video:
            return f"VPC {budget}" + ("" if budget == self.ipc else f" ({self.ipc} clips per class)")
        if self.texture is not None:
            return f"IPC {self.ipc} textures ({budget} images' storage per class)"
        if budget != self.ipc:
            return f"IPC {budget} ({self.ipc} instances per class)"
        return f"IPC {self.ipc}"

    def image_bytes(self) -> int:
        """Bytes of the stored images (float32): the images, INFER's base images + compensators, or a
        video set's stills + dynamic memories + integrator."""
        m = self.stored_memory()
        if m is not None:
            return 4 * m.stored_numbers
        c = self.stored_compensated()
        return 4 * (int(self.images.numel()) if c is None else c.stored_images * math.prod(self.image_shape))

    def stored_compensated(self) -> Compensated | None:
        """The compensated form to write, if it still expands exactly to the images."""
        c = self.compensated
        if c is None or tuple(c.base.shape[1:]) != (self.num_classes, *self.image_shape):
            return None
        return c if c.expands_to(self.images, self.classes, self.transform) else None

    def stored_memory(self) -> VideoMemory | None:
        """The video memory to write, if it still expands exactly to the clips."""
        m = self.memory
        return m if m is not None and m.expands_to(self.images, self.classes) else None

    @classmethod
    def hard(cls, images: torch.Tensor, classes: torch.Tensor, **kw: Any) -> "SynSet":
        """A set whose labels are its classes (hard labels)."""
        classes = classes.to(torch.int64)
        return cls(images=images, classes=classes, labels=classes.clone(), **kw)

    def validate(self) -> None:
        """Raise FormatError unless shapes, classes and labels are mutually consistent."""
        self.label_spec.validate()
        if self.images.ndim not in (4, 5):
            raise FormatError(f"images must be [N, C, H, W] (clips [N, T, C, H, W]), got shape {tuple(self.images.shape)}")
        n = int(self.images.shape[0])
        if n == 0:
            raise FormatError("the set holds no images")
        if tuple(self.classes.shape) != (n,):
            raise FormatError(f"{n} images but {tuple(self.classes.shape)} class entries")
        if self.num_classes <= 0:
            raise FormatError(f"num_classes must be positive, got {self.num_classes}")
        if int(self.classes.min()) < 0 or int(self.classes.max()) >= self.num_classes:
            raise FormatError(f"classes must lie in [0, {self.num_classes}), got {int(self.classes.min())}..{int(self.classes.max())}")
        counts = torch.bincount(self.classes, minlength=self.num_classes)
        if not bool((counts == counts[0]).all()):
            raise FormatError(f"the set is not class-balanced: images per class {counts.tolist()}")
        if not bool(torch.isfinite(self.images).all()):
            raise FormatError("the images contain NaN or Inf")
        self._validate_labels(n)
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise FormatError(f"the learned lr must be a positive number, got {self.lr}")
        if self.indices is not None and tuple(self.indices.shape) != (n,):
            raise FormatError(f"{n} images but {tuple(self.indices.shape)} source indices")
        t = self.transform
        if t.kind not in TRANSFORM_KINDS:
            raise FormatError(f"unknown pixel transform {t.kind!r}")
        channels = self.image_shape[-3]
        if t.kind == "normalize" and not (len(t.mean) == len(t.std) == channels):
            raise FormatError(f"normalisation has {len(t.mean)} means and {len(t.std)} stds for {channels} channels")
        if t.kind == "zca" and (t.zca is None or t.zca.dim != self.images[0].numel()):
            raise FormatError("the ZCA transform does not fit the images' size")
        try:
            texture = self.texture
        except (KeyError, TypeError, ValueError):
            raise FormatError("its texture record is malformed (crop [h, w] and samples)") from None
        if texture is not None and self.is_video:
            raise FormatError("a texture record on a set of clips (textures are images)")
        if texture is not None:
            (h, w), samples = texture
            if not (0 < h <= self.image_shape[1] and 0 < w <= self.image_shape[2] and 0 < samples <= 1024):
                raise FormatError(f"texture crops {h}x{w} x {samples} do not fit canvases of {self.image_shape[1:]}")

    def _validate_labels(self, n: int) -> None:
        spec, y = self.label_spec, self.labels
        if spec.kind == "hard":
            if tuple(y.shape) != (n,) or y.dtype != torch.int64:
                raise FormatError(f"hard labels must be int64 [{n}], got {y.dtype} {tuple(y.shape)}")
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise FormatError(f"hard labels must lie in [0, {self.num_classes})")
            return
        if not y.is_floating_point():
            raise FormatError(f"{spec.kind} labels must be floating point, got {y.dtype}")
        image_axis = 1 if spec.view_mode == "per-view" else 0
        if y.ndim <= image_axis or int(y.shape[image_axis]) != n:
            raise FormatError(f"{spec.kind} labels of shape {tuple(y.shape)} do not match {n} images ({spec.view_mode} views)")
        if spec.kind == "representation" and (y.ndim != 2 or self.num_classes != 1):
            raise FormatError(f"representation targets are [N, D] of a set without classes (num_classes 1), got "
                              f"{tuple(y.shape)} with {self.num_classes} classes")
        if spec.kind in ("probabilities", "logits") and int(y.shape[-1]) != self.num_classes:
            raise FormatError(f"{spec.kind} labels have {int(y.shape[-1])} entries per image, expected {self.num_classes}")
        if not bool(torch.isfinite(y).all()):
            raise FormatError("the labels contain NaN or Inf")

    def to_pixels(self) -> torch.Tensor:
        """Images mapped back to [0, 1] pixels (clipped), e.g. for viewing: [N, C, H, W]."""
        return self.transform.to_pixels(self.images.float()).clamp(0.0, 1.0)

    def label_context(self) -> LabelContext:
        return LabelContext(images=self.images, spec=self.label_spec, num_classes=self.num_classes)

    def encoded_labels(self) -> dict[str, np.ndarray]:
        """The arrays the label codec stores for this set's labels."""
        if self.label_payload is not None:
            return self.label_payload
        return encode_labels(self.label_spec.codec, self.labels, self.label_context())

    def storage_bytes(self) -> dict[str, int]:
        """Bytes stored: ``images``, ``labels`` (as the codec stores them), ``label_generator``
        (a projector's weights), ``total``, and ``labels_uncompressed`` (the decoded labels
        as float32, int64 for hard labels: what the codec's fraction is measured against)."""
        images = self.image_bytes()
        labels, gen = split_bytes(self.label_spec.codec, self.encoded_labels())
        plain = int(self.labels.numel()) * (8 if self.label_spec.kind == "hard" else 4)
        return {"images": images, "labels": labels, "label_generator": gen, "total": images + labels + gen,
                "labels_uncompressed": plain}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set to ``path`` atomically (temporary file + rename). Returns the path."""
        self.validate()
        return write_h5(path, lambda f: _write(self, f))

    def with_labels(self, labels: torch.Tensor, spec: LabelSpec) -> "SynSet":
        """A copy of this set with other labels (the images are shared, not copied)."""
        return replace(self, labels=labels, label_spec=spec, label_payload=None)

    def as_dataset(self, *, hard: bool = False, mean_views: bool = False) -> TensorDataset:
        """The set as a ``torch.utils.data.Dataset`` of (image, label) pairs, for one's own loop::

            for x, y in DataLoader(s.as_dataset(), batch_size=64, shuffle=True):
                loss = F.cross_entropy(model(x), y)  # hard and soft labels alike

        image: float32 [C, H, W] in the space the set was optimised in (``transform``: normalised
        or ZCA-whitened, what a network trained on it expects; :meth:`to_pixels` gives [0, 1]).
        label, as the set's codec decoded it when the set was loaded or made:

        - hard labels: the int64 class index;
        - soft labels: float32 [K] probabilities; logits become softmax(logits / temperature),
          the target of the set's own KL loss (``F.cross_entropy`` takes class probabilities);
        - regression targets (FRePo's): float32, as stored, for an MSE loss.

        ``hard=True``: an int64 class index for every set, the argmax of soft labels (the
        evaluation's ``hard`` variant) or, for regression targets, the class each image was made for.

        Per-view labels ([V, N, K]: one label per augmented view of each epoch) belong to views
        this dataset does not make, so they are refused unless ``mean_views=True``, which gives
        their mean over views as static labels, as ``condense eval``'s no-augmentation variant
        trains them; training on the views themselves is the evaluation harness's job.
        """
        return TensorDataset(self.images.detach(), training_targets(self, hard=hard, mean_views=mean_views))


def training_targets(s: SynSet, *, hard: bool = False, mean_views: bool = False) -> torch.Tensor:
    """One static target per image of ``s`` (see :meth:`SynSet.as_dataset`): int64 [N] class
    indices, float32 [N, K] probabilities, or regression targets [N, ...]."""
    spec, labels = s.label_spec, s.labels
    if hard:
        if spec.kind == "representation":
            raise ConfigError("a self-supervised set's representation targets have no classes to take as hard labels")
        return s.classes.clone() if spec.kind == "regression" else hard_labels(labels, spec)
    if spec.view_mode == "per-view":
        if not mean_views:
            raise ConfigError("this set's labels are per view (one per augmented view of each epoch): "
                              "as_dataset(mean_views=True) gives their mean over views, as_dataset(hard=True) "
                              "their argmax; condense eval trains on the views themselves")
        labels = labels.mean(0)
    if spec.kind == "logits":
        return torch.softmax(labels.float() / spec.temperature, dim=-1)
    return labels.float() if spec.kind != "hard" else labels


def hard_labels(labels: torch.Tensor, spec: LabelSpec) -> torch.Tensor:
    """Labels as int64 [N] class indices: hard labels as they are; soft labels [N, K] (or per-view
    [V, N, K]: their mean over views) as their argmax."""
    if spec.kind == "hard":
        return labels
    if spec.kind in ("regression", "representation"):
        raise ConfigError(f"{spec.kind} targets have no hard-label version (the 'hard' variant needs class scores)")
    y = labels.mean(0) if spec.view_mode == "per-view" else labels
    return y.argmax(-1).to(torch.int64)


def real_subset(ds: Any, indices: torch.Tensor, method: str, **kw: Any) -> SynSet:
    """A set made of training images ``indices`` of a loaded dataset (random, herding, k-center...).

    Images are ordered class by class (as every set is); the indices into the training
    split are recorded in the file.
    """
    indices = indices[torch.argsort(ds.y_train[indices], stable=True)]
    return SynSet.hard(ds.x_train[indices].clone(), ds.y_train[indices].clone(), dataset=ds.info.name,
                       num_classes=ds.info.num_classes, method=method, indices=indices.clone(),
                       transform=ds.transform, data=dict(ds.meta), **kw)


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _write(s: SynSet, f: Any) -> None:
    compensated, memory = s.stored_compensated(), s.stored_memory()
    f.attrs.update({
        "format": FORMAT_NAME, "version": 3 if memory is not None else 1 if compensated is None else 2,
        "method": s.method,
        "dataset": s.dataset, "ipc": s.ipc, "num_classes": s.num_classes,
        "image_shape": list(s.image_shape), "condense_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": _json(s.config), "provenance": _json(s.provenance), "data": _json(s.data),
    })
    if memory is not None:
        g = f.create_group("memory")
        g.attrs.update({"group": memory.group, "frames": memory.frames})
        for name in ("statics", "dynamics", "weight", "bias"):
            if getattr(memory, name) is not None:
                g.create_dataset(name, data=getattr(memory, name).detach().cpu().float().numpy())
    elif compensated is None:
        f.create_dataset("images", data=s.images.detach().cpu().float().numpy())
    else:
        g = f.create_group("compensated")
        g.attrs.update({"groups": compensated.groups, "members": compensated.members})
        g.create_dataset("base", data=compensated.base.detach().cpu().float().numpy())
        g.create_dataset("compensators", data=compensated.compensators.detach().cpu().float().numpy())
    f.create_dataset("classes", data=s.classes.detach().cpu().numpy().astype(np.int64))
    g = f.create_group("labels")
    spec = s.label_spec
    g.attrs.update({"kind": spec.kind, "loss": spec.loss, "temperature": spec.temperature,
                    "view_mode": spec.view_mode, "codec": spec.codec,
                    "view_seed": -1 if spec.view_seed is None else spec.view_seed,
                    "view_strategy": spec.view_strategy or "", "shape": list(s.labels.shape)})
    for name, arr in s.encoded_labels().items():
        g.create_dataset(name, data=arr)
    if s.lr is not None:
        f.create_dataset("lr", data=float(s.lr))
    if s.indices is not None:
        f.create_dataset("indices", data=s.indices.detach().cpu().numpy().astype(np.int64))
    write_transform(f.create_group("transform"), s.transform)


def write_transform(t: Any, transform: PixelTransform) -> None:
    """Store ``transform`` in the HDF5 group ``t`` (set and teacher files share this layout)."""
    z = transform.zca
    t.attrs.update({"kind": transform.kind, "mean": list(transform.mean), "std": list(transform.std),
                    "eps": -1.0 if z is None else z.eps, "key": "" if z is None else z.key})
    if z is not None:
        for name, arr in (("zca_mean", z.mean), ("zca_whiten", z.whiten), ("zca_unwhiten", z.unwhiten)):
            t.create_dataset(name, data=arr.detach().cpu().float().numpy())


def read_transform(t: Any, image_shape: tuple[int, ...]) -> PixelTransform:
    """The transform :func:`write_transform` stored in group ``t``, for images of ``image_shape``
    ([C, H, W]: the ZCA matrices must be [D, D] with D = C * H * W, checked before reading)."""
    kind = attr(t, "kind", str)
    if kind not in TRANSFORM_KINDS:
        raise FormatError(f"unknown pixel transform {kind!r}")
    zca = None
    if kind == "zca":
        d = int(np.prod(image_shape))
        shapes = {"zca_mean": (d,), "zca_whiten": (d, d), "zca_unwhiten": (d, d)}
        arrays = [torch.from_numpy(dataset(t, k, shape, "f", np.float32)) for k, shape in shapes.items()]
        zca = ZCA(*arrays, eps=attr(t, "eps", float), key=attr(t, "key", str))
    return PixelTransform(kind=kind, mean=tuple(float(v) for v in attr(t, "mean", list)),
                          std=tuple(float(v) for v in attr(t, "std", list)), zca=zca)


def load_synset(path: str | os.PathLike) -> SynSet:
    """Read a synthetic-set file written by any condense (format version <= this one's).

    Raises FormatError (one line) for a missing, non-HDF5, truncated, foreign,
    newer-version or internally inconsistent file.
    """
    return read_h5(path, lambda f: _read(f, Path(path)), "synthetic set")


def _read(f: Any, path: Path) -> SynSet:
    fmt = attr(f, "format", str, default=None)
    if fmt != FORMAT_NAME:
        raise FormatError(f"not a condense synthetic set (format attribute {fmt!r})")
    version = attr(f, "version", int)
    if version < 1 or version > FORMAT_VERSION:
        raise FormatError(f"synthetic-set format version {version} is not supported "
                          f"(this condense reads versions 1..{FORMAT_VERSION}; upgrade condense)")
    # The header fixes every array's shape; each is checked against it before it is read.
    num_classes, ipc = attr(f, "num_classes", int), attr(f, "ipc", int)
    image_shape = tuple(attr(f, "image_shape", list))
    if num_classes < 1 or ipc < 1 or len(image_shape) not in (3, 4) or min(image_shape) < 1:
        raise FormatError(f"header declares {num_classes} classes, ipc {ipc}, images {list(image_shape)}")
    n = num_classes * ipc
    for name in ("labels", "transform"):
        if name not in f:
            raise FormatError(f"missing '{name}': the file is corrupt or truncated")
    g = f["labels"]
    view_seed = attr(g, "view_seed", int)
    spec = LabelSpec(kind=attr(g, "kind", str), loss=attr(g, "loss", str), temperature=attr(g, "temperature", float),
                     view_mode=attr(g, "view_mode", str), view_seed=None if view_seed < 0 else view_seed,
                     codec=attr(g, "codec", str), view_strategy=attr(g, "view_strategy", str, default="") or None)
    spec.validate()
    shape = tuple(int(v) for v in attr(g, "shape", list))
    transform = read_transform(f["transform"], image_shape)
    compensated = memory = None
    if "memory" in f:
        memory = _read_memory(f["memory"], num_classes, ipc, image_shape)
        images, _ = memory.expand()
    elif "compensated" in f:
        compensated = _read_compensated(f["compensated"], num_classes, ipc, image_shape)
        images, _ = compensated.expand(transform)
    else:
        images = torch.from_numpy(dataset(f, "images", (n, *image_shape), "f", np.float32))
    payload = {k: dataset(g, k) for k in g.keys()}
    labels = decode_labels(spec.codec, payload, shape, LabelContext(images=images, spec=spec, num_classes=num_classes))
    s = SynSet(
        images=images, classes=torch.from_numpy(dataset(f, "classes", (n,), "iu", np.int64)),
        labels=labels, dataset=attr(f, "dataset", str), num_classes=num_classes,
        method=attr(f, "method", str), label_spec=spec, transform=transform,
        lr=float(dataset(f, "lr", (), "f")) if "lr" in f else None,
        indices=torch.from_numpy(dataset(f, "indices", (n,), "iu", np.int64)) if "indices" in f else None,
        config=json_attr(f, "config", dict), provenance=json_attr(f, "provenance", dict),
        data=json_attr(f, "data", dict), label_payload=payload, compensated=compensated, memory=memory,
    )
    s.validate()
    if compensated is not None and not torch.equal(s.classes, compensated.classes()):
        raise FormatError("the classes do not follow the compensated instances' class order")
    if memory is not None and not torch.equal(s.classes, memory.classes()):
        raise FormatError("the classes do not follow the video memory's class order")
    return s


def _read_memory(g: Any, num_classes: int, ipc: int, image_shape: tuple[int, ...]) -> VideoMemory:
    """The /memory group, its shapes checked against the header before anything is read."""
    if len(image_shape) != 4:
        raise FormatError(f"a video memory needs clips [T, C, H, W], the header declares {list(image_shape)}")
    group, frames = attr(g, "group", int), attr(g, "frames", int)
    t, c, h, w = image_shape
    if group < 1 or frames != t:
        raise FormatError(f"video memory of group {group} and {frames} frames for clips of {t} frames")
    dynamic = "dynamics" in g
    if dynamic and ipc % (group * group):
        raise FormatError(f"{ipc} clips per class are not slots of {group} x {group} pairings")
    stills = ipc // group if dynamic else ipc
    read = lambda name, shape: torch.from_numpy(dataset(g, name, shape, "f", np.float32))  # noqa: E731
    memory = VideoMemory(read("statics", (num_classes, stills, c, h, w)),
                         read("dynamics", (num_classes, stills, t, 1, h, w)) if dynamic else None,
                         read("weight", (c, c + 1, 3, 3, 3)) if dynamic else None,
                         read("bias", (c,)) if dynamic else None, group, frames)
    if not all(bool(torch.isfinite(x).all()) for x in (memory.statics, memory.dynamics, memory.weight, memory.bias)
               if x is not None):
        raise FormatError("the video memory contains NaN or Inf")
    return memory


def _read_compensated(g: Any, num_classes: int, ipc: int, image_shape: tuple[int, ...]) -> Compensated:
    """The /compensated group, its shapes checked against the header before anything is read."""
    groups, members = attr(g, "groups", int), attr(g, "members", int)
    if groups < 1 or members < 1 or groups * (members + 1) != ipc:
        raise FormatError(f"compensated set of {groups} groups x {members} compensators does not give ipc {ipc}")
    base = dataset(g, "base", (groups, num_classes, *image_shape), "f", np.float32)
    comp = dataset(g, "compensators", (groups, members, *image_shape), "f", np.float32)
    out = Compensated(torch.from_numpy(base), torch.from_numpy(comp))
    if not (bool(torch.isfinite(out.base).all()) and bool(torch.isfinite(out.compensators).all())):
        raise FormatError("the base images or compensators contain NaN or Inf")
    return out


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed (provenance of inputs)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

