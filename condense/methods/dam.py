"""`dam`: attention matching (Sajedi et al., "DataDAM: Efficient Dataset Distillation with
Attention Matching", ICCV 2023; reference: DataDistillation/DataDAM, ``main_DataDAM.py``
and ``utils.py::get_attention``).

Each iteration samples a randomly initialised, frozen network; per class c a real batch
and the class's synthetic images get ONE siamese DSA draw. With ``f_l`` the output of
stage l (:meth:`feature_maps`) and ``e`` the final-layer embedding,

    A_p(f) = normalize_L2( Σ_channels |f|^p )           flattened over H×W, per image
    SAM    = Σ_c Σ_{l < L} ‖ mean_i A_p(f_l(real_c,i)) − mean_j A_p(f_l(syn_c,j)) ‖²
    MMD    = Σ_c ‖ mean_i e(real_c,i) − mean_j e(syn_c,j) ‖²   (linear-kernel MMD, = DM's loss)
    loss   = loss_scale · (SAM + mmd_weight · MMD)

as in the released code: attention SUMMED over channels (``get_attention(param=1)``),
L2-normalised per image (``F.normalize``), every stage but the last for SAM (the code
hooks all ReLUs but the last), the last stage's flattened maps for MMD, both terms
multiplied by 100 (``loss_scale``) and MMD by ``task_balance`` λ = 0.01 (``mmd_weight``).

Paper vs code: the paper's hyper-parameter table (README, img/HPTable.png) gives p = 4 and
8,000 iterations; ``main_DataDAM.py`` calls ``get_attention(..., exp=1)`` (p = 1) with
``--Iteration 20000``. The defaults here are the paper's; the preset
``cifar10/dam-ipc10-code.yaml`` has the code's values. Both use lr_img 1, SGD momentum
0.5, λ = 0.01 and (code default) 64 real images per class.

Deviations: the maps are the stage outputs after pooling (the code hooks the ReLU outputs
before pooling), and the network is our instance-norm ConvNet (the paper's table says
InstanceNorm; the code's ``get_network('ConvNet')`` builds a BatchNorm one).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..config import configclass, setting
from ..nets.base import SequentialConvNet
from ..synset import SynSet
from .dm import DMConfig, MatchingBase, class_means, load_for, real_class_means


@configclass(part="dam", defaults={"iters": 8000, "batch_real": 64, "out": "runs/dam.h5"},
             helps={"iters": "synthesis iterations (paper 8,000; the released code 20,000)"})
class DAMConfig(DMConfig):
    power: float = setting(4.0, "power p of the attention maps (paper 4, released code 1)", ge=1, le=16)
    mmd_weight: float = setting(0.01, "weight of the final-layer MMD term (DataDAM's task_balance; 0.02 at "
                                      "high resolution)", ge=0)
    loss_scale: float = setting(100.0, "factor on the whole loss (the released code's 100; matters for --lr-img)",
                                gt=0)


def attention_map(feature: torch.Tensor, p: float) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W]: Σ_channels |f|^p, flattened, L2-normalised per image."""
    a = feature.abs().pow(p).sum(1).flatten(1)
    return F.normalize(a, p=2.0, dim=1)


def maps_and_embedding(net) -> Callable[[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]]:
    """x -> (stage outputs, final embedding) in one forward pass where the net allows it."""
    if isinstance(net, SequentialConvNet):  # embed == flattened last stage
        def run(x):
            maps = net.feature_maps(x)
            return maps, maps[-1].flatten(1)
        return run
    return lambda x: (net.feature_maps(x), net.embed(x))


def dam_loss(forward: Callable[[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]],
             real_by_class: Sequence[torch.Tensor], syn_by_class: Sequence[torch.Tensor], power: float,
             mmd_weight: float, loss_scale: float = 100.0,
             chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss_scale · (SAM + mmd_weight · MMD), SAM, MMD) of the module docstring: three scalars.

    ``forward`` as :func:`maps_and_embedding` returns; real features carry no gradient (``chunk``
    as in :func:`~condense.methods.dm.real_class_means`); the synthetic images of all classes go
    through in one forward.
    """
    def real_stats(x):
        maps, emb = forward(x)
        return [attention_map(f, power) for f in maps[:-1]] + [emb]

    *real_att, real_mean = real_class_means(real_stats, real_by_class, chunk)
    ss = [len(x) for x in syn_by_class]
    syn_maps, syn_emb = forward(torch.cat(list(syn_by_class)))
    sam = syn_emb.new_zeros(())
    for real_layer, f in zip(real_att, syn_maps[:-1]):
        for r, s in zip(real_layer, class_means(attention_map(f, power), ss)):
            sam = sam + ((r - s) ** 2).sum()
    mmd = sum(((r - s) ** 2).sum() for r, s in zip(real_mean, class_means(syn_emb, ss)))
    return loss_scale * (sam + mmd_weight * mmd), sam, mmd


class AttentionMatching(MatchingBase):
    """The dam method as a :class:`~condense.methods.loop.Synthesizer`."""

    method_name = "dam"

    def terms(self, it: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, SAM, MMD) of iteration ``it`` at the current images (:func:`dam_loss`, differentiable)."""
        cfg, net = self.cfg, self.network(it)
        reals, syns = self.batches(it)
        return dam_loss(maps_and_embedding(net), reals, syns, cfg.power, cfg.mmd_weight, cfg.loss_scale,
                        self.real_chunk(net))

    def loss(self, it: int) -> torch.Tensor:
        return self.terms(it)[0]

    def compute_grads(self, it: int) -> dict[str, float]:
        loss, sam, mmd = self.terms(it)
        loss.backward()
        return {"loss": float(loss.detach()), "sam": float(sam.detach()), "mmd": float(mmd.detach())}


def run_dam(cfg: DAMConfig, device: torch.device, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Synthesize (or resume) the set ``cfg.out`` by attention matching."""
    from .loop import synthesize

    cfg.validate()
    method = AttentionMatching(cfg, load_for(cfg), device)
    return synthesize(method, cfg, cfg.out, {"method": "dam", **asdict(cfg), "arch": method.arch},
                      progress=progress, bars=bars, evaluate=evaluate)
