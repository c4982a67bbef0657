"""The label-lightening projector: a label generator that costs a few kilobytes.

After HeLlO ("Heavy Labels Out! Dataset Distillation with Label Space Lightening"):
instead of storing a soft label for every augmented view, store a small network that
maps a view to its label. The network is a frozen *backbone* that costs no stored bytes
plus low-rank adapters. Here the backbone is a ConvNet (``depth``, ``width``, instance
norm) whose weights are regenerated from a recorded ``seed`` (random features; HeLlO
uses public CLIP weights, which cannot be downloaded here). Every weight matrix W of
the backbone (convolutions and the linear classifier) becomes W + L R with L [out, rank]
and R [rank, in * kh * kw]; the classifier's bias is stored whole. Only L, R and that
bias are stored (float16 by default), so a rank-4 projector on Fashion-MNIST stores
~10 KB whatever the number of views.

This module is layer 1 (it regenerates labels when a set is loaded); training the
adapters to reproduce a teacher is :mod:`condense.labels.projector`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .augment import DSAConfig, views
from .nets import build_net
from .runtime.errors import FormatError
from .runtime.rng import generator

STREAM_PROJECTOR = 7  # the backbone's weights: generator (seed, STREAM_PROJECTOR)

# Regenerating per-view labels runs the backbone once per (view, image): the view count is
# declared by the file, not stored, so it is bounded here. 2**22 covers 300 epochs of views
# of 10,000 images (CIFAR-100 at 100 images per class) with room to spare.
MAX_VIEW_IMAGES = 2 ** 22
# The backbone is rebuilt from its declared width and depth before any stored array is
# matched to it; its size is bounded (and must agree with the stored adapters) first.
MAX_BACKBONE_WEIGHTS = 2 ** 26
# Forward work per load: (views x images) x backbone weights, a lower bound on its multiply-adds.
MAX_REGENERATION_WORK = 2 ** 42


def backbone(image_shape: tuple[int, int, int], num_classes: int, params: Mapping[str, Any]) -> nn.Module:
    """The frozen backbone regenerated from ``params`` (depth, width, seed): an eval-mode ConvNet."""
    c, h, w = image_shape
    net = build_net(f"convnet:depth={params['depth']},width={params['width']}", c, num_classes, (h, w),
                    generator=generator(int(params["seed"]), STREAM_PROJECTOR))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def adapted(net: nn.Module) -> list[str]:
    """Names of the weights that get low-rank adapters: every matrix or convolution kernel."""
    return [name for name, p in net.named_parameters() if p.ndim >= 2]


def head_bias(net: nn.Module) -> str:
    """Name of the classifier's bias (the last parameter), stored whole."""
    return list(dict(net.named_parameters()))[-1]


def init_adapters(net: nn.Module, rank: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Trainable tensors: L zero (so training starts at the backbone), R small random
    (LoRA's initialisation), and the classifier bias copied from the backbone."""
    out: dict[str, torch.Tensor] = {}
    params = dict(net.named_parameters())
    for name in adapted(net):
        w = params[name]
        fan_in = int(w[0].numel())
        out[f"{name}.left"] = torch.zeros(w.shape[0], rank)
        out[f"{name}.right"] = torch.randn(rank, fan_in, generator=gen) / fan_in ** 0.5
    out[head_bias(net)] = params[head_bias(net)].detach().clone()
    return out


def effective_params(net: nn.Module, adapters: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's parameters with adapters applied: W + L R (and the stored bias)."""
    out = {}
    for name, w in net.named_parameters():
        if f"{name}.left" in adapters:
            out[name] = w + (adapters[f"{name}.left"] @ adapters[f"{name}.right"]).view_as(w)
        elif name in adapters:
            out[name] = adapters[name]
        else:
            out[name] = w
    return out


def project(net: nn.Module, adapters: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits [B, K] of the projector on images ``x`` [B, C, H, W] (differentiable in the adapters)."""
    return torch.func.functional_call(net, effective_params(net, adapters), (x,))


def to_arrays(adapters: Mapping[str, torch.Tensor], bits: int) -> dict[str, np.ndarray]:
    """What is stored: every adapter tensor as float16 (``bits=16``) or float32."""
    dtype = np.float16 if bits == 16 else np.float32
    return {k: v.detach().cpu().numpy().astype(dtype) for k, v in adapters.items()}


def from_arrays(net: nn.Module, arrays: Mapping[str, np.ndarray], rank: int) -> dict[str, torch.Tensor]:
    """Stored arrays -> adapter tensors, checked against the backbone's shapes."""
    params = dict(net.named_parameters())
    expected = {}
    for name in adapted(net):
        expected[f"{name}.left"] = (params[name].shape[0], rank)
        expected[f"{name}.right"] = (rank, int(params[name][0].numel()))
    expected[head_bias(net)] = tuple(params[head_bias(net)].shape)
    if set(arrays) != set(expected):
        raise ValueError(f"projector arrays {sorted(arrays)} do not match its backbone ({sorted(expected)})")
    for k, shape in expected.items():
        if tuple(arrays[k].shape) != tuple(shape):
            raise ValueError(f"projector array {k} has shape {tuple(arrays[k].shape)}, expected {tuple(shape)}")
    return {k: torch.from_numpy(np.asarray(a, dtype=np.float32)) for k, a in arrays.items()}


def check_projector(arrays: Mapping[str, np.ndarray], shape: tuple[int, ...], images_shape: tuple[int, ...],
                    num_classes: int, view_mode: str, params: Mapping[str, Any]) -> None:
    """FormatError (one line) unless the declared label ``shape`` ([N, K] static, [V, N, K]
    per view) follows from the images [N, C, H, W] and the stored adapters, and regenerating
    it stays within :data:`MAX_VIEW_IMAGES`, :data:`MAX_BACKBONE_WEIGHTS` and
    :data:`MAX_REGENERATION_WORK`. Checked from the arrays' shapes alone, before the
    backbone is built: its width, depth and classes are declared in the header and would
    otherwise size the network."""
    n = int(images_shape[0])
    biases = [k for k in arrays if not k.endswith((".left", ".right"))]
    if len(biases) != 1 or np.asarray(arrays[biases[0]]).ndim != 1:
        raise FormatError(f"projector arrays {sorted(arrays)} hold no single classifier bias")
    classes = int(np.asarray(arrays[biases[0]]).shape[0])
    want = (n, classes) if view_mode == "static" else (None, n, classes)
    if len(shape) != len(want) or any(w is not None and d != w for d, w in zip(shape, want)):
        what = "[N, K]" if view_mode == "static" else "[V, N, K]"
        raise FormatError(f"projector labels declared {tuple(shape)}, but {n} images and a {classes}-class head "
                          f"give {what} = {tuple('V' if w is None else w for w in want)}")
    if classes != int(num_classes):
        raise FormatError(f"projector head has {classes} classes, the set declares {int(num_classes):,}")
    rank, width, depth = int(params["rank"]), int(params["width"]), int(params["depth"])
    lefts = {k[:-len(".left")]: np.asarray(a).shape for k, a in arrays.items() if k.endswith(".left")}
    rights = {k[:-len(".right")]: np.asarray(a).shape for k, a in arrays.items() if k.endswith(".right")}
    if set(lefts) != set(rights) or len(lefts) != depth + 1:
        raise FormatError(f"projector of depth {depth} needs {depth + 1} adapter pairs, the file stores "
                          f"{len(lefts)} left and {len(rights)} right factors")
    head = biases[0].rsplit(".", 1)[0] + ".weight"
    weights = 0
    for name, left in lefts.items():
        right = rights[name]
        rows = classes if name == head else width
        if len(left) != 2 or len(right) != 2 or tuple(left) != (rows, rank) or right[0] != rank:
            raise FormatError(f"projector adapter {name} has factors {tuple(left)} x {tuple(right)}, "
                              f"expected ({rows}, {rank}) x ({rank}, ...) for width {width}, rank {rank}")
        weights += int(left[0]) * int(right[1])
    if weights > MAX_BACKBONE_WEIGHTS:
        raise FormatError(f"projector backbone declares {weights:,} weights, above the bound of "
                          f"{MAX_BACKBONE_WEIGHTS:,}")
    if view_mode != "static":
        count = int(shape[0]) * n
        if count > MAX_VIEW_IMAGES:
            raise FormatError(f"projector labels declare {int(shape[0]):,} views x {n:,} images = {count:,} "
                              f"regenerated labels, above the bound of {MAX_VIEW_IMAGES:,}")
        if count * weights > MAX_REGENERATION_WORK:
            raise FormatError(f"regenerating {count:,} projector labels with {weights:,} weights each needs "
                              f"{count * weights:,} operations, above the bound of {MAX_REGENERATION_WORK:,}")


@torch.no_grad()
def regenerate_labels(arrays: Mapping[str, np.ndarray], shape: tuple[int, ...], images: torch.Tensor,
                      spec: Any, num_classes: int, params: Mapping[str, Any]) -> torch.Tensor:
    """The labels a stored projector stands for: logits [N, K] on the clean images (static)
    or [V, N, K] on the views of epochs 0..V-1 (per view, regenerated from the set's view
    seed and strategy exactly as evaluation draws them). FormatError before any work when
    ``shape`` does not follow from the arrays or exceeds the bounds of :func:`check_projector`."""
    check_projector(arrays, tuple(shape), tuple(images.shape), num_classes, spec.view_mode, params)
    net = backbone(tuple(int(s) for s in images.shape[1:]), num_classes, params)
    adapters = from_arrays(net, arrays, int(params["rank"]))
    images = images.float()
    if spec.view_mode == "static":
        return project(net, adapters, images)
    config = DSAConfig(strategy=spec.view_strategy)
    out = torch.empty(shape, dtype=torch.float32)
    for epoch in range(shape[0]):
        out[epoch] = project(net, adapters, views(images, config, spec.view_seed, epoch))
    return out
