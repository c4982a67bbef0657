"""flax (linen) twins of the torch networks, and the converter between the canonical flat
layout and flax parameter trees.

Networks (inputs ``[B, C, H, W]`` as everywhere in condense; NHWC inside):

- ``convnet``: the field's ConvNet exactly as :mod:`condense.nets.convnet` builds it (same
  options, padding 3 on the first convolution for 1-channel inputs, 2x2 pools, the shape
  checks), norms ``instance`` (``GroupNorm(W, W)``, eps 1e-5 as torch) and ``none``.
- ``mlp``: :mod:`condense.nets.mlp`.
- ``resnet18:norm=instance``: :mod:`condense.nets.resnet` with instance norm.

Batch and layer norm have no JAX twin (an ArchError says so): the synthesis methods use
batch-independent networks.

Flat layout <-> flax tree. The canonical flat vector is torch's ``named_parameters()`` order,
each tensor row-major in torch's shape (:class:`~condense.nets.flat.FlatLayout`). Each
architecture here lists, in that order, every torch parameter with its shape, the path of
its flax twin and how the axes map (:class:`Entry`):

- convolution kernels: torch OIHW -> flax HWIO (``transpose(2, 3, 1, 0)``);
- linear weights: torch ``[out, in]`` -> flax ``[in, out]`` (transpose);
- biases, norm scales and shifts: as they are.

The flatten before the ConvNet's classifier is the one place where NCHW vs NHWC changes the
meaning of a parameter: torch's classifier weight column ``c·h·w + i·w + j`` reads channel c
at (i, j). The flax ConvNet flattens its last maps in that same (C, H, W) order (it
transposes back to channels-first first), so the classifier kernel is just the transpose and
``embed`` gives the same features in the same order in both backends (DM and DataDAM
compare embeddings coordinate by coordinate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..runtime.errors import ArchError
from ..nets import FlatLayout, parse_arch
from ..nets.base import conv_out, require_positive

CONV, DENSE, VEC = "conv", "dense", "vec"
INSTANCE_EPS = 1e-5  # torch GroupNorm's eps (flax defaults to 1e-6)


@dataclass(frozen=True)
class Entry:
    """One parameter: its torch name and shape, its flax path, and how the axes map (CONV, DENSE, VEC)."""

    torch_name: str
    torch_shape: tuple[int, ...]
    path: tuple[str, ...]
    kind: str


# --- building blocks ---------------------------------------------------------------------------------

def activation(kind: str) -> Callable[[jax.Array], jax.Array]:
    """The activation the torch nets mean by ``kind`` (LeakyReLU slope 0.01 as torch's default)."""
    acts = {"relu": nn.relu, "leakyrelu": lambda x: nn.leaky_relu(x, 0.01), "sigmoid": nn.sigmoid,
            "swish": nn.silu}
    if kind not in acts:
        raise ArchError(f"unknown activation '{kind}'; valid: {', '.join(acts)}")
    return acts[kind]


def instance_norm() -> nn.GroupNorm:
    """Torch's ``GroupNorm(C, C)``: one group per channel, eps 1e-5, exact (two-pass) variance."""
    return nn.GroupNorm(num_groups=None, group_size=1, epsilon=INSTANCE_EPS, use_fast_variance=False)


def to_nhwc(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 2, 3, 1))


# --- ConvNet -----------------------------------------------------------------------------------------

class ConvNet(nn.Module):
    """ConvNet for inputs ``[B, C, H, W]``: ``depth`` x (conv 3x3 -> norm -> act -> 2x2 pool), then a linear head."""

    channels: int
    num_classes: int
    width: int = 128
    depth: int = 3
    norm: str = "instance"
    pool: str = "avg"
    act: str = "relu"

    def setup(self) -> None:
        self.convs = [nn.Conv(self.width, (3, 3), padding=[(p, p), (p, p)]) for p in self._paddings()]
        self.norms = [instance_norm() for _ in range(self.depth)] if self.norm == "instance" else []
        self.classifier = nn.Dense(self.num_classes)

    def _paddings(self) -> list[int]:
        return [3 if self.channels == 1 and d == 0 else 1 for d in range(self.depth)]

    def feature_maps(self, x: jax.Array) -> list[jax.Array]:
        """Each block's output after pooling, NCHW: ``[B, C, H, W]`` -> ``depth`` arrays ``[B, W, h_i, w_i]``."""
        out, maps, act = to_nhwc(x), [], activation(self.act)
        for d in range(self.depth):
            out = self.convs[d](out)
            if self.norms:
                out = self.norms[d](out)
            out = act(out)
            if self.pool == "avg":
                out = nn.avg_pool(out, (2, 2), strides=(2, 2))
            elif self.pool == "max":
                out = nn.max_pool(out, (2, 2), strides=(2, 2))
            maps.append(out)
        return [jnp.transpose(m, (0, 3, 1, 2)) for m in maps]

    def embed(self, x: jax.Array) -> jax.Array:
        """Flattened last maps in torch's (C, H, W) order: ``[B, C, H, W]`` -> ``[B, embed_dim]``."""
        return self.feature_maps(x)[-1].reshape(x.shape[0], -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``[B, num_classes]``."""
        return self.classifier(self.embed(x))


def convnet_entries(channels: int, num_classes: int, image_size: tuple[int, int], *, width: int, depth: int,
                    norm: str, pool: str, act: str) -> list[Entry]:
    """The torch ConvNet's parameters in order (``features.{i}`` counts every layer of a block:
    conv, norm, activation, pool) with their flax twins; ArchError where torch raises one."""
    if norm not in ("instance", "none"):
        raise ArchError(f"convnet norm={norm} has no JAX twin; use norm=instance or norm=none")
    activation(act)
    per_block = 2 + (norm != "none") + (pool != "none")
    entries, (h, w), trail, in_ch = [], image_size, [tuple(image_size)], channels
    for d in range(depth):
        pad = 3 if channels == 1 and d == 0 else 1
        h, w = conv_out(h, 3, pad), conv_out(w, 3, pad)
        i = d * per_block
        entries += [Entry(f"features.{i}.weight", (width, in_ch, 3, 3), (f"convs_{d}", "kernel"), CONV),
                    Entry(f"features.{i}.bias", (width,), (f"convs_{d}", "bias"), VEC)]
        if norm == "instance":
            entries += [Entry(f"features.{i + 1}.weight", (width,), (f"norms_{d}", "scale"), VEC),
                        Entry(f"features.{i + 1}.bias", (width,), (f"norms_{d}", "bias"), VEC)]
        if pool != "none":
            h, w = h // 2, w // 2
        trail.append((h, w))
        require_positive(f"convnet depth {depth}", trail, f"after block {d + 1}",
                         "use a smaller depth or larger images", channels, image_size)
        in_ch = width
    return entries + [Entry("classifier.weight", (num_classes, width * h * w), ("classifier", "kernel"), DENSE),
                      Entry("classifier.bias", (num_classes,), ("classifier", "bias"), VEC)]


# --- MLP ---------------------------------------------------------------------------------------------

class MLP(nn.Module):
    """MLP on flattened ``[B, C, H, W]`` inputs (torch's C, H, W order): ``depth`` linear layers, ReLU between."""

    num_classes: int
    width: int = 128
    depth: int = 3

    def setup(self) -> None:
        self.fcs = [nn.Dense(self.width) for _ in range(self.depth - 1)] + [nn.Dense(self.num_classes)]

    def feature_maps(self, x: jax.Array) -> list[jax.Array]:
        """Hidden activations after ReLU: ``depth - 1`` arrays ``[B, width]``."""
        out, hidden = x.reshape(x.shape[0], -1), []
        for fc in self.fcs[:-1]:
            out = nn.relu(fc(out))
            hidden.append(out)
        return hidden

    def embed(self, x: jax.Array) -> jax.Array:
        return self.feature_maps(x)[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fcs[-1](self.embed(x))


def mlp_entries(channels: int, num_classes: int, image_size: tuple[int, int], *, width: int,
                depth: int) -> list[Entry]:
    sizes = [channels * image_size[0] * image_size[1]] + [width] * (depth - 1) + [num_classes]
    entries = []
    for i in range(depth):
        entries += [Entry(f"fc_{i + 1}.weight", (sizes[i + 1], sizes[i]), (f"fcs_{i}", "kernel"), DENSE),
                    Entry(f"fc_{i + 1}.bias", (sizes[i + 1],), (f"fcs_{i}", "bias"), VEC)]
    return entries


# --- ResNet-18 (instance norm) -------------------------------------------------------------------------

STAGES = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (no bias) with instance norm and a residual connection, NHWC."""

    planes: int
    stride: int
    projection: bool  # a 1x1 convolution + norm shortcut (stride or width changes)

    def setup(self) -> None:
        self.conv1 = nn.Conv(self.planes, (3, 3), strides=self.stride, padding=[(1, 1), (1, 1)], use_bias=False)
        self.bn1 = instance_norm()
        self.conv2 = nn.Conv(self.planes, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False)
        self.bn2 = instance_norm()
        if self.projection:
            self.shortcut_conv = nn.Conv(self.planes, (1, 1), strides=self.stride, padding=[(0, 0), (0, 0)],
                                         use_bias=False)
            self.shortcut_norm = instance_norm()

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = self.shortcut_norm(self.shortcut_conv(x)) if self.projection else x
        return nn.relu(out + short)


class ResNet18(nn.Module):
    """ResNet-18 with instance norm for ``[B, C, H, W]`` inputs of any size; global average pooling."""

    channels: int
    num_classes: int

    def setup(self) -> None:
        self.conv1 = nn.Conv(STAGES[0], (3, 3), padding=[(1, 1), (1, 1)], use_bias=False)
        self.bn1 = instance_norm()
        blocks, in_planes = [], STAGES[0]
        for i, planes in enumerate(STAGES):
            stride = 1 if i == 0 else 2
            blocks.append([BasicBlock(planes, stride, stride != 1 or in_planes != planes),
                           BasicBlock(planes, 1, False)])
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.classifier = nn.Dense(self.num_classes)

    def feature_maps(self, x: jax.Array) -> list[jax.Array]:
        """Each stage's output, NCHW."""
        out, maps = nn.relu(self.bn1(self.conv1(to_nhwc(x)))), []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                out = block(out)
            maps.append(out)
        return [jnp.transpose(m, (0, 3, 1, 2)) for m in maps]

    def embed(self, x: jax.Array) -> jax.Array:
        """Globally average-pooled last stage ``[B, 512]``."""
        return self.feature_maps(x)[-1].mean(axis=(2, 3))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.classifier(self.embed(x))


def resnet18_entries(channels: int, num_classes: int, image_size: tuple[int, int], *, norm: str) -> list[Entry]:
    if norm != "instance":
        raise ArchError(f"resnet18 norm={norm} has no JAX twin; use resnet18:norm=instance")

    def conv(name, path, shape):
        return [Entry(f"{name}.weight", shape, (*path, "kernel"), CONV)]

    def gn(name, path, c):
        return [Entry(f"{name}.weight", (c,), (*path, "scale"), VEC), Entry(f"{name}.bias", (c,), (*path, "bias"), VEC)]

    entries = conv("conv1", ("conv1",), (STAGES[0], channels, 3, 3)) + gn("bn1", ("bn1",), STAGES[0])
    in_planes = STAGES[0]
    for i, planes in enumerate(STAGES):
        for j in range(2):
            name, path = f"layer{i + 1}.{j}", (f"layer{i + 1}_{j}",)
            cin = in_planes if j == 0 else planes
            entries += conv(f"{name}.conv1", (*path, "conv1"), (planes, cin, 3, 3)) + gn(f"{name}.bn1", (*path, "bn1"), planes)
            entries += conv(f"{name}.conv2", (*path, "conv2"), (planes, planes, 3, 3)) + gn(f"{name}.bn2", (*path, "bn2"), planes)
            if j == 0 and (i > 0 or in_planes != planes):
                entries += conv(f"{name}.shortcut.0", (*path, "shortcut_conv"), (planes, cin, 1, 1))
                entries += gn(f"{name}.shortcut.1", (*path, "shortcut_norm"), planes)
        in_planes = planes
    return entries + [Entry("classifier.weight", (num_classes, STAGES[-1]), ("classifier", "kernel"), DENSE),
                      Entry("classifier.bias", (num_classes,), ("classifier", "bias"), VEC)]


# --- the registry of twins and the converter ------------------------------------------------------------

_TWINS = {
    "convnet": (lambda c, k, o: ConvNet(c, k, **o), convnet_entries),
    "mlp": (lambda c, k, o: MLP(k, **o), mlp_entries),
    "resnet18": (lambda c, k, o: ResNet18(c, k), resnet18_entries),
}


@dataclass(frozen=True)
class JaxNet:
    """A flax network with its place in the canonical flat layout.

    ``params(flat)`` / ``flat(params)`` convert between a flat vector ``[numel]`` (torch
    layout) and the flax tree; ``apply``, ``embed`` and ``feature_maps`` take the tree and
    ``[B, C, H, W]`` inputs. All are pure jnp functions (jit and grad go through them).
    """

    spec: str
    module: nn.Module
    entries: tuple[Entry, ...]
    layout: FlatLayout

    def params(self, flat: jax.Array) -> dict[str, Any]:
        """Flat ``[numel]`` (torch layout) -> flax parameter tree."""
        if flat.shape != (self.layout.numel,):
            raise ArchError(f"flat parameter vector has shape {list(flat.shape)}, expected [{self.layout.numel}] "
                            f"for {self.spec}")
        tree: dict[str, Any] = {}
        for e, off, size in zip(self.entries, self.layout.offsets, self.layout.sizes):
            value = flat[off:off + size].reshape(e.torch_shape)
            if e.kind == CONV:
                value = jnp.transpose(value, (2, 3, 1, 0))
            elif e.kind == DENSE:
                value = value.T
            node = tree
            for key in e.path[:-1]:
                node = node.setdefault(key, {})
            node[e.path[-1]] = value
        return tree

    def flat(self, params: dict[str, Any]) -> jax.Array:
        """Flax parameter tree -> flat ``[numel]`` in the torch layout (inverse of :meth:`params`)."""
        parts = []
        for e in self.entries:
            value = params
            for key in e.path:
                value = value[key]
            if e.kind == CONV:
                value = jnp.transpose(value, (3, 2, 0, 1))
            elif e.kind == DENSE:
                value = value.T
            parts.append(value.reshape(-1))
        return jnp.concatenate(parts)

    def apply(self, params: dict[str, Any], x: jax.Array) -> jax.Array:
        """Logits ``[B, K]`` of ``x`` ``[B, C, H, W]``."""
        return self.module.apply({"params": params}, x)

    def embed(self, params: dict[str, Any], x: jax.Array) -> jax.Array:
        """Penultimate features ``[B, D]`` (same order as torch's ``embed``)."""
        return self.module.apply({"params": params}, x, method="embed")

    def feature_maps(self, params: dict[str, Any], x: jax.Array) -> list[jax.Array]:
        """Each stage's output, NCHW, as torch's ``feature_maps``."""
        return self.module.apply({"params": params}, x, method="feature_maps")

    def init(self, key: jax.Array, image_shape: Sequence[int]) -> dict[str, Any]:
        """Flax's own initialisation (the methods here instead convert torch-initialised vectors)."""
        return self.module.init(key, jnp.zeros((1, *image_shape)))["params"]


def build_jax_net(spec: str, channels: int, num_classes: int, image_size: tuple[int, int]) -> JaxNet:
    """The flax twin of ``build_net(spec, channels, num_classes, image_size)``; ArchError for an
    architecture (or option) without a twin, or a shape the net cannot take."""
    arch = parse_arch(spec)
    if arch.name not in _TWINS:
        raise ArchError(f"{arch.name} has no JAX twin; the JAX backend has {', '.join(sorted(_TWINS))}")
    make, entries_of = _TWINS[arch.name]
    image_size = (int(image_size[0]), int(image_size[1]))
    entries = tuple(entries_of(int(channels), int(num_classes), image_size, **arch.options))
    layout = FlatLayout.from_shapes([e.torch_name for e in entries], [e.torch_shape for e in entries])
    options = {k: v for k, v in arch.options.items() if arch.name != "resnet18"}
    return JaxNet(str(arch), make(int(channels), int(num_classes), options), entries, layout)

