"""`sre2l`: recover images from a trained teacher (SRe2L, Yin et al. NeurIPS 2023; CDA, Yin &
Shen TMLR 2024; class-wise batches of LPLD, Xiao & He NeurIPS 2024). Reference code:
VILA-Lab/SRe2L (``SRe2L/recover``, ``CDA/recover_cda_*.py``), he-y/soft-label-pruning-for-
dataset-distillation (``recover/data_synthesis_class.py``).

No student is unrolled: the images are optimised so that the frozen teacher (eval mode)
classifies them as their class *and* the statistics of its BatchNorm inputs on them match
the running statistics it learnt on the real data. For a batch B and BN layers l = 1..L
with running mean/variance (μ_l, σ²_l):

    loss(B) = CE(teacher(aug(B)), y_B) + r_bn · Σ_l m_l (‖mean_B(x_l) − μ_l‖₂ + ‖var_B(x_l) − σ²_l‖₂)

With a CV-DD committee (``--committee-teacher``, Cui et al. 2025) every member t sees the same
views and the loss is Σ_t w_t (CE_t + r_bn · BN_t), each member's cross-entropy and BN term
on its own statistics, w = softmax(prior / τ) (τ = 5, CV-DD's recovery temperature;
:func:`condense.labels.teachers.committee_weights`). CV-DD draws two members per image slot;
here every member votes on every batch.

with per-channel mean and biased variance of layer l's input x_l over the batch and its
pixels, plain (not squared) L2 norms, m_1 = ``first_bn_multiplier`` (10) and m_l = 1
otherwise (:func:`bn_loss`). aug is one random-resized crop + flip shared by the batch,
then a random roll by up to ``jitter`` pixels (SRe2L's multi-crop optimisation);
``--curriculum cda`` raises the crop's smallest scale from easy (whole images) to hard
(CDA: min_scale = 0.08 + 0.92 · (1 + cos(π t / (M·T))) / 2 until the milestone M·T, then
0.08; :func:`cda_min_scale`). Images start as N(0, 1) in network space, move by Adam
(β = 0.5, 0.9) with a cosine learning rate, and are clipped to the valid pixel range
after every step.

Batches are SRe2L's: batch j holds image j of every class (in chunks of ``batch_size``
classes), or with ``class_batches`` (LPLD) one class's images. Batches are independent
(their own BN statistics and loss), so the loop optimises all of them at once: one
teacher forward over the whole set, the statistics taken per batch, the batch losses
summed; Adam being elementwise, every batch follows exactly the path it would alone.
Batch g's initial images come from (seed, g) and its crops, flips and rolls in iteration
``it`` from (seed, it, g), so a resumed run equals an uninterrupted one, and the batches
are independent work items keyed by g: spread over devices or Ray tasks (``devices``,
``executor``, ``shards``) by :func:`condense.runtime.executors.run_shards`, they give the same set.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import DSAConfig, apply_dsa, cat_draws, sample_dsa
from ..config import configclass, setting
from ..config.parts import Augmentation, Committee, Data, Loop, Recovery, Run, Synthesis, Training, Workers
from ..runtime.errors import ConfigError
from ..runtime.executors import shard_keys
from ..labels.run import COMMITTEE
from ..nets import parse_arch
from ..runtime.rng import generator
from ..synset import SynSet
from .loop import ImageSynthesizer

CURRICULA = ("none", "cda")
CDA_MODES = ("cosine", "linear", "step")
INITS = ("noise", "real")
STREAM_INIT, STREAM_AUG, STREAM_JITTER = 30, 31, 32


@configclass(Data, Committee, Run, Loop, Synthesis, Augmentation, Training, Workers, Recovery, part="sre2l",
             drop=("dataset", "val_size", "zca", "trajectories", "batch_real", "dsa", "dsa_strategy", "dsa_share",
                   "epochs", "lr", "momentum", "weight_decay", "lr_decay_at", "temperature"),
             defaults={"lr_img": 0.1, "init": "noise", "batch_size": 100, "out": "runs/sre2l.h5",
                       "committee_temperature": 5.0},
             choices={"init": INITS},
             helps={"data_root": "folder holding the dataset files (only for --init real)",
                    "limit_train": "--init real: draw from a class-balanced subset of this size",
                    "arch": "the student the set is evaluated with (recorded; recovery uses only the teacher)",
                    "lr_img": "Adam learning rate of the images (SRe2L: 0.25 on ImageNet-1k, 0.1 on Tiny-ImageNet)",
                    "init": "initial images: noise (SRe2L) or real",
                    "batch_size": "classes per recovery batch, or images per class batch with --class-batches",
                    "flip": "flip the crops",
                    "r_bn": "weight of the BatchNorm-statistics loss (SRe2L: ImageNet-1k 0.01, Tiny 1.0; CDA Tiny 0.05)",
                    "jitter": "random roll of up to this many pixels (SRe2L Tiny: 4, ImageNet: 32)",
                    "devices": "spread the recovery batches over these devices: cuda:0,cuda:1 or cpu,cpu",
                    "shards": "shards of the recovery batches (default: one per device; Ray: 2)"})
class SRe2LConfig:
    class_batches: bool = setting(False, "every recovery batch is one class (LPLD)")
    curriculum: str = setting("none", "none, or cda (CDA's easy-to-hard crop scale)", choices=CURRICULA)
    cda_mode: str = setting("cosine", "--curriculum cda: its schedule", choices=CDA_MODES)
    milestone: float = setting(1.0, "--curriculum cda: fraction of the iterations it runs over", ge=0, le=1)

    def validate(self) -> None:
        """What the declarations cannot say: the teacher is required."""
        if not self.teacher:
            raise ConfigError("sre2l needs --teacher FILE (a teacher file from `condense teacher`)")


# --- the math, as pure functions ------------------------------------------------------------

def cda_min_scale(it: int, iters: int, mode: str = "cosine", milestone: float = 1.0, low: float = 0.08) -> float:
    """CDA's smallest crop scale at iteration ``it`` of ``iters``: from 1 (whole images) down to
    ``low`` over the first ``milestone`` of the run (``step``: 1 until then), ``low`` after."""
    end = milestone * iters
    if it >= end:
        return low
    t = it / end
    if mode == "step":
        return 1.0
    if mode == "linear":
        return low + (1.0 - low) * (1.0 - t)
    return low + (1.0 - low) * (1.0 + math.cos(math.pi * t)) / 2.0


def cosine_lr(lr: float, it: int, iters: int) -> float:
    """SRe2L's lr_cosine_policy without warm-up: ½ (1 + cos(π it / iters)) · lr."""
    return 0.5 * (1.0 + math.cos(math.pi * it / iters)) * lr


def batch_statistics(x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-batch, per-channel mean and biased variance of ``x`` [sum(sizes), C, H, W], whose
    rows are consecutive batches of ``sizes``: two [G, C] tensors, float32 or wider."""
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if len(set(sizes)) == 1:  # one fused pass over equal batches
        var, mean = torch.var_mean(x.unflatten(0, (len(sizes), sizes[0])), dim=(1, 3, 4), unbiased=False)
        return mean, var
    pairs = [torch.var_mean(part, dim=(0, 2, 3), unbiased=False) for part in torch.split(x, list(sizes))]
    return torch.stack([m for _, m in pairs]), torch.stack([v for v, _ in pairs])


def bn_loss(inputs: Sequence[torch.Tensor], running: Sequence[tuple[torch.Tensor, torch.Tensor]],
            sizes: Sequence[int], first_multiplier: float = 10.0) -> torch.Tensor:
    """Σ_l m_l (‖mean_g(x_l) − μ_l‖₂ + ‖var_g(x_l) − σ²_l‖₂) per batch g: a [G] tensor.

    inputs: each BN layer's input [N, C_l, H_l, W_l] (batches of ``sizes`` consecutive rows);
    running: each layer's (running_mean, running_var) [C_l]; m_1 = ``first_multiplier``, else 1.
    """
    total = None
    for l, (x, (mu, var)) in enumerate(zip(inputs, running)):
        m, v = batch_statistics(x, sizes)
        term = torch.linalg.vector_norm(m - mu.to(m.dtype), dim=1) + torch.linalg.vector_norm(v - var.to(v.dtype), dim=1)
        term = term * (first_multiplier if l == 0 else 1.0)
        total = term if total is None else total + term
    return total


def bn_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The network's BatchNorm layers in ``modules()`` order (the first is the stem's)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def bn_inputs(net: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the input of every BN layer during forwards inside the block (in call order)."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for m in bn_layers(net)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def recovery_terms(net: nn.Module, running: Sequence[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
                   y: torch.Tensor, sizes: Sequence[int], first_multiplier: float, amp: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE per batch [G], BN term per batch [G]) of the frozen ``net`` (BN running statistics
    ``running``) on ``x`` [Σ sizes, C, H, W] with classes ``y``, consecutive batches of ``sizes``;
    ``amp``: a bfloat16 forward on CUDA (the statistics and losses stay float32)."""
    with bn_inputs(net) as inputs, torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        logits = net(x)
    ce = torch.stack([F.cross_entropy(z.float(), t) for z, t in zip(torch.split(logits, sizes), torch.split(y, sizes))])
    return ce, bn_loss(inputs, running, sizes, first_multiplier)


def batches(num_classes: int, ipc: int, batch_size: int, class_batches: bool) -> list[torch.Tensor]:
    """Indices into a class-ordered set (image j of class c at c·ipc + j) of each recovery batch:
    SRe2L's (image j of ``batch_size`` classes at a time) or LPLD's (``batch_size`` images of one class)."""
    out = []
    if class_batches:
        for c in range(num_classes):
            for j0 in range(0, ipc, batch_size):
                out.append(torch.arange(j0, min(ipc, j0 + batch_size)) + c * ipc)
    else:
        for j in range(ipc):
            for c0 in range(0, num_classes, batch_size):
                out.append(torch.arange(c0, min(num_classes, c0 + batch_size)) * ipc + j)
    return out


def jitter_roll(x: torch.Tensor, sizes: Sequence[int], offsets: torch.Tensor) -> torch.Tensor:
    """Roll each batch (consecutive ``sizes`` rows of ``x``) by its (dy, dx) in ``offsets`` [G, 2]."""
    parts = torch.split(x, list(sizes))
    return torch.cat([torch.roll(p, shifts=(int(o[0]), int(o[1])), dims=(2, 3)) for p, o in zip(parts, offsets)])


def recovery_views(x: torch.Tensor, ids: Sequence[int], sizes: Sequence[int], it: int, *, seed: int, crop: bool,
                   flip: bool, min_scale: float, jitter: int) -> torch.Tensor:
    """Iteration ``it``'s views of ``x``, consecutive batches of ``sizes`` rows numbered ``ids``: per
    batch (``crop``) one random-resized crop (area >= ``min_scale``) + flip, then one roll by (dy, dx)
    uniform in {-jitter..jitter}, all drawn from (seed, it, batch id): a batch's views do not
    depend on which others are computed with it."""
    if crop:
        config = DSAConfig(strategy="rrc+flip" if flip else "rrc", share="batch", rrc_scale=(min_scale, 1.0))
        shape = tuple(x.shape[1:])
        draws = [sample_dsa(config, 1, shape, generator(seed, it, g, STREAM_AUG)) for g in ids]
        x = apply_dsa(x, cat_draws(draws, sizes))
    if jitter:
        offsets = torch.stack([torch.randint(-jitter, jitter + 1, (2,), generator=generator(seed, it, g, STREAM_JITTER))
                               for g in ids])
        x = jitter_roll(x, sizes, offsets)
    return x


# --- the method ----------------------------------------------------------------------------------

class SRe2L(ImageSynthesizer):
    """The sre2l method as a :class:`~condense.methods.loop.Synthesizer`: all batches, or with
    ``shard=(k, K)`` every K-th batch from batch k (a worker's share; :func:`run_sre2l`)."""

    method_name = "sre2l"

    def __init__(self, cfg: SRe2LConfig, device: torch.device, shard: tuple[int, int] = (0, 1)):
        from ..labels.teacher_file import load_teacher_file
        from ..labels.teachers import teacher_of_file

        cfg.validate()
        self.cfg, self.device, self.shard = cfg, device, shard
        paths = [cfg.teacher, *cfg.committee_teacher]
        if cfg.committee_teacher:
            from ..labels.teachers import load_committee

            committee, files = load_committee(paths, temperature=cfg.committee_temperature)
            self.committee, weights = committee.source, committee.weights
        else:
            files, self.committee, weights = [load_teacher_file(cfg.teacher)], None, [1.0]
        for path, member in zip(paths, files):
            if not bn_layers(member.net):
                raise ConfigError(f"teacher {path} ({member.arch}) has no BatchNorm layers: sre2l matches their "
                                  "statistics (train a teacher with norm=batch)")
        tf = files[0]
        self.tf, self.arch = tf, str(parse_arch(cfg.arch))
        self.teacher = teacher_of_file(cfg.teacher, tf)
        # (network, its BN layers' running statistics, vote weight) per committee member; one without a committee
        self.members = [(m.net.to(device).eval(), [(b.running_mean.detach(), b.running_var.detach())
                                                   for b in bn_layers(m.net)], w) for m, w in zip(files, weights)]
        self.net = self.members[0][0]  # the teacher (--teacher)
        k, (c, h, w) = tf.num_classes, tf.image_shape
        self.all_classes = torch.arange(k).repeat_interleave(cfg.ipc)
        groups = batches(k, cfg.ipc, cfg.batch_size, cfg.class_batches)
        # this worker's batches, by their global number g: all randomness of batch g is keyed by g
        self.batch_ids = shard_keys(len(groups), *shard)
        self.index = torch.cat([groups[g] for g in self.batch_ids])  # global image index of each row
        self.sizes = [len(groups[g]) for g in self.batch_ids]
        self.classes = self.all_classes[self.index]
        self.indices = None
        if cfg.init == "real":
            images = self._real_init()[self.index]
        else:  # batch g starts from its own generator, so a shard draws only its images
            images = torch.cat([torch.randn(len(groups[g]), c, h, w, generator=generator(cfg.seed, g, STREAM_INIT))
                                for g in self.batch_ids])
        self.images = images.to(device).requires_grad_(True)
        self.opts = {"images": torch.optim.Adam([self.images], lr=cfg.lr_img, betas=(0.5, 0.9), eps=1e-8)}
        lo = tf.transform.from_pixels(torch.zeros(1, c, 1, 1))
        hi = tf.transform.from_pixels(torch.ones(1, c, 1, 1))
        # ZCA mixes pixels, so no per-channel box holds exactly the valid images: not clipped
        self.box = None if tf.transform.kind == "zca" else (lo.to(device), hi.to(device))

    def _real_init(self) -> torch.Tensor:
        from ..data import load_dataset
        from ..labels.teachers import check_fits
        from .init import initial_images

        ds = load_dataset(self.tf.dataset, self.cfg.data_root, zca=self.tf.transform.kind == "zca",
                          limit_train=self.cfg.limit_train)
        check_fits(self.tf, self.cfg.teacher, ds.info.name, ds.transform.describe(), ds.info.shape,
                   ds.info.num_classes, ds.info.class_names)
        images, _, self.indices = initial_images(ds.x_train, ds.y_train, ds.info.num_classes, self.cfg.ipc, "real",
                                                 self.cfg.seed)
        return images

    def min_scale(self, it: int) -> float:
        cfg = self.cfg
        if cfg.curriculum == "cda":
            return cda_min_scale(it, cfg.iters, cfg.cda_mode, cfg.milestone, cfg.min_scale)
        return cfg.min_scale

    def augment(self, x: torch.Tensor, it: int, part: slice = slice(None)) -> torch.Tensor:
        """Iteration ``it``'s views of ``x``, the rows of this worker's batches ``part`` (:func:`recovery_views`)."""
        cfg = self.cfg
        return recovery_views(x, self.batch_ids[part], self.sizes[part], it, seed=cfg.seed, crop=True, flip=cfg.flip,
                              min_scale=self.min_scale(it), jitter=cfg.jitter)

    def parts(self) -> list[slice]:
        """Consecutive batches grouped into teacher forwards of at most ``chunk`` images (whole batches)."""
        limit = self.cfg.chunk or (128 if self.device.type == "cpu" else sum(self.sizes))
        out, start, rows = [], 0, 0
        for b, size in enumerate(self.sizes):
            if b > start and rows + size > limit:
                out.append(slice(start, b))
                start, rows = b, 0
            rows += size
        return out + [slice(start, len(self.sizes))]

    def loss(self, it: int, part: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, CE per batch, BN term per batch) of batches ``part`` at the current images (differentiable)."""
        sizes = self.sizes[part]
        first = sum(self.sizes[:part.start or 0])
        rows = slice(first, first + sum(sizes))
        x = self.augment(self.images[rows], it, part)
        y = self.classes[rows].to(self.device)
        amp = self.cfg.amp and self.device.type == "cuda"
        ce = bn = 0.0
        for net, running, weight in self.members:
            ce_t, bn_t = recovery_terms(net, running, x, y, sizes, self.cfg.first_bn_multiplier, amp)
            ce, bn = ce + weight * ce_t, bn + weight * bn_t
        return (ce + self.cfg.r_bn * bn).sum(), ce, bn

    def compute_grads(self, it: int) -> dict[str, float]:
        lr = cosine_lr(self.cfg.lr_img, it, self.cfg.iters)
        for group in self.opts["images"].param_groups:
            group["lr"] = lr
        total, ces, bns = 0.0, [], []
        for part in self.parts():  # batches are independent: each chunk's gradient lands on its own rows
            loss, ce, bn = self.loss(it, part)
            loss.backward()
            total += float(loss.detach())
            ces.append(ce.detach())
            bns.append(bn.detach())
        return {"loss": total, "ce": float(torch.cat(ces).mean()), "bn": float(torch.cat(bns).mean()), "lr_img": lr,
                "min_scale": self.min_scale(it)}

    def after_step(self, it: int) -> None:
        if self.box is not None:
            with torch.no_grad():
                self.images.clamp_(*self.box)

    def config(self) -> dict:
        """The run's identity and the set's config: the settings, the canonical student arch and
        the teacher file's content hash (a retrained teacher under the same path is another run)."""
        unused = SPREAD + (COMMITTEE if self.committee is None else ())  # runs of 0.7 resume
        config = {"method": self.method_name, **{k: v for k, v in asdict(self.cfg).items() if k not in unused},
                  "arch": self.arch, "teacher_sha256": self.teacher.source["sha256"]}
        if self.committee is not None:
            config["committee_sha256"] = [m["sha256"] for m in self.committee["committee"]]
        return config if self.shard == (0, 1) else {**config, "shard": list(self.shard)}

    def synset(self, it: int) -> SynSet:
        """The set in class order. A shard's set holds its own images and zeros elsewhere (its
        provenance names its rows); :func:`condense.runtime.executors.merge_shards` puts the shards together."""
        tf = self.tf
        images = torch.zeros(len(self.all_classes), *tf.image_shape)
        images[self.index] = self.images.detach().cpu()
        return SynSet.hard(images, self.all_classes.clone(), dataset=tf.dataset,
                           num_classes=tf.num_classes, method=self.method_name, transform=tf.transform,
                           data={**tf.data, "class_names": list(tf.class_names)},
                           config=self.config(),
                           provenance={"seed": self.cfg.seed, "iteration": it, "teacher": self.teacher.source,
                                       **({} if self.committee is None else {"committee": self.committee}),
                                       "init_indices": None if self.indices is None else self.indices.tolist(),
                                       **({} if self.shard == (0, 1) else {"shard": list(self.shard),
                                                                           "rows": self.index.tolist()})})


SPREAD = ("devices", "executor", "address", "shards", "chunk")  # how the work runs: not what the set is


def run_sre2l(cfg: SRe2LConfig, device: torch.device, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Recover (or resume) the set ``cfg.out`` from the teacher ``cfg.teacher``: here, or its batches
    as shards over ``cfg.devices`` / Ray (:func:`~condense.runtime.executors.run_shards`), merged into the same set."""
    from ..runtime.executors import default_workers, merge_shards, run_shards
    from .loop import synthesize

    shards = cfg.shards or default_workers(cfg.executor, cfg.devices)
    if shards > 1:
        cfg.validate()
        paths = run_shards("condense.methods.sre2l:recover_shard", {"config": asdict(cfg)}, shards,
                           executor=cfg.executor, devices=cfg.devices, address=cfg.address, note=progress)
        return merge_shards(paths, cfg.out)
    method = SRe2L(cfg, device)
    return synthesize(method, cfg, cfg.out, method.config(), progress=progress, bars=bars, evaluate=evaluate)


def recover_shard(config: dict, shard: int, shards: int, device: str = "cpu") -> str:
    """A job of :func:`run_sre2l`: recover the batches of shard ``shard`` of ``shards`` into their own
    resumable run; returns the shard's set file."""
    from ..runtime.executors import shard_path
    from .loop import synthesize

    cfg = SRe2LConfig(**{**config, "devices": None, "executor": "local", "shards": None,
                         "out": shard_path(config["out"], shard, shards)})
    method = SRe2L(cfg, torch.device(device), (shard, shards))
    synthesize(method, cfg, cfg.out, method.config(), progress=lambda m: None, bars=False)
    return cfg.out
