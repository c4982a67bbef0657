"""Teachers: trained networks whose predictions become soft labels.

A teacher is one epoch of one or more experts in a trajectory store (the final epoch
by default). With a committee of N experts (CV-DD's committee voting) the label is the
average of their class probabilities at the labelling temperature, returned as logits
T * log(mean p) so that softmax(. / T) gives that average back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from condense.errors import ConfigError
from condense.nets import build_net
from condense.synset import SynSet


@dataclass
class Teacher:
    """Networks in eval mode (one, or a committee) and where they came from."""

    nets: list[nn.Module]
    source: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, temperature: float = 1.0, batch: int = 512) -> torch.Tensor:
        """Teacher logits [B, K] for images ``x`` [B, C, H, W] (committee: see module doc)."""
        out = []
        for start in range(0, x.shape[0], batch):
            xb = x[start:start + batch]
            z = [net(xb) for net in self.nets]
            if len(z) == 1:
                out.append(z[0])
            else:
                p = torch.stack([torch.softmax(zi / temperature, dim=-1) for zi in z]).mean(0)
                out.append(temperature * torch.log(p.clamp_min(1e-12)))
        return torch.cat(out).float()


def load_teacher(folder: str, synset: SynSet, *, expert: int = 0, epoch: int | None = None,
                 committee: int = 1) -> Teacher:
    """Experts ``expert .. expert + committee - 1`` of the store in ``folder`` at ``epoch``
    (default: the last), built for ``synset``'s images.

    Raises ConfigError (one line) when the store's dataset, normalisation/ZCA or image
    shape differs from the set's, or the experts/epoch do not exist.
    """
    from trajectories.store import open_store

    store = open_store(folder)
    meta = store.meta
    if meta["dataset"] != synset.dataset:
        raise ConfigError(f"teacher {folder} was trained on {meta['dataset']}, the set is {synset.dataset}")
    if meta.get("transform") != synset.transform.describe():
        raise ConfigError(f"teacher {folder} saw another normalisation/ZCA than the set "
                          f"({meta.get('transform')} vs {synset.transform.describe()})")
    shape = [int(v) for v in meta.get("image_shape", [])]
    if shape != list(synset.image_shape):
        raise ConfigError(f"teacher {folder} takes images of shape {shape}, the set's are {list(synset.image_shape)}")
    if committee < 1:
        raise ConfigError(f"--committee must be >= 1, got {committee}")
    if expert < 0 or expert + committee > len(store):
        raise ConfigError(f"teacher {folder} holds {len(store)} finished experts; experts {expert}.."
                          f"{expert + committee - 1} were asked for")
    epoch = store.epochs if epoch is None else int(epoch)
    if not 0 <= epoch <= store.epochs:
        raise ConfigError(f"--teacher-epoch must be in 0..{store.epochs} (the store's epochs), got {epoch}")
    c, h, w = synset.image_shape
    nets = []
    for i in range(expert, expert + committee):
        net = build_net(meta["arch"], c, synset.num_classes, (h, w))
        store.layout.load_into(net, store.epoch(i, epoch))
        nets.append(net.eval())
    return Teacher(nets, {"store": str(folder), "store_key": meta.get("store_key"), "arch": meta["arch"],
                          "experts": list(range(expert, expert + committee)), "epoch": epoch})
