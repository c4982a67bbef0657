"""Training the label-lightening projector (HeLlO) to reproduce a set's soft labels.

The projector (:mod:`condense.codec_projector`: seeded frozen backbone + low-rank adapters)
is fitted with Adam to minimise the distillation loss KL(p || softmax(z / T)) T^2
between the set's labels p and its own logits z, on exactly the inputs the labels belong
to: the clean images for static labels, the views of epoch e (regenerated from the set's
view seed) for per-view labels ``labels[e]``. Each step takes the views of
``batch // N`` random epochs (or a random subset of the images when N > batch).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from ..runtime.progress import bar

from condense import codec_projector as P
from condense.augment import DSAConfig, views
from condense.codecs import probabilities
from condense.runtime.errors import ConfigError
from condense.runtime.rng import generator
from condense.synset import SynSet


@dataclass(frozen=True)
class ProjectorFit:
    """How the adapters are trained (not stored with the labels: only their result is)."""

    steps: int = 1500
    batch: int = 256
    lr: float = 3e-3
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"projector {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"projector lr must be positive, got {self.lr}")


def distill_loss(z: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean KL(p || softmax(z / T)) * T^2 over the rows of z, p [B, K]."""
    log_q = torch.log_softmax(z / temperature, dim=-1)
    return torch.nn.functional.kl_div(log_q, p, reduction="batchmean") * temperature ** 2


class _Views:
    """The inputs the labels belong to, epoch by epoch (cached: the same views recur)."""

    def __init__(self, s: SynSet):
        self.images, self.spec = s.images.float(), s.label_spec
        self.config = DSAConfig(strategy=self.spec.view_strategy) if self.spec.view_mode == "per-view" else None
        self.cache: dict[int, torch.Tensor] = {}

    def __call__(self, epoch: int) -> torch.Tensor:
        if self.config is None:
            return self.images
        if epoch not in self.cache:
            self.cache[epoch] = views(self.images, self.config, self.spec.view_seed, epoch)
        return self.cache[epoch]


def label_error(net, adapters, views: _Views, targets: torch.Tensor, temperature: float, epochs: list[int]) -> float:
    """Mean distillation loss of the projector against the labels of ``epochs`` (static: all images)."""
    with torch.no_grad():
        if targets.ndim == 2:
            return float(distill_loss(P.project(net, adapters, views(0)), targets, temperature))
        return float(np.mean([float(distill_loss(P.project(net, adapters, views(e)), targets[e], temperature))
                              for e in epochs]))


def fit_projector(s: SynSet, params: Mapping[str, Any], fit: ProjectorFit = ProjectorFit(),
                  progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train a projector on ``s``'s soft labels; returns (stored arrays, fit report).

    The report has the steps, seconds, the label error (distillation loss) before and
    after training on a fixed sample of views, and the loss per step.
    """
    fit.validate()
    spec = s.label_spec
    if spec.kind not in ("logits", "probabilities"):
        raise ConfigError("the projector reproduces soft labels; this set has "
                          f"{spec.kind} labels (make soft labels with --teacher first)")
    net = P.backbone(s.image_shape, s.num_classes, params)
    adapters = {k: v.requires_grad_(True) for k, v in P.init_adapters(net, int(params["rank"]),
                                                                         generator(fit.seed, 0)).items()}
    targets = probabilities(s.labels.float(), spec)
    views, t = _Views(s), spec.temperature
    n = s.images.shape[0]
    num_views = targets.shape[0] if spec.view_mode == "per-view" else 1
    probe = sorted(set(np.linspace(0, num_views - 1, min(num_views, 16)).astype(int).tolist()))
    before = label_error(net, adapters, views, targets, t, probe)
    opt = torch.optim.Adam(adapters.values(), lr=fit.lr)
    gen = generator(fit.seed, 1)
    losses, start = [], time.perf_counter()
    for step in bar(iterable=range(fit.steps), desc="fit projector", unit="step", disable=not progress):
        if spec.view_mode == "per-view":
            epochs = torch.randint(num_views, (max(1, fit.batch // n),), generator=gen).tolist()
            x = torch.cat([views(e) for e in epochs])
            p = torch.cat([targets[e] for e in epochs])
        else:
            x, p = views(0), targets
        if x.shape[0] > fit.batch:
            pick = torch.randperm(x.shape[0], generator=gen)[:fit.batch]
            x, p = x[pick], p[pick]
        loss = distill_loss(P.project(net, adapters, x), p, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    arrays = P.to_arrays(adapters, int(params["bits"]))
    stored = P.from_arrays(net, arrays, int(params["rank"]))
    after = label_error(net, stored, views, targets, t, probe)
    return arrays, {"steps": fit.steps, "batch": fit.batch, "lr": fit.lr, "seed": fit.seed,
                    "seconds": round(time.perf_counter() - start, 2), "label_error_before": before,
                    "label_error_after": after, "loss": losses}
