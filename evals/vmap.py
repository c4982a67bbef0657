"""Seeds at once: train K networks of one architecture on one set in one process.

``condense eval --vmap-seeds`` trains the runs of a (set, arch) pair together instead of
one after the other. A plain ``torch.func.vmap(grad(...))`` over K ConvNets is slow on a
CPU (vmapped convolutions: 0.4x of sequential at IPC 10 and 50), so this module stacks
the K models as ONE wide network instead:

- input ``[B, K*C, H, W]``: model k's own batch (its own batch order, its own DSA draw)
  sits in channel group k;
- convolution: weight ``[K*W, C, 3, 3]`` with ``groups=K`` (model k's filters only see
  model k's channels);
- instance norm ``GroupNorm(W, W)`` -> ``GroupNorm(K*W, K*W)`` with the K affine
  parameters concatenated (statistics are per sample and channel, so unchanged);
  layer norm over (C, H, W) -> ``GroupNorm(K, K*W)`` without affine, then the K
  elementwise affines concatenated;
- activations and 2x2 pooling act per channel, so they work as they are;
- the linear heads: one batched matmul ``[B, K, D] x [K, classes, D]``.

The training loss is the SUM of the K models' mean losses (computed as K times
:func:`condense.train.label_loss` over all K*B samples, which equals that sum because
every model has the same batch size); the parameters are disjoint, so each model gets
exactly its own gradient, and SGD with momentum and weight decay is elementwise, so one
optimiser over the stacked tensors takes the K models' own steps. Everything else is
:func:`condense.train.train_model`'s semantics: epochs, ``lr_at`` schedule, run r's
batch order of epoch e from ``generator(seed, r, e, 0, STREAM_ORDER)``, its DSA draw of
step t from ``generator(seed, r, e, t, STREAM_DSA)``, init from
``generator(seed, r, 0, 0, STREAM_INIT)`` (the K ordinary nets are built with
:func:`condense.nets.build_net` and their parameters copied into the stack, and copied
back after training). The result equals K sequential :func:`condense.train.evaluate`
runs up to float rounding (grouped convolutions sum in another order).

DSA: the K draws are sampled exactly as the loop samples them (per image by default,
``TrainProtocol.dsa_share``) and concatenated into one per-image draw of the K × B images
(a per-batch draw repeated per image), so one :func:`condense.augment.apply_dsa` call
applies each model's own parameters to its own images.

Which runs are stacked how many at a time is :func:`plan_stack`'s rule (measured on a
2-core CPU, see the benchmark ``benchmarks/bench_vmap.py``): on a CPU stacking pays
while the per-step batch is small (the per-call overheads dominate), and is no faster
once the convolutions are compute-bound, so large batches train sequentially
(b = min(N, batch_size) > 32 on a CPU). Testing is stacked on a GPU, in cache-sized
chunks (:func:`stacked_accuracy`); on a CPU each net is tested alone with
``condense.train.accuracy``'s 128-image batches, which measured faster (docs/BENCHMARKS.md).

Supported: ``convnet`` with norm ``instance``, ``layer`` or ``none``, any activation,
pool ``avg``, ``max`` or ``none``, any depth, width, channels and image size.
:func:`stack_reason` names why anything else (batch norm, resnet18, vgg11, alexnet,
mlp) is not, so the caller can say so in one line and run sequentially.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from condense.augment import DSADraw, apply_dsa, cat_draws, sample_dsa
from condense.runtime.errors import ArchError, ConfigError
from condense.nets import build_net, parse_arch
from condense.nets.pool import AvgPool2x2, avg_pool_2x2
from condense.runtime.rng import generator
from condense.synset import LabelSpec
from condense.train import (DEFAULT_LR, accuracy, STREAM_DSA, STREAM_INIT, STREAM_ORDER, TrainProtocol, begin_epoch,
                            label_loss, train_model)

__all__ = ["stack_reason", "train_stacked", "train_stacked_nets", "plan_stack", "StackedConvNet"]

_NORMS = ("instance", "layer", "none")


def stack_reason(arch: str) -> str | None:
    """None if ``arch`` can be trained stacked, else a one-line reason (for the fallback message)."""
    try:
        spec = parse_arch(arch)
    except ArchError as e:
        return f"cannot stack seeds: {e}"
    if spec.name != "convnet":
        return (f"seeds at once supports only convnet (stacked as grouped convolutions); "
                f"{spec.name} trains its runs one after the other")
    norm = spec.options.get("norm")
    if norm not in _NORMS:
        return (f"seeds at once does not support convnet norm={norm} (batch norm's training-mode "
                f"statistics and running buffers are not stacked); the runs train one after the other")
    return None


# --------------------------------------------------------------------------- the stacked net

# A grouped convolution with few input channels per group (the first layer: 1 or 3) is
# slow on a CPU (measured: [10, 8, 28, 28] -> [10, 256, 32, 32] forward+backward 20.6 ms
# grouped, 10.2 ms as unfold + batched matmul); wider layers use the grouped convolution.
_UNFOLD_MAX_IN = 4


def _conv_unfold(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding, k: int) -> torch.Tensor:
    """Grouped 'same-stride' convolution ``x`` [B, K*C, H, W] * ``w`` [K*O, C, kh, kw] (groups=K)
    as im2col + one batched matmul over the K groups."""
    bsz, kc, h, wd = x.shape
    c = kc // k
    o, _, kh, kw = w.shape
    o //= k
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    ho, wo = h + 2 * ph - kh + 1, wd + 2 * pw - kw + 1
    cols = F.unfold(x.reshape(bsz * k, c, h, wd), (kh, kw), padding=(ph, pw))  # [B*K, C*kh*kw, P]
    cols = cols.view(bsz, k, c * kh * kw, ho * wo).permute(1, 2, 0, 3).reshape(k, c * kh * kw, bsz * ho * wo)
    out = torch.baddbmm(b.view(k, o, 1), w.reshape(k, o, c * kh * kw), cols)  # [K, O, B*P]
    return out.view(k, o, bsz, ho, wo).permute(2, 0, 1, 3, 4).reshape(bsz, k * o, ho, wo)


class StackedConvNet(nn.Module):
    """K ConvNets of one spec as one grouped network (see the module docstring).

    ``forward(x)``: ``x`` [B, K*C, H, W] (model k's images in channels k*C..(k+1)*C) ->
    logits [B, K, classes]. ``forward_shared(x)``: ``x`` [B, C, H, W] seen by every model
    (evaluation) -> [B, K, classes]. Build with :meth:`of`, copy back with :meth:`unstack_into`.
    """

    def __init__(self, k: int, ops: list[tuple], head_w: torch.Tensor, head_b: torch.Tensor) -> None:
        super().__init__()
        self.k = k
        self.ops = ops  # (kind, attrs) with parameters registered on self
        self.head_weight = nn.Parameter(head_w)  # [K, classes, D]
        self.head_bias = nn.Parameter(head_b)    # [K, classes]

    @classmethod
    def of(cls, nets: Sequence[nn.Module]) -> "StackedConvNet":
        """Stack ``nets`` (ConvNets of one spec; parameters are copied)."""
        k = len(nets)
        if k < 1:
            raise ValueError("need at least one net to stack")
        seqs = [list(n.features) for n in nets]
        ops: list[tuple] = []
        params: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(seqs[0]):
            same = [s[i] for s in seqs]
            with torch.no_grad():
                if isinstance(layer, nn.Conv2d):
                    if layer.groups != 1 or layer.stride != (1, 1) or layer.dilation != (1, 1) \
                            or layer.bias is None or isinstance(layer.padding, str):
                        raise ArchError(f"cannot stack convolution {layer}")
                    params[f"conv{i}_w"] = torch.cat([m.weight for m in same]).clone()
                    params[f"conv{i}_b"] = torch.cat([m.bias for m in same]).clone()
                    ops.append(("conv", i, layer.padding, layer.in_channels))
                elif isinstance(layer, nn.GroupNorm):
                    if layer.num_groups != layer.num_channels or not layer.affine:
                        raise ArchError(f"cannot stack {layer}")
                    params[f"norm{i}_w"] = torch.cat([m.weight for m in same]).clone()
                    params[f"norm{i}_b"] = torch.cat([m.bias for m in same]).clone()
                    ops.append(("instance", i, layer.eps))
                elif isinstance(layer, nn.LayerNorm):
                    if len(layer.normalized_shape) != 3 or not layer.elementwise_affine or layer.bias is None:
                        raise ArchError(f"cannot stack {layer}")
                    params[f"norm{i}_w"] = torch.cat([m.weight for m in same]).clone()
                    params[f"norm{i}_b"] = torch.cat([m.bias for m in same]).clone()
                    ops.append(("layer", i, layer.eps))
                elif isinstance(layer, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.SiLU)):
                    ops.append(("act", i, layer))
                elif isinstance(layer, AvgPool2x2):
                    ops.append(("avgpool", i))
                elif isinstance(layer, nn.MaxPool2d) and layer.kernel_size in (2, (2, 2)) \
                        and layer.stride in (2, (2, 2)) and layer.padding in (0, (0, 0)) \
                        and layer.dilation in (1, (1, 1)) and not layer.ceil_mode:
                    ops.append(("maxpool", i))
                else:
                    raise ArchError(f"cannot stack layer {type(layer).__name__}")
            head_w = torch.stack([n.head.weight.detach() for n in nets]).clone()
            head_b = torch.stack([n.head.bias.detach() for n in nets]).clone()
        net = cls(k, ops, head_w, head_b)
        first = next(m for m in seqs[0] if isinstance(m, nn.Conv2d))
        ph, pw = (first.padding, first.padding) if isinstance(first.padding, int) else first.padding
        _, h, w = nets[0].input_shape
        net._first_map = first.out_channels * (h + 2 * ph - first.kernel_size[0] + 1) \
            * (w + 2 * pw - first.kernel_size[1] + 1)
        for name, t in params.items():
            net.register_parameter(name, nn.Parameter(t))
        return net

    def _body(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        k = self.k
        for op in self.ops:
            kind, i = op[0], op[1]
            if kind == "conv":
                w, b = getattr(self, f"conv{i}_w"), getattr(self, f"conv{i}_b")
                if shared:  # every model sees the same input: one ordinary conv with K*W outputs
                    x = F.conv2d(x, w, b, padding=op[2])
                    shared = False
                elif op[3] <= _UNFOLD_MAX_IN:
                    x = _conv_unfold(x, w, b, op[2], k)
                else:
                    x = F.conv2d(x, w, b, padding=op[2], groups=k)
            elif kind == "instance":
                c = x.shape[1]
                x = F.group_norm(x, c, getattr(self, f"norm{i}_w"), getattr(self, f"norm{i}_b"), op[2])
            elif kind == "layer":
                x = F.group_norm(x, k, None, None, op[2])
                x = torch.addcmul(getattr(self, f"norm{i}_b"), x, getattr(self, f"norm{i}_w"))
            elif kind == "act":
                x = op[2](x)
            elif kind == "avgpool":
                x = avg_pool_2x2(x)
            elif kind == "maxpool":
                x = F.max_pool2d(x, 2, 2)
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        feats = x.reshape(x.shape[0], self.k, -1)  # [B, K, D]: model k's maps flattened (c, h, w)
        return torch.einsum("bkd,kcd->bkc", feats, self.head_weight) + self.head_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(self._body(x, shared=False))

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(self._body(x, shared=True))

    def first_map_numel(self) -> int:
        """Elements of one model's first-layer output per image (the largest maps)."""
        return self._first_map

    @torch.no_grad()
    def unstack_into(self, nets: Sequence[nn.Module]) -> None:
        """Copy model k's parameters back into ``nets[k]``."""
        for op in self.ops:
            kind, i = op[0], op[1]
            if kind == "conv":
                names = (("weight", f"conv{i}_w"), ("bias", f"conv{i}_b"))
            elif kind in ("instance", "layer"):
                names = (("weight", f"norm{i}_w"), ("bias", f"norm{i}_b"))
            else:
                continue
            for own, stacked in names:
                parts = getattr(self, stacked).chunk(self.k)
                for net, part in zip(nets, parts):
                    getattr(net.features[i], own).copy_(part)
        for k, net in enumerate(nets):
            net.head.weight.copy_(self.head_weight[k])
            net.head.bias.copy_(self.head_bias[k])


# --------------------------------------------------------------------------- DSA, K draws at once

def _augment(x: torch.Tensor, draws: Sequence[DSADraw]) -> torch.Tensor:
    """``x`` [K, B, C, H, W]: model k's batch augmented by ``draws[k]`` (per-batch or per-image),
    all K in one :func:`apply_dsa` call, which runs each transform once on the images it is drawn for."""
    k, b = x.shape[0], x.shape[1]
    if not draws[0].groups:
        return x
    return apply_dsa(x.reshape(k * b, *x.shape[2:]), cat_draws(draws, [b] * k)).view_as(x)


# --------------------------------------------------------------------------- training

def train_stacked_nets(nets: Sequence[nn.Module], images: torch.Tensor, targets: torch.Tensor,
                       protocol: TrainProtocol, *, seed: int, runs: Sequence[int], lr: float = DEFAULT_LR,
                       label_spec: LabelSpec | None = None) -> StackedConvNet:
    """Train ``nets[i]`` as run ``runs[i]`` of ``seed`` would be trained by
    :func:`condense.train.train_model` (same lr, protocol, labels), all K at once; the
    trained parameters are copied back into ``nets``. Returns the trained stack."""
    protocol.validate()
    spec = label_spec or LabelSpec()
    if spec.view_mode != "static":
        raise ConfigError("per-view labels are not supported by this training loop yet")
    if len(nets) != len(runs) or not nets:
        raise ValueError(f"need one run index per net, got {len(nets)} nets and {len(runs)} runs")
    k = len(nets)
    stack = StackedConvNet.of(nets)
    dsa = protocol.dsa_config()
    optimizer = torch.optim.SGD(stack.parameters(), lr=lr, momentum=protocol.momentum,
                                weight_decay=protocol.weight_decay)
    n, shape = images.shape[0], tuple(images.shape[1:])
    c = shape[0]
    device = images.device
    stack.train()
    for epoch in range(protocol.epochs):
        begin_epoch(optimizer, protocol, lr, epoch)
        orders = torch.stack([torch.randperm(n, generator=generator(seed, r, epoch, 0, STREAM_ORDER))
                              for r in runs]).to(device)  # [K, N]
        for t, start in enumerate(range(0, n, protocol.batch_size)):
            idx = orders[:, start:start + protocol.batch_size]  # [K, B]
            b = idx.shape[1]
            x = images[idx]  # [K, B, C, H, W]
            y = targets[idx]  # [K, B, ...]
            if dsa is not None:
                draws = [sample_dsa(dsa, b, shape, generator(seed, r, epoch, t, STREAM_DSA)) for r in runs]
                x = _augment(x, draws)
            x = x.transpose(0, 1).reshape(b, k * c, *shape[1:])
            logits = stack(x).transpose(0, 1).reshape(k * b, -1)  # [K*B, classes], model-major
            loss = label_loss(logits, y.reshape(k * b, *y.shape[2:]), spec) * k
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    stack.unstack_into(nets)
    return stack


# Evaluation goes through the test set in chunks whose first-layer maps take about this
# many bytes for all stacked models together: measured on the 2-core CPU (ConvNet D3 W32,
# Fashion-MNIST, 8 models, 2,048 test images), chunks of 8 images (8 MiB) took 2.4 s and
# 16 images 2.3 s, against 8.3 s for condense.train.accuracy's 1024-image batches per
# model (activations far beyond the caches); 32 images 4.5 s, 128 images 8.4 s.
_EVAL_CHUNK_BYTES = 8 << 20


@torch.no_grad()
def stacked_accuracy(stack: StackedConvNet, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int | None = None) -> list[float]:
    """Top-1 accuracy of each stacked model on ``x`` [N, C, H, W], ``y`` [N] (the numbers
    :func:`condense.train.accuracy` gives for each model alone, up to float rounding of
    near-ties). ``batch_size`` None: cache-sized chunks (``_EVAL_CHUNK_BYTES``)."""
    was_training = stack.training
    stack.eval()
    device = stack.head_weight.device
    dtype = stack.head_weight.dtype
    if batch_size is None:
        per_image = max(1, stack.first_map_numel() * stack.k * dtype.itemsize)
        batch_size = max(1, _EVAL_CHUNK_BYTES // per_image)
    correct = torch.zeros(stack.k, dtype=torch.int64)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device=device, dtype=dtype, non_blocking=True)
        yb = y[start:start + batch_size].to(device, non_blocking=True)
        pred = stack.forward_shared(xb).argmax(dim=2)  # [B, K]
        correct += (pred == yb[:, None]).sum(0).cpu()
    stack.train(was_training)
    return [int(v) / max(1, x.shape[0]) for v in correct]


# Largest per-step batch b = min(N, batch_size) that trains stacked on a CPU. Measured on
# the 2-core CPU, one thread, 8 ConvNet D3 W32 on 1x28x28, one SGD step with stacks of
# 2/4/8 vs 8 sequential steps: b=10 1.10-1.35x, b=20 1.05-1.07x, b=40 0.98/0.95/0.56x,
# b=64 0.95/0.73/0.52x, b=100 1.00/0.71/0.60x, b=256 0.80/0.67/0.64x: the stacked
# activations leave the caches and the grouped convolutions lose to mkldnn's plain ones.
_CPU_MAX_BATCH = 32


def plan_stack(num_images: int, batch_size: int, num_runs: int, device: str | torch.device = "cpu",
               max_stack: int | None = None) -> int:
    """How many runs to TRAIN at once (1 = one after the other).

    On a CUDA device every run is stacked (capped by ``max_stack``). On a CPU, runs are
    stacked only while a step's batch b = min(num_images, batch_size) <= 32 (see
    ``_CPU_MAX_BATCH`` for the measurements); larger batches train sequentially.
    """
    cap = num_runs if max_stack is None else max(1, min(num_runs, int(max_stack)))
    if torch.device(device).type != "cpu":
        return cap
    b = min(int(num_images), int(batch_size))
    return cap if b <= _CPU_MAX_BATCH else 1


def train_stacked(images: torch.Tensor, labels: torch.Tensor, arch: str, protocol: TrainProtocol, seed: int,
                  runs: Sequence[int], *, test: tuple[torch.Tensor, torch.Tensor], num_classes: int,
                  lr: float | None = None, label_spec: LabelSpec | None = None,
                  device: str | torch.device = "cpu", max_stack: int | None = None) -> list[float]:
    """Like ``[condense.train.evaluate(images, labels, arch, protocol, seed, run=r, test=test,
    num_classes=num_classes, lr=lr, label_spec=label_spec, device=device) for r in runs]``.

    Runs are trained :func:`plan_stack` at a time (``max_stack`` caps it; when it says 1
    each run is trained alone by :func:`condense.train.train_model`); the trained nets
    are then tested together by :func:`stacked_accuracy` on a GPU, one by one with
    :func:`condense.train.accuracy` on a CPU (faster there since its batches shrank to 128). Returns the test accuracies
    (fractions) in the order of ``runs``. Raises ConfigError with :func:`stack_reason`'s
    message for an architecture that cannot be stacked.
    """
    reason = stack_reason(arch)
    if reason is not None:
        raise ConfigError(reason)
    runs = [int(r) for r in runs]
    if not runs:
        return []
    protocol.validate()
    per = plan_stack(images.shape[0], protocol.batch_size, len(runs), device, max_stack)
    if label_spec is not None and label_spec.view_mode == "per-view":
        per = 1  # the stacked loop draws per-model DSA; per-view labels train one run at a time
    eval_per = len(runs) if max_stack is None else max(1, min(len(runs), int(max_stack)))
    c, h, w = (int(s) for s in images.shape[-3:])
    base_lr = protocol.lr or lr or DEFAULT_LR
    x, y = images.to(device), labels.to(device)
    accs: list[float] = []
    for start in range(0, len(runs), eval_per):
        chunk = runs[start:start + eval_per]
        nets = [build_net(arch, c, num_classes, (h, w), generator=generator(seed, r, 0, 0, STREAM_INIT)).to(device)
                for r in chunk]
        for s in range(0, len(chunk), per):
            if per == 1:
                train_model(nets[s], x, y, protocol, seed=seed, run=chunk[s], lr=base_lr, label_spec=label_spec)
            else:
                train_stacked_nets(nets[s:s + per], x, y, protocol, seed=seed, runs=chunk[s:s + per], lr=base_lr,
                                   label_spec=label_spec)
        if torch.device(device).type == "cpu":  # plain 128-image batches per net beat the stacked pass on a CPU
            accs += [accuracy(n, test[0], test[1], protocol.test_batch_size) for n in nets]
        else:
            accs += stacked_accuracy(StackedConvNet.of(nets), test[0], test[1])
    return accs
