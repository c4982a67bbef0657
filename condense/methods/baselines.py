"""Coreset baselines: `random`, `herding`, `kcenter` — real training images, chosen, not optimised.

- ``random``: a seeded class-balanced random subset (the selection the random-real
  baseline of every table uses).
- ``herding`` (Welling 2009; as iCaRL and the DC benchmark use it): per class, greedily
  add the image whose inclusion brings the mean embedding of the chosen images closest
  to the class's mean embedding.
- ``kcenter`` (greedy k-center, Sener & Savarese 2018): per class, start from the image
  nearest the class mean, then repeatedly add the image farthest from everything chosen.

Herding and k-center work in the embedding space (``embed(x)``, the penultimate layer)
of a network of ``arch`` trained briefly (``embed_epochs`` epochs of the one training
loop, run (seed, 0)) on the real training split; embeddings are of un-augmented images.
The chosen indices into the training split are recorded in the set file.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..config import configclass, setting
from ..config.parts import Augmentation, Data, Run
from ..data import class_balanced_indices, load_dataset
from ..runtime.errors import CondenseError, ConfigError
from ..nets import build_net
from ..runtime.rng import generator
from ..synset import SynSet, load_synset, real_subset
from ..train import STREAM_INIT, TrainProtocol, train_model

@configclass(Data, Run, Augmentation, part="baseline",
             drop=("val_size", "zca", "trajectories", "teacher", "dsa", "dsa_strategy", "min_scale", "flip"),
             defaults={"out": "runs/baseline.h5"},
             helps={"arch": "the embedding network of herding and k-center",
                    "dsa_share": "DSA draws of the embedding network's training: image = per-image parameters "
                                 "(the references); batch = one draw per batch (condense 0.1)"})
class BaselineConfig:
    embed_epochs: int = setting(2, "epochs of real-data training of the embedding network (herding, kcenter)",
                                ge=0, unit="epochs")


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows of ``features`` [n, d] chosen by herding (no repeats), in order."""
    f = features.double()
    mu = f.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(len(f), dtype=torch.bool)
    for t in range(1, k + 1):
        gap = ((mu - (total + f) / t) ** 2).sum(1)  # distance of the class mean to each candidate's new mean
        gap[~available] = float("inf")
        i = int(gap.argmin())
        chosen.append(i)
        total += f[i]
        available[i] = False
    return torch.tensor(chosen)


def kcenter(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows chosen by greedy k-center, starting next to the mean."""
    f = features.double()
    first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    nearest = ((f - f[first]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, ((f - f[i]) ** 2).sum(1))
    return torch.tensor(chosen)


@torch.no_grad()
def embeddings(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 1024) -> torch.Tensor:
    """[N, D] penultimate features of un-augmented images (model in eval mode)."""
    model.eval()
    return torch.cat([model.embed(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def select(selection: str, ds, cfg: BaselineConfig, device: torch.device) -> torch.Tensor:
    """Indices into the training split: ``ipc`` per class, class by class."""
    if selection == "random":
        return class_balanced_indices(ds.y_train, cfg.ipc, cfg.seed)
    counts = torch.bincount(ds.y_train, minlength=ds.info.num_classes)
    if int(counts.min()) < cfg.ipc:
        raise ConfigError(f"--ipc {cfg.ipc} exceeds the smallest class ({int(counts.min())} images)")
    c, (h, w) = ds.info.channels, ds.info.image_size
    model = build_net(cfg.arch, c, ds.info.num_classes, (h, w),
                      generator=generator(cfg.seed, 0, 0, 0, STREAM_INIT)).to(device)
    if cfg.embed_epochs:
        protocol = TrainProtocol(epochs=cfg.embed_epochs, dsa_share=cfg.dsa_share)
        train_model(model, ds.x_train.to(device), ds.y_train.to(device), protocol,
                    seed=cfg.seed, run=0, lr=0.01)
    feats = embeddings(model, ds.x_train, device)
    pick = herding if selection == "herding" else kcenter
    chosen = []
    for k in range(ds.info.num_classes):
        members = torch.nonzero(ds.y_train == k).flatten()
        chosen.append(members[pick(feats[members], cfg.ipc)])
    return torch.cat(chosen)


def run_baseline(cfg: BaselineConfig, device: torch.device, *, selection: str, progress=print, bars: bool = True,
                 evaluate=None) -> SynSet:
    """Choose the subset, write it to ``cfg.out`` and return it."""
    cfg.validate()
    config = {"method": selection, **asdict(cfg), "arch": cfg.arch}
    done = already_selected(cfg.out, config)
    if done is not None:  # a rerun pipeline (or command) does not retrain the embedding network
        progress(f"{cfg.out}: already selected with these settings")
        return done
    ds = load_dataset(cfg.dataset, cfg.data_root, limit_train=cfg.limit_train)
    idx = select(selection, ds, cfg, device)
    s = real_subset(ds, idx, selection, config=config, provenance={"seed": cfg.seed})
    s.save(cfg.out)
    if evaluate is not None:
        progress(f"validation accuracy {100 * evaluate(s):.2f}%")
    return s


def already_selected(out: str, config: dict) -> SynSet | None:
    """The set at ``out`` if it exists and was chosen with the same settings (the identity a
    synthesis run resumes by: everything but where it is written and run), else None."""
    from .loop import identity_hash, same_identity

    if not Path(out).exists():
        return None
    try:
        s = load_synset(out)
    except CondenseError:
        return None  # not a readable set: selecting writes a new one, as it always has
    return s if same_identity(identity_hash(s.config), config) else None
