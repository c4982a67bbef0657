"""Self-supervised teachers: Barlow Twins on a dataset's training images, labels never read.

KRR-ST (Lee et al., ICLR 2024) distils an unlabelled dataset into images and the
representations a self-supervised teacher gives them; its teacher is a Barlow Twins network
(Zbontar et al., ICML 2021). Here the backbone is any condense network (its ``embed``, the
penultimate features [B, D], is the representation) followed by a projector MLP
(Linear -> BatchNorm -> ReLU per hidden layer, a last Linear; no biases, as Barlow Twins).
Two views of every image (random-resized crop, flip and colour jitter, drawn per image) go
through both; the loss on the projections z1, z2 [B, P], standardised over the batch, is

    C = z1ᵀ z2 / B,    loss = Σ_i (1 − C_ii)²  +  λ Σ_{i≠j} C_ij²        (λ = 0.0051)

(:func:`barlow_twins_loss`). Randomness is keyed as every other training here: the order of
epoch e from (seed, 0, e, 0, ORDER), the two views of step t from (seed, 0, e, t, VIEW_1/2).

The labels are used once, after training, to measure the representation: a linear probe
(:func:`linear_probe`) fits the network's own head on the frozen, standardised features of the
training split; its validation and test accuracies are the teacher file's. The standardisation
is folded into the head, so the teacher file is also an ordinary classifier.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from condense.augment import DSAConfig, apply_dsa, sample_dsa
from condense.runtime.rng import generator
from condense.train import STREAM_ORDER, accuracy

SSL_METHODS = ("barlow-twins",)
STREAM_VIEW_1, STREAM_VIEW_2, STREAM_PROBE, STREAM_PROJECTOR = 61, 62, 63, 64


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' loss of two batches of projections z1, z2 [B, P] (module docstring); each is
    standardised over the batch as BatchNorm1d(affine=False) does in training (biased variance)."""
    b = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    z2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    c = z1.T @ z2 / b
    diag = torch.diagonal(c)
    return ((diag - 1) ** 2).sum() + lambd * ((c ** 2).sum() - (diag ** 2).sum())


def projector(dim: int, sizes: Sequence[int], generator: torch.Generator | None = None) -> nn.Sequential:
    """Barlow Twins' projector from features [B, dim]: per hidden size Linear -> BN -> ReLU, then a
    last Linear to ``sizes[-1]`` (no biases). Weights ~ U(±1/sqrt(fan_in)) (torch's default for a
    Linear) drawn from ``generator``, so a teacher is reproduced by its seed."""
    layers: list[nn.Module] = []
    for h in sizes[:-1]:
        layers += [nn.Linear(dim, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
        dim = h
    layers.append(nn.Linear(dim, sizes[-1], bias=False))
    if generator is not None:
        with torch.no_grad():
            for m in layers:
                if isinstance(m, nn.Linear):
                    bound = m.in_features ** -0.5
                    m.weight.uniform_(-bound, bound, generator=generator)
    return nn.Sequential(*layers)


def ssl_views(min_scale: float) -> DSAConfig:
    """The two views' augmentation: random-resized crop (area ≥ ``min_scale``), flip and colour
    (brightness, saturation, contrast), all applied, drawn per image."""
    return DSAConfig(strategy="rrc+flip+color", share="view", rrc_scale=(min_scale, 1.0))


def train_barlow_twins(net: nn.Module, head: nn.Sequential, x: torch.Tensor, *, epochs: int, batch_size: int,
                       lr: float, momentum: float, weight_decay: float, decay_at: float, lambd: float,
                       min_scale: float, seed: int,
                       on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train backbone ``net`` (its ``embed``) and projector ``head`` with Barlow Twins on images
    ``x`` [N, C, H, W] (on the device they are on) by SGD (momentum, weight decay, lr ×0.1 from
    ``decay_at`` of the epochs on). Returns the mean loss of every epoch. The last incomplete
    batch is dropped (batch statistics of a few images are noise)."""
    params = [*net.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cfg, n, dev = ssl_views(min_scale), x.shape[0], x.device
    batch_size = min(batch_size, n)
    net.train()
    head.train()
    losses = []
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 if epoch >= int(decay_at * epochs) and decay_at < 1 else 1.0)
        order = torch.randperm(n, generator=generator(seed, 0, epoch, 0, STREAM_ORDER))
        total, steps = 0.0, n // batch_size
        for step in range(steps):
            xb = x[order[step * batch_size:(step + 1) * batch_size].to(x.device)].to(dev)
            v1, v2 = (apply_dsa(xb, sample_dsa(cfg, xb.shape[0], xb.shape[1:],
                                               generator(seed, 0, epoch, step, stream)).to(dev))
                      for stream in (STREAM_VIEW_1, STREAM_VIEW_2))
            loss = barlow_twins_loss(head(net.embed(v1)), head(net.embed(v2)), lambd)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / max(steps, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses


@torch.no_grad()
def features(net: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The representation ``net.embed`` of images x [N, C, H, W] in eval mode: [N, D] on the CPU."""
    net.eval()
    dev = next(net.parameters()).device
    return torch.cat([net.embed(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, x.shape[0], batch_size)])


def linear_probe(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 100, lr: float = 0.1,
                 weight_decay: float = 1e-5, batch_size: int = 1024, seed: int = 0) -> None:
    """Fit ``net.head`` (Linear D -> K) on the frozen representation of ``x`` [N, C, H, W] with
    classes ``y`` [N]: features standardised with the training split's mean and std, then softmax
    regression by SGD (momentum 0.9, cosine lr); the standardisation is folded into the head, so
    ``net(x)`` is the probe's logits."""
    f = features(net, x)
    mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
    f = (f - mean) / std
    head = nn.Linear(f.shape[1], int(net.head.out_features))
    nn.init.zeros_(head.weight)  # softmax regression is convex: start from zero, nothing drawn
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * -(-f.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(epochs):
        order = torch.randperm(f.shape[0], generator=generator(seed, 0, epoch, 0, STREAM_PROBE))
        for i in range(0, f.shape[0], batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(head(f[idx]), y[idx].long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        w = head.weight / std  # head((f - mean) / std) = (W / std) f + (b - (W / std) mean)
        net.head.weight.copy_(w.to(net.head.weight))
        net.head.bias.copy_((head.bias - w @ mean).to(net.head.bias))


def probe_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of ``x`` [N, C, H, W] that ``net`` (after :func:`linear_probe`) classifies as ``y``."""
    return 100.0 * accuracy(net.eval(), x, y)
