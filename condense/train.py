"""THE training loop, and ``evaluate``: train a fresh network on a set, report test accuracy.

Everything that trains a network on data goes through :func:`train_model`: the expert
recorder (on real data), ``--eval-every`` during synthesis, and the evaluation
harness (on synthetic sets). Keeping one loop is what makes their numbers comparable.

Randomness: every draw comes from a generator derived from explicit integers
(:mod:`condense.runtime.rng`): network init from ``(seed, run, 0, 0, INIT)``, the batch order
of epoch ``e`` from ``(seed, run, e, 0, ORDER)``, and the DSA parameters of step ``t``
of epoch ``e`` from ``(seed, run, e, t, DSA)`` (per-image parameters and one transform
group per step by default, as the references train: ``TrainProtocol.dsa_share``,
:mod:`condense.augment`). The global RNG is never touched, so a
run is reproduced exactly by its (seed, run) and the thread count. A set with per-view
labels ([V, N, K]) is the exception that makes labels line up with views: image i in
epoch e is seen as the view drawn from ``(view_seed, e)`` for it (per-image DSA,
:func:`condense.augment.view_draw`) with label ``labels[e, i]``, whatever the run, the
batch order or the batch size; training longer than V epochs is refused.

Protocol defaults are the field's standard evaluation (DC/DSA/DM/MTT): SGD momentum
0.9, weight decay 5e-4, lr 0.01 (or the set's learned lr), batch 256, lr x0.1 from
half the epochs on, DSA ``color_crop_cutout_flip_scale_rotate``. The reference loops
run ``epochs + 1`` epochs and decay after epoch ``epochs // 2 + 1``; we run exactly
``epochs`` epochs and decay from epoch ``epochs // 2`` (0-based): a one-epoch
difference, stated so nobody has to discover it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .data.lazy import to_device
from .augment import DSAConfig, apply_dsa, check_share, sample_dsa, select_draw, view_draw
from .runtime.errors import ConfigError
from .nets import build_net
from .runtime.rng import generator
from .synset import LabelSpec, SynSet
from .texture import texture_batch

STREAM_INIT, STREAM_ORDER, STREAM_DSA, STREAM_MIXUP, STREAM_TEXTURE = 0, 1, 2, 3, 4
DEFAULT_LR = 0.01


@dataclass(frozen=True)
class TrainProtocol:
    """How a fresh network is trained on a (synthetic or real) set."""

    epochs: int = 300
    lr: float | None = None  # None: the set's learned lr if it has one, else DEFAULT_LR
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    decay_at: float = 0.5  # fraction of the epochs after which lr is multiplied by decay_factor (1.0: never)
    decay_factor: float = 0.1
    # AST's experts: the 0-based epoch from which lr is decayed (overrides decay_at), and whether
    # the decay rebuilds the optimizer (momentum buffers cleared), as AST's buffer.py does.
    decay_epoch: int | None = None
    decay_restart: bool = False
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    dsa_share: str = "image"  # per-image parameters, one group per step: how the references train (augment.py)
    test_batch_size: int = 128  # on a CPU 128-image batches stay in cache: 10k test images in 0.9 s vs 2.4 s at 1024
    # mixup of every batch (INFER's evaluation: 0.8): x = λ x + (1 − λ) x[π], λ ~ Beta(mixup, mixup), and the
    # targets mixed alike (hard labels as one-hot probabilities, soft ones in their own space); 0: off
    mixup: float = 0.0

    def validate(self) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.decay_at <= 1.0:
            raise ConfigError(f"decay_at must be a fraction in [0, 1], got {self.decay_at}")
        if not self.decay_factor > 0:
            raise ConfigError(f"decay_factor must be positive, got {self.decay_factor}")
        if self.decay_epoch is not None and not 0 <= self.decay_epoch < self.epochs:
            raise ConfigError(f"decay_epoch must be a 0-based epoch of the {self.epochs} trained, got {self.decay_epoch}")
        if not (self.mixup >= 0 and self.mixup < float("inf")):
            raise ConfigError(f"mixup must be a finite alpha >= 0, got {self.mixup}")
        check_share(self.dsa_share)

    def dsa_config(self) -> DSAConfig | None:
        """The DSA of this protocol's training steps (None without DSA)."""
        return DSAConfig(strategy=self.dsa_strategy, share=self.dsa_share) if self.dsa else None


def label_loss(logits: torch.Tensor, targets: torch.Tensor, spec: LabelSpec) -> torch.Tensor:
    """Mean training loss of ``logits`` [B, K] against ``targets`` as ``spec`` defines them.

    ce: cross-entropy with int64 [B] targets. kl: KL(p || softmax(logits / T)) * T^2
    (Hinton's scaling keeps gradient magnitudes comparable across T), where p are the
    targets for ``probabilities`` and softmax(targets / T) for ``logits``. mse: mean
    squared error against regression targets.
    """
    if spec.loss == "ce":
        return F.cross_entropy(logits, targets)
    if spec.loss == "kl":
        t = spec.temperature
        p = targets if spec.kind == "probabilities" else F.softmax(targets / t, dim=-1)
        log_q = F.log_softmax(logits / t, dim=-1)
        return F.kl_div(log_q, p, reduction="batchmean") * t * t
    return F.mse_loss(logits, targets)


def protocol_dict(protocol: TrainProtocol) -> dict[str, Any]:
    """``protocol`` as plain data, without the AST-schedule keys while they hold their defaults:
    manifests and job keys written before those keys existed stay valid."""
    d = asdict(protocol)
    if d["decay_epoch"] is None and not d["decay_restart"]:
        del d["decay_epoch"], d["decay_restart"]
    if not d["mixup"]:
        del d["mixup"]
    return d


def decay_start(protocol: TrainProtocol) -> int | None:
    """The first 0-based epoch trained at the decayed lr (None: never decayed)."""
    if protocol.decay_epoch is not None:
        return protocol.decay_epoch
    return int(protocol.epochs * protocol.decay_at) if protocol.decay_at < 1.0 else None


def lr_at(protocol: TrainProtocol, base_lr: float, epoch: int) -> float:
    """The step size of 0-based ``epoch``: base, then x decay_factor from :func:`decay_start` on."""
    start = decay_start(protocol)
    return base_lr * (protocol.decay_factor if start is not None and epoch >= start else 1.0)


def begin_epoch(optimizer: torch.optim.Optimizer, protocol: TrainProtocol, base_lr: float, epoch: int) -> None:
    """Put ``optimizer`` in epoch ``epoch``'s state: its lr (:func:`lr_at`) and, with
    ``decay_restart``, cleared momentum at the decay, as a rebuilt SGD would have."""
    if protocol.decay_restart and epoch == decay_start(protocol):
        optimizer.state.clear()
    for group in optimizer.param_groups:
        group["lr"] = lr_at(protocol, base_lr, epoch)


@dataclass(frozen=True)
class Batch:
    """One training step's data: ``x`` [B, C, H, W] as the network sees it (augmented),
    ``x_clean`` the same images un-augmented, ``y`` the targets."""

    x: torch.Tensor
    y: torch.Tensor
    x_clean: torch.Tensor


class StepRule(Protocol):
    """How one optimisation step is taken: forward, backward(s), ``optimizer.step()``.

    ``loss_fn(logits, y)`` is the set's label loss; returns the step's training loss.
    Plain SGD is :func:`plain_step`; SAM/GSAM and the smooth-expert regularisers live in
    :mod:`condense.step_rules`.
    """

    def __call__(self, model: nn.Module, batch: Batch, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, epoch: int) -> float: ...


def plain_step(model: nn.Module, batch: Batch, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """One plain step: loss on the augmented batch, backward, optimizer step."""
    loss = loss_fn(model(batch.x), batch.y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_model(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    protocol: TrainProtocol,
    *,
    seed: int,
    run: int = 0,
    lr: float = DEFAULT_LR,
    label_spec: LabelSpec | None = None,
    on_epoch: Callable[[int, nn.Module, float], None] | None = None,
    step: StepRule = plain_step,
    texture: tuple[tuple[int, int], int] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``images`` [N, C, H, W] / ``targets`` ([N] or [N, K]).

    Data and model must be on the same device. ``on_epoch(epoch, model, mean_loss)``
    is called after every epoch (the expert recorder snapshots parameters there).
    ``step`` takes each optimisation step (plain SGD by default; SAM, GSAM and the
    smooth-expert regularisers plug in here). ``texture`` ((h, w), S): the images are
    canvases and every step trains on S toroidal crops of each (:mod:`condense.texture`;
    crops from ``(seed, run, e, t, TEXTURE)``). Returns the mean training loss per epoch.
    """
    protocol.validate()
    spec = label_spec or LabelSpec()
    dsa = protocol.dsa_config()
    per_view = spec.view_mode == "per-view"
    if per_view and texture is not None:
        raise ConfigError("per-view labels belong to views of whole images; a texture trains on crops of canvases")
    if per_view:
        check_per_view(spec, int(targets.shape[0]), protocol)
    loss_fn = partial(label_loss, spec=spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=protocol.momentum,
                                weight_decay=protocol.weight_decay)
    n = images.shape[0]
    device = targets.device
    losses = []
    model.train()
    for epoch in range(protocol.epochs):
        begin_epoch(optimizer, protocol, lr, epoch)
        order = torch.randperm(n, generator=generator(seed, run, epoch, 0, STREAM_ORDER)).to(device)
        epoch_views = view_draw(dsa, spec.view_seed, epoch, n, tuple(images.shape[1:])) if per_view else None
        total, count = 0.0, 0
        for t, start in enumerate(range(0, n, protocol.batch_size)):
            idx = order[start:start + protocol.batch_size]
            x_clean = images[idx].to(device)  # a no-op for images on the device; a lazy video split's batch moves
            x = x_clean
            if epoch_views is not None:  # image i's view of this epoch and the teacher's label of exactly it
                x, y = apply_dsa(x, select_draw(epoch_views, idx.cpu())), targets[epoch][idx]
            else:
                y = targets[idx]
                if texture is not None:
                    (h, w), samples = texture
                    x = x_clean = texture_batch(x, samples, (h, w), generator(seed, run, epoch, t, STREAM_TEXTURE))
                    y = y.repeat(samples, *([1] * (y.ndim - 1)))
                if dsa is not None:
                    draw = sample_dsa(dsa, x.shape[0], tuple(x.shape[1:]), generator(seed, run, epoch, t, STREAM_DSA))
                    x = apply_dsa(x, draw)
            if protocol.mixup:
                x, y = mix(x, y, model.num_classes if spec.kind == "hard" else None, protocol.mixup,
                           generator(seed, run, epoch, t, STREAM_MIXUP))
            total += step(model, Batch(x, y, x_clean), loss_fn, optimizer, epoch) * y.shape[0]
            count += y.shape[0]
        losses.append(total / count)
        if on_epoch is not None:
            on_epoch(epoch, model, losses[-1])
    return losses


def mix(x: torch.Tensor, y: torch.Tensor, num_classes: int | None, alpha: float, g: torch.Generator
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup of a batch ``x`` [B, C, H, W] with targets ``y`` ([B] hard, [B, K] soft or regression):
    λ x + (1 − λ) x[π] with λ ~ Beta(alpha, alpha) and π a permutation, both drawn from ``g``; the
    targets mixed alike: hard labels (``num_classes`` given) as one-hot probabilities, whose
    cross-entropy is λ CE(y) + (1 − λ) CE(y[π]); logits in logit space (INFER's labels of
    interpolated instances)."""
    import numpy as np

    lam = float(np.random.default_rng(int(torch.randint(1 << 62, (1,), generator=g))).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    if num_classes is not None:
        y = F.one_hot(y, num_classes).to(x.dtype)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def check_per_view(spec: LabelSpec, views: int, protocol: TrainProtocol) -> None:
    """Refuse training that would pair a per-view label with another view than its own."""
    if not protocol.dsa:
        raise ConfigError("per-view labels belong to augmented views; training without DSA needs static labels "
                          "(condense eval's no-dsa variant uses their mean over views)")
    if spec.view_strategy != protocol.dsa_strategy:
        raise ConfigError(f"per-view labels were made for DSA strategy {spec.view_strategy!r}, "
                          f"training uses {protocol.dsa_strategy!r}")
    if protocol.epochs > views:
        raise ConfigError(f"per-view labels cover {views} epochs of views; train for at most {views} epochs "
                          f"(e.g. --epochs {views}) or relabel with more views")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``x`` [N, C, H, W], ``y`` [N]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device, non_blocking=True)
        yb = y[start:start + batch_size].to(device, non_blocking=True)
        correct += int((model(xb).argmax(dim=1) == yb).sum())
    model.train(was_training)
    return correct / max(1, x.shape[0])


def evaluate(
    images: torch.Tensor,
    labels: torch.Tensor,
    arch: str,
    protocol: TrainProtocol,
    seed: int,
    *,
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    run: int = 0,
    lr: float | None = None,
    label_spec: LabelSpec | None = None,
    device: str | torch.device = "cpu",
    history: list[float] | None = None,
    on_epoch: Callable[[int, nn.Module, float], None] | None = None,
    texture: tuple[tuple[int, int], int] | None = None,
) -> float:
    """Train a fresh ``arch`` network on (images, labels) and return its test accuracy.

    images: [N, C, H, W] in the space the network trains in; labels as ``label_spec``
    says (hard int64 [N] by default); test: (x [M, C, H, W], y [M]). The lr is
    ``protocol.lr``, else ``lr`` (a set's learned lr), else 0.01. Deterministic for
    (seed, run) at a fixed thread count. ``history``, if given, receives the mean
    training loss of every epoch (learning curves); ``on_epoch`` is passed to :func:`train_model`.
    """
    c, h, w = (int(s) for s in images.shape[-3:])
    if texture is not None:  # the network sees the crops
        h, w = texture[0]
    model = build_net(arch, c, num_classes, (h, w), generator=generator(seed, run, 0, 0, STREAM_INIT)).to(device)
    base_lr = protocol.lr or lr or DEFAULT_LR
    losses = train_model(model, to_device(images, device), labels.to(device), protocol, seed=seed, run=run, lr=base_lr,
                         label_spec=label_spec, on_epoch=on_epoch, texture=texture)
    if history is not None:
        history.extend(losses)
    return accuracy(model, test[0], test[1], protocol.test_batch_size)


def evaluate_synset(s: SynSet, arch: str, protocol: TrainProtocol, seed: int, *,
                    test: tuple[torch.Tensor, torch.Tensor], run: int = 0,
                    device: str | torch.device = "cpu") -> float:
    """:func:`evaluate` with the images, labels, label meaning and learned lr a set carries."""
    return evaluate(s.images, s.labels, arch, protocol, seed, test=test, num_classes=s.num_classes, run=run,
                    lr=s.lr, label_spec=s.label_spec, device=device, texture=s.texture)
