"""`dm`: distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution
Matching", WACV 2023; reference: VICO-UoE/DatasetCondensation, ``main_DM.py``).

Each iteration samples a freshly initialised embedding network (parameters frozen, train
mode) and, per class c, a batch of ``batch_real`` real images of class c; ONE DSA draw is
applied to the real batch and to the class's synthetic images (siamese augmentation), and

    loss = Σ_c ‖ mean_i embed(real_c,i) − mean_j embed(syn_c,j) ‖²

(:func:`dm_loss`). Images move by SGD (momentum 0.5, ``lr_img``), as in the reference.
All randomness of iteration ``it`` (network init, real batches, DSA draws) comes from
generators keyed by (seed, it, ...), so a resumed run equals an uninterrupted one.

Implementation notes: the synthetic images of all classes go through the network in one
forward pass. The real batches carry no gradient and are only reduced to per-class means,
so for a batch-independent network (no batch norm in training mode) they go through in
chunks of ``real_chunk`` images: on a CPU a 32-image chunk's activations stay in cache and
the pass takes half the time of one 2,560-image batch (docs/BENCHMARKS.md); the result is
the same up to float rounding. With batch norm (or ``real_chunk: 0``, the default on a GPU)
all real batches go through in one pass, as the reference does for its BN ConvNet. A class
with fewer than ``batch_real`` images contributes all of them, as the reference's
``permutation(...)[:n]`` does.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable, Sequence

import torch

from ..augment import DSAConfig, DSADraw, apply_dsa, sample_dsa
from ..config import configclass, setting
from ..config.parts import Augmentation, Data, Loop, Run, Synthesis
from ..data import load_dataset
from ..data.lazy import to_device
from ..runtime.errors import ConfigError
from ..nets import build_net, parse_arch
from ..nets.base import batch_independent
from ..runtime.rng import generator
from ..synset import SynSet
from .loop import ImageSynthesizer

INITS = ("real", "noise")
STREAM_NET, STREAM_REAL, STREAM_DSA = 11, 12, 13


@configclass(Data, Run, Loop, Synthesis, Augmentation, part="dm",
             drop=("val_size", "trajectories", "teacher", "dsa_share", "min_scale", "flip"),
             defaults={"out": "runs/dm.h5"}, choices={"init": INITS},
             helps={"arch": "the embedding network (random, frozen); the reference's ConvNet-3 is convnet:width=128",
                    "dsa": "DSA augmentation (siamese: one draw per real/synthetic pair of a class)"})
class DMConfig:
    real_chunk: int | None = setting(None, "real images per no-grad forward (0: all at once; default: 32 on a CPU, "
                                           "all elsewhere)", ge=0, unit="images")

    def validate(self, class_sizes: Sequence[int] | None = None) -> None:
        """What the declarations cannot say: ``ipc`` against the smallest class once it is known."""
        if class_sizes is not None:
            smallest = min(class_sizes)
            if self.ipc > smallest:
                raise ConfigError(f"--ipc {self.ipc} exceeds the smallest class of {self.dataset} "
                                  f"({smallest} training images)")


def class_means(features: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Mean over each consecutive block of ``sizes`` rows of ``features`` [sum(sizes), ...]."""
    return [block.mean(0) for block in torch.split(features, list(sizes))]


def real_class_means(stats: Callable[[torch.Tensor], Sequence[torch.Tensor]], real_by_class: Sequence[torch.Tensor],
                     chunk: int = 0) -> list[list[torch.Tensor]]:
    """Per-class means of per-image statistics, without gradient.

    ``stats`` maps images [B, C, H, W] to a sequence of [B, ...] tensors; the result is
    ``means[s][c]`` = mean over class c's images of statistic s. ``chunk`` > 0 evaluates
    ``stats`` on at most that many images at a time (only valid when it is per-image, i.e.
    the network is batch-independent); 0 runs all classes in one call.
    """
    with torch.no_grad():
        if chunk <= 0:
            sizes = [len(x) for x in real_by_class]
            return [class_means(s, sizes) for s in stats(torch.cat(list(real_by_class)))]
        per_class = []
        for x in real_by_class:
            sums = None
            for part in x.split(chunk):
                part_sums = [s.sum(0) for s in stats(part)]
                sums = part_sums if sums is None else [a + b for a, b in zip(sums, part_sums)]
            per_class.append([s / len(x) for s in sums])
        return [list(means) for means in zip(*per_class)]


def dm_loss(embed_fn: Callable[[torch.Tensor], torch.Tensor], real_by_class: Sequence[torch.Tensor],
            syn_by_class: Sequence[torch.Tensor], chunk: int = 0) -> torch.Tensor:
    """Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖² (real embeddings carry no gradient;
    ``chunk`` as in :func:`real_class_means`)."""
    (real,) = real_class_means(lambda x: (embed_fn(x),), real_by_class, chunk)
    syn = class_means(embed_fn(torch.cat(list(syn_by_class))), [len(x) for x in syn_by_class])
    return sum(((r - s) ** 2).sum() for r, s in zip(real, syn))


class MatchingBase(ImageSynthesizer):
    """What DM and DataDAM share: the set, its optimiser, and the per-iteration sampling."""

    method_name = "dm"

    def __init__(self, cfg: DMConfig, ds, device: torch.device):
        self.cfg, self.ds, self.device = cfg, ds, device
        self.arch = str(parse_arch(cfg.arch))
        k = ds.info.num_classes
        self.members = [torch.nonzero(ds.y_train == c).flatten() for c in range(k)]
        cfg.validate([len(m) for m in self.members])
        from .init import initial_images

        images, self.classes, self.indices = initial_images(ds.x_train, ds.y_train, k, cfg.ipc, cfg.init, cfg.seed)
        self.images = images.to(device).requires_grad_(True)
        self.x_train = to_device(ds.x_train, device)
        self.opts = {"images": torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=0.5)}
        # siamese: the real and the synthetic batch share one draw, as the reference's seeded DiffAugment
        self.dsa = DSAConfig(strategy=cfg.dsa_strategy, share="batch") if cfg.dsa else None
        self.chunk = cfg.real_chunk if cfg.real_chunk is not None else (32 if device.type == "cpu" else 0)

    def real_chunk(self, net) -> int:
        """Images per real forward for ``net``: 0 (one pass) unless the net is batch-independent."""
        return self.chunk if batch_independent(net) else 0

    def network(self, it: int):
        """The randomly initialised, frozen network of iteration ``it`` (train mode, as the reference)."""
        c, (h, w) = self.ds.info.channels, self.ds.info.image_size
        net = build_net(self.arch, c, self.ds.info.num_classes, (h, w),
                        generator=generator(self.cfg.seed, it, STREAM_NET)).to(self.device)
        for p in net.parameters():
            p.requires_grad_(False)
        return net.train()

    def real_indices(self, it: int, c: int) -> torch.Tensor:
        """Indices into the training split of class ``c``'s real batch at iteration ``it`` (CPU)."""
        members = self.members[c]
        pick = torch.randperm(len(members), generator=generator(self.cfg.seed, it, c, STREAM_REAL))[:self.cfg.batch_real]
        return members[pick]

    def draw(self, it: int, c: int) -> DSADraw | None:
        """The DSA draw class ``c`` shares between its real and synthetic batch at iteration ``it``."""
        if self.dsa is None:
            return None
        return sample_dsa(self.dsa, 1, tuple(self.ds.info.shape), generator(self.cfg.seed, it, c, STREAM_DSA))

    def batches(self, it: int, images: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per class: (augmented real batch, augmented synthetic images), one DSA draw for both.
        ``images``: the synthetic set in class order (default: ``self.images``)."""
        images = self.images if images is None else images
        reals, syns, per = [], [], len(images) // len(self.members)
        for c in range(len(self.members)):
            real = self.x_train[self.real_indices(it, c).to(self.device)].to(self.device)
            syn = images[c * per:(c + 1) * per]
            draw = self.draw(it, c)
            if draw is not None:
                real, syn = apply_dsa(real, draw), apply_dsa(syn, draw)
            reals.append(real)
            syns.append(syn)
        return reals, syns



class DistributionMatching(MatchingBase):
    """The dm method as a :class:`~condense.methods.loop.Synthesizer`."""

    method_name = "dm"

    def loss(self, it: int) -> torch.Tensor:
        """The matching loss of iteration ``it`` at the current images (differentiable)."""
        net = self.network(it)
        reals, syns = self.batches(it)
        return dm_loss(net.embed, reals, syns, self.real_chunk(net))

    def compute_grads(self, it: int) -> dict[str, float]:
        loss = self.loss(it)
        loss.backward()
        return {"loss": float(loss.detach())}


def load_for(cfg: DMConfig):
    """The dataset of ``cfg`` (training split as the method sees it)."""
    return load_dataset(cfg.dataset, cfg.data_root, zca=cfg.zca, limit_train=cfg.limit_train)


def run_dm(cfg: DMConfig, device: torch.device, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Synthesize (or resume) the set ``cfg.out`` by distribution matching."""
    from .loop import synthesize

    cfg.validate()
    method = DistributionMatching(cfg, load_for(cfg), device)
    return synthesize(method, cfg, cfg.out, {"method": "dm", **asdict(cfg), "arch": method.arch},
                      progress=progress, bars=bars, evaluate=evaluate)
