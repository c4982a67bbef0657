"""Initial synthetic images: real images of each class, noise, or real images chosen by an expert.

- ``real``: a seeded class-balanced random subset (the random-real baseline's selection).
- ``noise``: standard normal values in the network's input space.
- ``correct`` (DATM): per class, a seeded random order of the class's images, keeping
  the first ``ipc`` that a trained expert classifies correctly.
- ``confident``: per class, the ``ipc`` images to which the expert gives the highest
  probability of their class.
- ``kmeans`` (AST's representative initialisation, as in its commit b31fa40d, which works
  for any ipc): per class, k-means with ``ipc`` clusters in the expert's logit space,
  then the real image nearest to each centre. (AST's HEAD hard-codes 10 clusters and
  selects nothing when ipc < 10; we do not reproduce that.)
"""
from __future__ import annotations

from typing import Callable

import torch

from ..data import class_balanced_indices
from ..runtime.errors import ConfigError
from ..runtime.rng import generator

INITS = ("real", "noise", "correct", "confident", "kmeans")
EXPERT_INITS = ("correct", "confident", "kmeans")


def initial_images(x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int, ipc: int, init: str,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(images [K*ipc, C, H, W], classes [K*ipc], source indices or None), class by class.

    ``real``: a seeded class-balanced random subset of the training split (the same
    selection as the random-real baseline with that seed). ``noise``: standard normal
    pixels in the network's input space, from generator (seed, 0).
    """
    if init == "real":
        idx = class_balanced_indices(y_train, ipc, seed)
        return x_train[idx].clone(), y_train[idx].clone(), idx
    if init == "noise":
        classes = torch.arange(num_classes).repeat_interleave(ipc)
        shape = (len(classes), *x_train.shape[1:])
        return torch.randn(shape, generator=generator(seed, 0)), classes, None
    raise ConfigError(f"unknown --init {init!r}; choose one of {', '.join(INITS)} (correct/kmeans need an expert)")


@torch.no_grad()
def expert_logits(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """[N, K] logits of ``predict`` on ``x`` in batches."""
    return torch.cat([predict(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def expert_selected_images(x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int, ipc: int, init: str,
                           seed: int, predict: Callable[[torch.Tensor], torch.Tensor]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``correct``, ``confident`` or ``kmeans`` initialisation (module docstring): (images, classes, indices)."""
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(y_train == c).flatten()
        members = members[torch.randperm(len(members), generator=generator(seed, c))]
        logits = expert_logits(predict, x_train[members])
        if init == "correct":
            ok = members[logits.argmax(1) == c]
            if len(ok) < ipc:
                raise ConfigError(f"the expert classifies only {len(ok)} images of class {c} correctly; "
                                  f"need {ipc} for --init correct")
            chosen.append(ok[:ipc])
        elif init == "confident":
            chosen.append(members[logits.softmax(1)[:, c].argsort(descending=True, stable=True)[:ipc]])
        else:
            chosen.append(members[nearest_to_centres(logits, ipc, seed)])
    idx = torch.cat(chosen)
    return x_train[idx].clone(), y_train[idx].clone(), idx


def nearest_to_centres(features: torch.Tensor, k: int, seed: int, iters: int = 30) -> torch.Tensor:
    """Indices of the ``k`` distinct rows of ``features`` [n, d] nearest to k-means centres.

    k-means++ seeding and Lloyd iterations, all from generator (seed, k).
    """
    n = features.shape[0]
    if k > n:
        raise ConfigError(f"cannot pick {k} images from a class of {n}")
    f = features.double()
    g = generator(seed, k)
    centres = f[torch.randint(n, (1,), generator=g)]
    while centres.shape[0] < k:  # k-means++: next centre drawn in proportion to squared distance
        d2 = torch.cdist(f, centres).pow(2).min(1).values
        centres = torch.cat([centres, f[torch.multinomial(d2 / d2.sum(), 1, generator=g)]])
    for _ in range(iters):
        assign = torch.cdist(f, centres).argmin(1)
        for j in range(k):
            members = f[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    dist = torch.cdist(centres, f)
    picked: list[int] = []
    for j in range(k):  # nearest image to each centre, never the same image twice
        order = dist[j].argsort()
        picked.append(int(next(i for i in order.tolist() if i not in picked)))
    return torch.tensor(picked)
