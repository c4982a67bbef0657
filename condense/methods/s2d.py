"""`s2d`: video distillation by static/dynamic disentanglement (Wang et al., "Dancing with Still Images:
Video Distillation via Static-Dynamic Disentanglement", CVPR 2024; reference yuz1wan/video_distillation,
``distill_s2d_ms.py``).

Stage 1, done by any image method on ``DATASET-frames`` (one frame of every clip): the static memory,
S = group x ipc stills per class (the paper: DC, group 2). Stage 2, this method: per class S dynamic
memories ``randn [T, 1, H, W]`` and one integrator shared by all classes (a Conv3d(C + 1 -> C, 3 x 3 x 3))
turn the frozen stills into clips (:mod:`condense.video_memory`: slot j pairs stills and dynamic
memories g·j … g·j + g − 1, every pairing a clip), and ``--finetune`` learns them:

- ``dm``: video distribution matching. Iteration ``it`` draws a random frozen video network (``--arch``,
  ConvNet3D by default, train mode) and per class ``batch_real`` real clips; loss
  Σ_c ‖mean embed(real_c) − mean embed(clips_c)‖² (:func:`~condense.methods.dm.dm_loss`; with DSA, one
  siamese draw per class applied to every frame alike).
- ``tm``: video trajectory matching against experts of a video network (``--trajectories``, recorded by
  ``condense buffer`` on DATASET): ``syn_steps`` student SGD steps on batches of the clips from expert
  epoch s with a learned step size α = exp(ρ), loss ‖θ_N − θ*_{s+M}‖² / ‖θ*_s − θ*_{s+M}‖²
  (:func:`~condense.methods.tm_math.match_exact`).
- ``none``: no dynamic memory: every still is a clip repeated over T frames (the static-only set).

Gradients reach the dynamic memories and the integrator (SGD, momentum 0.95, ``lr_dynamic`` and
``lr_integrator``, as the reference); the stills stay as stage 1 left them (the reference's scripts
pass ``--no_train_static``). All randomness of iteration ``it`` comes from generators keyed by
(seed, it, ...), so a killed run resumes to the same set.

Where condense differs from the reference, on purpose: the clips are every pairing of a slot's stills
and dynamic memories, not one random pairing per forward pass, so the evaluation trains on exactly
the clips that were distilled (the reference also redraws them during evaluation).
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch
import torch.nn.functional as F

from ..config import configclass, setting
from ..config.parts import Augmentation, Data, Loop, Matching, Run, Synthesis
from ..data import load_dataset
from ..data.datasets import FRAMES_SUFFIX
from ..data.lazy import to_device
from ..nets import FlatLayout, build_net, parse_arch
from ..nets.init import init_parameters
from ..runtime.errors import ConfigError
from ..runtime.rng import generator
from ..synset import SynSet, file_sha256, load_synset
from ..video_memory import VideoMemory, compose
from ..augment import DSAConfig, sample_dsa
from .dm import MatchingBase, dm_loss
from .tm import STREAM_DSA as TM_STREAM_DSA, STREAM_PICK, check_window, expert_epoch, open_store_for, student_batches
from .tm_math import Step, Target, match_exact

FINETUNES = ("dm", "tm", "none")
STREAM_DYNAMIC, STREAM_INTEGRATOR = 21, 22


@configclass(Data, Run, Loop, Synthesis, Matching, Augmentation, part="s2d",
             drop=("val_size", "zca", "teacher", "init", "lr_img", "dsa_share", "min_scale", "flip"),
             defaults={"dataset": "moving-fashion", "arch": "convnet3d", "iters": 500, "batch_real": 64,
                       "syn_steps": 10, "expert_epochs": 1, "max_start_epoch": 10, "out": "runs/s2d.h5"},
             helps={"dataset": "the video dataset (`condense datasets`; its stills come from DATASET-frames)",
                    "ipc": "video slots per class (VPC): the set holds ipc x group^2 clips per class",
                    "arch": "--finetune dm: the embedding network (random, frozen), a video net such as "
                            "convnet3d:width=128",
                    "trajectories": "--finetune tm: experts of a video network on DATASET (`condense buffer`)",
                    "dsa": "DSA augmentation, one draw for all frames of a clip (the reference uses none)",
                    "batch_real": "--finetune dm: real clips per class and iteration",
                    "batch_syn": "--finetune tm: clips per student step (default: all)"},
             units={"ipc": "slots", "batch_real": "clips", "batch_syn": "clips"})
class S2DConfig:
    static: str = setting("", "the static memory: a set distilled on DATASET-frames by an image method "
                              "(group x ipc stills per class)", metavar="SET")
    finetune: str = setting("dm", "how the dynamic memory and the integrator are learned: dm (video distribution "
                                  "matching), tm (video trajectory matching) or none (the static-only set)",
                            choices=FINETUNES)
    group: int = setting(2, "stills and dynamic memories per video slot (the paper: 2)", gt=0, le=8)
    lr_dynamic: float = setting(1e-4, "learning rate of the dynamic memory (SGD, momentum 0.95)", gt=0)
    lr_integrator: float = setting(1e-5, "learning rate of the integrator (SGD, momentum 0.95)", gt=0)

    def validate(self, epochs_stored: int | None = None) -> None:
        """What the declarations cannot say: the inputs each --finetune needs (and the expert window against
        the ``epochs_stored`` of the store)."""
        if not self.static:
            raise ConfigError(f"s2d needs --static SET: distil {self.dataset}{FRAMES_SUFFIX} with an image method "
                              f"first (e.g. condense synth dm --dataset {self.dataset}{FRAMES_SUFFIX} --ipc "
                              f"{self.group * self.ipc})")
        if self.finetune == "tm" and not self.trajectories:
            raise ConfigError("s2d --finetune tm needs --trajectories STORE: experts of a video network on "
                              f"{self.dataset} (condense buffer --dataset {self.dataset} --arch convnet3d)")
        if self.finetune == "tm":
            check_window(self, epochs_stored)


def load_static(cfg: S2DConfig, ds) -> tuple[torch.Tensor, SynSet]:
    """The stills [K, S, C, H, W] of ``cfg.static``, checked against the video dataset ``ds``."""
    s = load_synset(cfg.static)
    want = f"{ds.info.name}{FRAMES_SUFFIX}"
    stills = cfg.group * cfg.ipc
    if s.dataset != want:
        raise ConfigError(f"{cfg.static} was distilled on {s.dataset}; the static memory of {ds.info.name} comes "
                          f"from {want}")
    if s.is_video or s.image_shape != tuple(ds.info.shape[1:]):
        raise ConfigError(f"{cfg.static} holds {list(s.image_shape)} samples; stills of {list(ds.info.shape[1:])} "
                          "are needed")
    if s.transform.describe() != ds.transform.describe():
        raise ConfigError(f"{cfg.static} was made with another normalisation than {ds.info.name} has here")
    if s.ipc != stills:
        raise ConfigError(f"{cfg.static} holds {s.ipc} stills per class; --ipc {cfg.ipc} with --group {cfg.group} "
                          f"needs {stills}")
    if not torch.equal(s.classes, torch.arange(s.num_classes).repeat_interleave(s.ipc)):
        raise ConfigError(f"{cfg.static} does not hold its stills class by class")
    return s.images.view(s.num_classes, s.ipc, *s.image_shape), s


class StaticDynamic(MatchingBase):
    """The s2d method as a :class:`~condense.methods.loop.Synthesizer`."""

    method_name = "s2d"

    def __init__(self, cfg: S2DConfig, ds, device: torch.device, store=None):
        self.cfg, self.ds, self.device, self.store = cfg, ds, device, store
        statics, self.static_set = load_static(cfg, ds)
        self.statics = statics.to(device)
        k, s, c, h, w = statics.shape
        t = ds.info.frames
        self.dynamics = torch.randn(k, s, t, 1, h, w, generator=generator(cfg.seed, 0, STREAM_DYNAMIC)).to(device)
        integrator = init_parameters(torch.nn.Conv3d(c + 1, c, 3, padding=1), generator(cfg.seed, 0, STREAM_INTEGRATOR))
        self.weight, self.bias = (p.detach().clone().to(device) for p in (integrator.weight, integrator.bias))
        for p in (self.dynamics, self.weight, self.bias):
            p.requires_grad_(True)
        self.opts = {"dynamics": torch.optim.SGD([self.dynamics], lr=cfg.lr_dynamic, momentum=0.95),
                     "integrator": torch.optim.SGD([self.weight, self.bias], lr=cfg.lr_integrator, momentum=0.95)}
        self.members = [torch.nonzero(ds.y_train == c).flatten() for c in range(k)]
        if cfg.finetune == "dm":
            self.arch = str(parse_arch(cfg.arch))
            self.x_train = to_device(ds.x_train, device)
            self.dsa = DSAConfig(strategy=cfg.dsa_strategy, share="batch") if cfg.dsa else None
            self.chunk = 32 if device.type == "cpu" else 0
        else:
            self.arch = store.meta["arch"]
            self.net = build_net(self.arch, c, k, (h, w), generator=generator(cfg.seed, 0)).to(device)
            FlatLayout.of(self.net).check_compatible(store.layout)
            self.lr_init = cfg.lr_init or float(store.meta["protocol"]["lr"])
            self.log_lr = torch.tensor(math.log(self.lr_init), device=device).requires_grad_(True)
            self.opts["log_lr"] = torch.optim.SGD([self.log_lr], lr=cfg.lr_lr / self.lr_init ** 2, momentum=0.5)
            self.dsa = DSAConfig(strategy=cfg.dsa_strategy, share="image") if cfg.dsa else None
        self.classes = torch.arange(k).repeat_interleave(cfg.ipc * cfg.group ** 2)

    def clips(self) -> torch.Tensor:
        """Every clip of the memory [K · ipc · g², T, C, H, W], graph attached."""
        return compose(self.statics, self.dynamics, self.weight, self.bias, self.cfg.group, self.ds.info.frames)

    # -- one iteration ---------------------------------------------------------------------------
    def compute_grads(self, it: int) -> dict[str, float]:
        if self.cfg.finetune == "dm":
            net = self.network(it)
            reals, syns = self.batches(it, self.clips())
            loss = dm_loss(net.embed, reals, syns, self.real_chunk(net))
            loss.backward()
            return {"loss": float(loss.detach())}
        return self.match(it)

    def match(self, it: int) -> dict[str, float]:
        """Video trajectory matching: plan (expert, start epoch, batches), unroll, gradients."""
        cfg, store, dev = self.cfg, self.store, self.device
        pick = generator(cfg.seed, it, 0, STREAM_PICK)
        expert = int(torch.randint(len(store), (1,), generator=pick))
        s = int(torch.randint(cfg.min_start_epoch, cfg.max_start_epoch, (1,), generator=pick))
        size = len(self.classes)
        steps = [Step(idx.to(dev), None if self.dsa is None else
                      sample_dsa(self.dsa, len(idx), tuple(self.ds.info.shape),
                                 generator(cfg.seed, it, t, TM_STREAM_DSA)))
                 for t, idx in enumerate(student_batches(cfg.seed, it, cfg.syn_steps, size, cfg.batch_syn))]
        start = expert_epoch(store, expert, s).to(dev)
        target = Target(cfg.syn_steps, expert_epoch(store, expert, s + cfg.expert_epochs).to(dev))
        loss = match_exact(self.net, start, [target], self.clips(), self.classes.to(dev), self.log_lr.exp(), steps,
                           F.cross_entropy)
        learn = self.learnables()
        for tensor, grad in zip(learn.values(), torch.autograd.grad(loss, list(learn.values()))):
            tensor.grad = grad
        return {"loss": float(loss.detach()), "lr": self.learned_lr(), "expert": expert, "start_epoch": s}

    # -- Synthesizer -------------------------------------------------------------------------------
    def learned_lr(self) -> float | None:
        return float(self.log_lr.detach().exp()) if self.cfg.finetune == "tm" else None

    def learnables(self) -> dict[str, torch.Tensor]:
        out = {"dynamics": self.dynamics, "weight": self.weight, "bias": self.bias}
        if self.cfg.finetune == "tm":
            out["log_lr"] = self.log_lr
        return out

    def validate_state(self) -> str | None:
        lr = self.learned_lr()
        if lr is None or (math.isfinite(lr) and 0 < lr < 1e3 * self.lr_init):
            return None
        return f"learned lr {lr:.4g} out of range"

    def memory(self) -> VideoMemory:
        return VideoMemory(self.statics.detach().cpu().clone(), self.dynamics.detach().cpu().clone(),
                           self.weight.detach().cpu().clone(), self.bias.detach().cpu().clone(), self.cfg.group,
                           self.ds.info.frames)

    def synset(self, it: int) -> SynSet:
        return memory_set(self.memory(), self.cfg, self.ds, self.static_set, it, self.arch, self.learned_lr(),
                          self.store)


def memory_set(memory: VideoMemory, cfg: S2DConfig, ds, static_set: SynSet, it: int, arch: str | None,
               lr: float | None, store=None) -> SynSet:
    """The set of ``memory``: its clips expanded, the memory kept as what is stored."""
    clips, classes = memory.expand()
    provenance = {"seed": cfg.seed, "iteration": it, "static": str(cfg.static),
                  "static_sha256": file_sha256(cfg.static), "static_method": static_set.method}
    if store is not None:
        provenance.update({"store": str(store.folder), "store_key": store.meta["store_key"]})
    return SynSet.hard(clips, classes, dataset=ds.info.name, num_classes=ds.info.num_classes,
                       method="s2d" if memory.dynamics is not None else "static", transform=ds.transform,
                       data=dict(ds.meta), lr=lr, memory=memory, provenance=provenance,
                       config={"method": "s2d", **asdict(cfg), "arch": arch})


def run_s2d(cfg: S2DConfig, device: torch.device, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Synthesize (or resume) the video set ``cfg.out`` from the static memory ``cfg.static``."""
    from .loop import synthesize

    cfg.validate()
    store = None
    if cfg.finetune == "tm":
        store, ds = open_store_for(cfg)
        if ds.info.name != cfg.dataset:
            raise ConfigError(f"{cfg.trajectories} holds experts of {ds.info.name}, not {cfg.dataset}")
    else:
        ds = load_dataset(cfg.dataset, cfg.data_root, limit_train=cfg.limit_train)
    if not ds.info.frames:
        raise ConfigError(f"{cfg.dataset} holds images; s2d distils a video dataset (e.g. moving-fashion)")
    if cfg.finetune == "none":
        statics, static_set = load_static(cfg, ds)
        s = memory_set(VideoMemory(statics.clone(), None, None, None, 1, ds.info.frames), cfg, ds, static_set, 0,
                       None, None)
        s.save(cfg.out)
        return s
    method = StaticDynamic(cfg, ds, device, store)
    return synthesize(method, cfg, cfg.out, {"method": "s2d", **asdict(cfg), "arch": method.arch},
                      progress=progress, bars=bars, evaluate=evaluate)
