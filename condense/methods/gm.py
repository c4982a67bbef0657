"""`gm`: gradient matching with differentiable siamese augmentation (DC / DSA, Zhao et al. 2021).

Each iteration draws a fresh network. For ``outer_loop`` rounds: per class c, the
gradient of the loss on a real batch of class c and on the synthetic images of class c
(both under ONE DSA draw: siamese) are compared layer by layer,

    D(G_real, G_syn) = Σ_layers Σ_rows (1 − cos(g_real_row, g_syn_row))

(conv weights reshaped to [out, in·h·w], linear weights as [out, in]; 1-D parameters —
biases, norm weights — contribute nothing, as in the reference ``distance_wb``), the
images take one SGD step (momentum 0.5) on Σ_c D, and then the network trains
``inner_loop`` epochs on the synthetic set (plain SGD, lr_net, DSA) before the next
round. Reference: VICO-UoE/DatasetCondensation main.py and utils.py (match_loss with
dis_metric 'ours', get_loops). All randomness comes from generators keyed by
(seed, it, round, class).
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch
import torch.nn.functional as F

from ..augment import DSAConfig, apply_dsa, sample_dsa
from ..config import configclass, setting
from ..config.parts import Augmentation, Data, Loop, Run, Synthesis
from ..data import load_dataset
from ..runtime.errors import ConfigError
from ..nets import build_net
from ..runtime.rng import generator
from ..synset import SynSet
from ..train import STREAM_INIT, TrainProtocol, train_model
from .init import initial_images
from .loop import ImageSynthesizer

STREAM_REAL, STREAM_DSA = 10, 11
# DC/DSA's get_loops: (outer_loop, inner_loop) by images per class.
REFERENCE_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


@configclass(Data, Run, Loop, Synthesis, Augmentation, part="gm",
             drop=("val_size", "trajectories", "teacher", "min_scale", "flip"),
             defaults={"lr_img": 0.1, "out": "runs/gm.h5"}, choices={"init": ("real", "noise")},
             helps={"dsa_share": "DSA draws of the inner network updates: image = per-image parameters (DC's "
                                 "epoch(), default); batch = one draw per batch; matching is always siamese"})
class GMConfig:
    lr_net: float = setting(0.01, "learning rate of the network's inner training", gt=0)
    outer_loop: int | None = setting(None, "matching rounds per iteration (default: DC's for the ipc)", gt=0, le=10_000)
    inner_loop: int | None = setting(None, "network epochs between rounds (default: DC's for the ipc)", ge=0, le=10_000)

    def loops(self) -> tuple[int, int]:
        """(outer, inner): the given values, else DC/DSA's for the ipc."""
        ref = REFERENCE_LOOPS.get(self.ipc, (10, 50))
        return (self.outer_loop or ref[0], self.inner_loop if self.inner_loop is not None else ref[1])

def layer_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """Σ_rows (1 − cos) between two gradients of one parameter; 0 for 1-D parameters."""
    if g_real.ndim == 1:
        return torch.zeros((), dtype=g_syn.dtype, device=g_syn.device)
    a, b = g_real.reshape(g_real.shape[0], -1), g_syn.reshape(g_syn.shape[0], -1)
    return (1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)).sum()


def gm_distance(g_real: list[torch.Tensor], g_syn: list[torch.Tensor]) -> torch.Tensor:
    """DC's 'ours' distance: the sum of :func:`layer_distance` over parameters."""
    return sum((layer_distance(a, b) for a, b in zip(g_real, g_syn)), torch.zeros(()))


class GradientMatching(ImageSynthesizer):
    """The gm method as a :class:`~condense.methods.loop.Synthesizer`."""

    def __init__(self, cfg: GMConfig, ds, device: torch.device):
        self.cfg, self.ds, self.device = cfg, ds, device
        k = ds.info.num_classes
        counts = torch.bincount(ds.y_train, minlength=k)
        if int(counts.min()) < cfg.ipc:
            raise ConfigError(f"--ipc {cfg.ipc} exceeds the smallest class ({int(counts.min())} images)")
        images, self.classes, self.indices = initial_images(ds.x_train, ds.y_train, k, cfg.ipc, cfg.init, cfg.seed)
        self.images = images.to(device).requires_grad_(True)
        self.opts = {"images": torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=0.5)}
        self.by_class = [torch.nonzero(ds.y_train == c).flatten() for c in range(k)]
        self.syn_of = [torch.nonzero(self.classes == c).flatten().to(device) for c in range(k)]
        # matching is siamese (one draw per class pair, as the reference's seeded call); the inner
        # network updates train as the reference's epoch() does (dsa_share, per image by default)
        self.dsa = DSAConfig(strategy=cfg.dsa_strategy, share="batch") if cfg.dsa else None
        self.outer, self.inner = cfg.loops()

    def _real_batch(self, it: int, rnd: int, c: int) -> torch.Tensor:
        members = self.by_class[c]
        pick = torch.randperm(len(members), generator=generator(self.cfg.seed, it, rnd, c, STREAM_REAL))
        return self.ds.x_train[members[pick[:self.cfg.batch_real]]].to(self.device)

    def compute_grads(self, it: int) -> dict[str, float]:
        """All outer rounds of iteration ``it``: earlier rounds step the images here (DC takes
        one image step per round); the last round's gradient is left for the loop's guarded
        step. A non-finite round ends the iteration with loss nan, so the loop skips it."""
        cfg, k, c_, (h, w) = self.cfg, self.ds.info.num_classes, self.ds.info.channels, self.ds.info.image_size
        net = build_net(cfg.arch, c_, k, (h, w), generator=generator(cfg.seed, it, 0, 0, STREAM_INIT)).to(self.device)
        params = list(net.parameters())
        total = 0.0
        for rnd in range(self.outer):
            loss = torch.zeros((), device=self.device)
            for c in range(k):
                real = self._real_batch(it, rnd, c)
                syn = self.images[self.syn_of[c]]
                if self.dsa is not None:  # one draw for both: siamese
                    draw = sample_dsa(self.dsa, 1, (c_, h, w), generator(cfg.seed, it, rnd, c, STREAM_DSA))
                    real, syn = apply_dsa(real, draw), apply_dsa(syn, draw)
                y_real = torch.full((len(real),), c, device=self.device)
                y_syn = torch.full((len(syn),), c, device=self.device)
                g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(real), y_real), params)]
                g_syn = torch.autograd.grad(F.cross_entropy(net(syn), y_syn), params, create_graph=True)
                loss = loss + gm_distance(g_real, list(g_syn))
            if not math.isfinite(float(loss.detach())):
                return {"loss": float("nan")}  # the loop skips this iteration's last step and says so
            total += float(loss.detach())
            self.images.grad = torch.autograd.grad(loss, self.images)[0]
            if rnd == self.outer - 1:
                break  # the loop takes this last step (and guards it)
            self.opts["images"].step()
            if self.inner:  # train the network on the current synthetic set (DC: plain SGD, DSA)
                proto = TrainProtocol(epochs=self.inner, lr=cfg.lr_net, momentum=0.0, weight_decay=0.0, decay_at=1.0,
                                      dsa=cfg.dsa, dsa_strategy=cfg.dsa_strategy, dsa_share=cfg.dsa_share)
                train_model(net, self.images.detach(), self.classes.to(self.device), proto, seed=cfg.seed,
                            run=it * self.outer + rnd, lr=cfg.lr_net)
        return {"loss": total / self.outer}

    def synset(self, it: int) -> SynSet:
        return SynSet.hard(self.images.detach().cpu().clone(), self.classes.clone(), dataset=self.ds.info.name,
                           num_classes=self.ds.info.num_classes, method="gm", transform=self.ds.transform,
                           data=dict(self.ds.meta), config={"method": "gm", **asdict(self.cfg), "arch": self.cfg.arch},
                           provenance={"seed": self.cfg.seed, "iteration": it})


def run_gm(cfg: GMConfig, device: torch.device, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Synthesize (or resume) ``cfg.out`` by gradient matching."""
    from .loop import synthesize

    cfg.validate()
    ds = load_dataset(cfg.dataset, cfg.data_root, zca=cfg.zca, limit_train=cfg.limit_train)
    return synthesize(GradientMatching(cfg, ds, device), cfg, cfg.out, {"method": "gm", **asdict(cfg)},
                      progress=progress, bars=bars, evaluate=evaluate)
