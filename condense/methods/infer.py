"""`infer`: inter-class feature compensators (INFER, Zhang et al. ICLR 2025; reference code
zhangxin-xd/UFC, ``ufc_generation/ufc_cifar.py`` and ``utils.py``, ``ufc_validation/val_static.py``).

Instead of one synthetic image per class label, INFER learns *compensators*: one image-shaped
tensor u added to a group of real images, one of every class, so one compensator yields an
instance of every class. With M teachers (one per architecture) and a budget of ``ipc``
images per class over K classes, G = ⌊ipc / (M / K + 1)⌋ groups of real images are drawn
(seeded, class-balanced) and every group gets one compensator per teacher: G (M + 1) instances
per class (the real images themselves, and each with one compensator) stored as G (K + M)
images (:mod:`condense.compensators`; Fashion-MNIST IPC 10 with two teachers: G = 8, 24
instances per class, 96 images stored of the 100 allowed).

Compensator u_{g,m} is optimised against teacher m alone, as SRe2L recovers images:

    loss(g, m) = CE(t_m(aug(x_g ⊕ u)), y_g) + r_bn · Σ_l m_l (‖mean(a_l) − μ_l‖₂ + ‖var(a_l) − σ²_l‖₂)

with x_g ⊕ u = clip(x_g + u) the group's K instances (clip: the valid pixel range), the BN terms
of teacher m's layers on that batch of K (:func:`~condense.methods.sre2l.recovery_terms`, the
first layer's weighted by ``first_bn_multiplier``), aug a roll by up to ``jitter`` pixels (INFER's
CIFAR recovery) and with ``crop`` a random-resized crop + flip before it (its ImageNet one).
u starts at 0 and moves by Adam (β = 0.5, 0.9) with a cosine learning rate. The reference
optimises the unclipped sum and saves it clipped; here the teachers see exactly the
instances that are stored. Work items (g, m) are independent (their own BN statistics and
loss; Adam is elementwise), so all are optimised at once, and the groups are shards for
devices or Ray (``devices``, ``executor``, ``shards``) as in sre2l's recovery: the same set.

Labels (INFER's static scheme): one soft label per instance, the mean of the M teachers'
logits on the clean instance (a committee with equal weights, :mod:`condense.labels.teachers`),
trained with KL at ``temperature``; INFER trains with mixup on every batch and derives the label
of a mixed instance from the two labels (``condense eval --mixup 0.8``), so no label of a mixed
instance is stored. The labels cost instances × K floats, counted by the label codecs.
"""
from __future__ import annotations

from dataclasses import asdict

import torch

from ..compensators import Compensated, compose, pixel_box
from ..config import configclass, setting
from ..config.parts import Augmentation, Data, Loop, Recovery, Run, Synthesis, Training, Workers
from ..runtime.errors import ConfigError
from ..runtime.executors import shard_keys
from ..nets import parse_arch
from ..synset import SynSet
from .loop import ImageSynthesizer
from .sre2l import SPREAD, bn_layers, cosine_lr, recovery_terms, recovery_views


@configclass(Data, Run, Loop, Synthesis, Augmentation, Training, Workers, Recovery, part="infer",
             drop=("dataset", "val_size", "zca", "trajectories", "teacher", "batch_real", "init", "dsa",
                   "dsa_strategy", "dsa_share", "epochs", "lr", "momentum", "weight_decay", "batch_size",
                   "lr_decay_at"),
             defaults={"lr_img": 0.25, "iters": 1000, "ipc": 10, "out": "runs/infer.h5", "r_bn": 0.05,
                       "temperature": 30.0},
             helps={"data_root": "folder holding the dataset the teachers were trained on (the real images)",
                    "limit_train": "draw the real images from a class-balanced subset of this size",
                    "arch": "the student the set is evaluated with (recorded; the teachers optimise the set)",
                    "ipc": "storage budget in images per class: real images and compensators together",
                    "lr_img": "Adam learning rate of the compensators (INFER: 0.25)",
                    "flip": "--crop: flip the crops",
                    "min_scale": "--crop: smallest area fraction of the crop",
                    "devices": "spread the groups over these devices: cuda:0,cuda:1 or cpu,cpu",
                    "r_bn": "weight of the BatchNorm-statistics loss (INFER: CIFAR 1, ImageNet-1k 0.01)",
                    "jitter": "random roll of up to this many pixels (INFER: CIFAR 4, ImageNet 32)",
                    "chunk": "images per teacher forward: whole groups up to this many (default: 128 on a CPU, "
                             "all on a GPU)",
                    "temperature": "distillation temperature of the static labels (INFER: 30)",
                    "shards": "shards of the groups (default: one per device; Ray: 2)"})
class InferConfig:
    teachers: list[str] = setting(factory=list, help="teacher files from `condense teacher`, one per architecture "
                                                     "(INFER's M): every group gets one compensator per teacher",
                                  metavar="FILE,...")
    crop: bool = setting(False, "a random-resized crop (and flip) of each group before the roll (INFER's ImageNet "
                                "recovery; off: rolls only, its CIFAR one)")

    def validate(self) -> None:
        """What the declarations cannot say: teachers, and a budget that holds a group."""
        if not self.teachers:
            raise ConfigError("infer needs --teachers FILE,... (teacher files from `condense teacher`, one per "
                              "architecture)")
        if len(set(self.teachers)) != len(self.teachers):
            raise ConfigError("--teachers names each teacher file once")


def groups_for(ipc: int, num_classes: int, members: int) -> int:
    """INFER's number of real groups G = ⌊ipc / (M / K + 1)⌋ = ⌊ipc K / (K + M)⌋: G (K + M) <= ipc K images."""
    return ipc * num_classes // (num_classes + members)


class Infer(ImageSynthesizer):
    """The infer method as a :class:`~condense.methods.loop.Synthesizer`: all groups, or with
    ``shard=(k, K)`` every K-th group from group k (a worker's share; :func:`run_infer`)."""

    method_name = "infer"

    def __init__(self, cfg: InferConfig, device: torch.device, shard: tuple[int, int] = (0, 1)):
        from ..labels.teacher_file import load_teacher_file
        from ..labels.teachers import check_fits, teacher_of_file

        cfg.validate()
        self.cfg, self.device, self.shard = cfg, device, shard
        files = [load_teacher_file(p) for p in cfg.teachers]
        tf = self.tf = files[0]
        for path, member in zip(cfg.teachers, files):
            check_fits(member, path, tf.dataset, tf.transform.describe(), tf.image_shape, tf.num_classes,
                       tf.class_names)
            if not bn_layers(member.net):
                raise ConfigError(f"teacher {path} ({member.arch}) has no BatchNorm layers: infer matches their "
                                  "statistics (train a teacher with norm=batch)")
        self.sources = [teacher_of_file(p, m).source for p, m in zip(cfg.teachers, files)]
        self.arch = str(parse_arch(cfg.arch))
        k, m = tf.num_classes, len(files)
        self.num_groups = g_all = groups_for(cfg.ipc, k, m)
        if g_all < 1:
            raise ConfigError(f"--ipc {cfg.ipc} cannot hold one group of {k} real images and {m} compensators "
                              f"(needs ipc >= {-(-(k + m) // k)})")
        # (network, its BN layers' running statistics) per teacher
        self.members = [(f.net.to(device).eval(), [(b.running_mean.detach(), b.running_var.detach())
                                                   for b in bn_layers(f.net)]) for f in files]
        base, self.indices = self._real_groups(g_all)
        self.base = base.to(device)  # [G, K, C, H, W], every group (shards too: cheap, and the set needs them)
        self.group_ids = shard_keys(g_all, *shard)  # this worker's groups
        self.images = torch.zeros(len(self.group_ids), m, *tf.image_shape, device=device).requires_grad_(True)
        self.opts = {"images": torch.optim.Adam([self.images], lr=cfg.lr_img, betas=(0.5, 0.9), eps=1e-8)}
        self.box = pixel_box(tf.transform, tf.image_shape[0])
        if self.box is not None:
            self.box = (self.box[0].to(device), self.box[1].to(device))
        self.y = torch.arange(k, device=device)

    def _real_groups(self, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """([G, K, C, H, W] real images, group g holding image g drawn for every class; their
        indices into the training split [K · G], class by class)."""
        from ..data import load_dataset
        from ..labels.teachers import check_fits
        from .init import initial_images

        tf, cfg = self.tf, self.cfg
        ds = load_dataset(tf.dataset, cfg.data_root, zca=tf.transform.kind == "zca", limit_train=cfg.limit_train)
        check_fits(tf, cfg.teachers[0], ds.info.name, ds.transform.describe(), ds.info.shape, ds.info.num_classes,
                   ds.info.class_names)
        self.ds_meta = dict(ds.meta)
        images, _, indices = initial_images(ds.x_train, ds.y_train, ds.info.num_classes, groups, "real", cfg.seed)
        k = ds.info.num_classes
        return images.view(k, groups, *images.shape[1:]).transpose(0, 1).contiguous(), indices

    def work(self) -> list[tuple[int, slice]]:
        """This worker's items as teacher forwards: [(teacher, rows)], rows a slice of this worker's
        groups holding at most ``chunk`` images (whole groups)."""
        limit = self.cfg.chunk or (128 if self.device.type == "cpu" else 1 << 30)
        per = max(1, limit // self.tf.num_classes)
        n = len(self.group_ids)
        return [(t, slice(a, min(n, a + per))) for t in range(len(self.members)) for a in range(0, n, per)]

    def loss(self, it: int, teacher: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, CE per group, BN term per group) of teacher ``teacher``'s compensators of this
        worker's groups ``rows`` (differentiable in the compensators)."""
        cfg, k = self.cfg, self.tf.num_classes
        ids = self.group_ids[rows]
        instances = compose(self.base[ids], self.images[rows, teacher:teacher + 1], self.box)[:, 1]
        sizes = [k] * len(ids)
        # item (g, m) draws its views from its own key, so shards and chunks see the same views
        keys = [g * len(self.members) + teacher for g in ids]
        views = recovery_views(instances.flatten(0, 1), keys, sizes, it, seed=cfg.seed, crop=cfg.crop, flip=cfg.flip,
                               min_scale=cfg.min_scale, jitter=cfg.jitter)
        net, running = self.members[teacher]
        ce, bn = recovery_terms(net, running, views, self.y.repeat(len(ids)), sizes, cfg.first_bn_multiplier,
                                cfg.amp and self.device.type == "cuda")
        return (ce + cfg.r_bn * bn).sum(), ce, bn

    def compute_grads(self, it: int) -> dict[str, float]:
        lr = cosine_lr(self.cfg.lr_img, it, self.cfg.iters)
        for group in self.opts["images"].param_groups:
            group["lr"] = lr
        total, ces, bns = 0.0, [], []
        for teacher, rows in self.work():
            loss, ce, bn = self.loss(it, teacher, rows)
            loss.backward()
            total += float(loss.detach())
            ces.append(ce.detach())
            bns.append(bn.detach())
        return {"loss": total, "ce": float(torch.cat(ces).mean()), "bn": float(torch.cat(bns).mean()), "lr_img": lr}

    def config(self) -> dict:
        """The run's identity and the set's config: the settings, the student arch and the teachers' hashes."""
        config = {"method": self.method_name, **{k: v for k, v in asdict(self.cfg).items() if k not in SPREAD},
                  "arch": self.arch, "teachers_sha256": [s["sha256"] for s in self.sources]}
        return config if self.shard == (0, 1) else {**config, "shard": list(self.shard)}

    def compensated(self) -> Compensated:
        """Every group's base images and compensators (a shard's: zeros for the groups of others)."""
        comp = torch.zeros(self.num_groups, *self.images.shape[1:])
        comp[self.group_ids] = self.images.detach().cpu()
        return Compensated(self.base.cpu().clone(), comp)

    def synset(self, it: int) -> SynSet:
        """The expanded instances in class order, stored as base images + compensators, with
        INFER's static labels (a shard's set: hard labels; :func:`run_infer` labels the merged set)."""
        tf = self.tf
        c = self.compensated()
        images, classes = c.expand(tf.transform)
        s = SynSet.hard(images, classes, dataset=tf.dataset, num_classes=tf.num_classes, method=self.method_name,
                        transform=tf.transform, data={**self.ds_meta, "class_names": list(tf.class_names)},
                        config=self.config(), compensated=c,
                        provenance={"seed": self.cfg.seed, "iteration": it, "teachers": self.sources,
                                    "groups": self.num_groups, "init_indices": self.indices.tolist(),
                                    **({} if self.shard == (0, 1) else {"shard": list(self.shard),
                                                                        "group_rows": list(self.group_ids)})})
        return s if self.shard != (0, 1) else static_labels(s, self.cfg)


def static_labels(s: SynSet, cfg: InferConfig) -> SynSet:
    """``s`` with INFER's labels: the mean of its teachers' logits on every clean instance."""
    from ..labels.relabel import relabel
    from ..labels.teachers import load_committee, teacher_of_file
    from ..labels.teacher_file import load_teacher_file

    if len(cfg.teachers) == 1:
        teacher = teacher_of_file(cfg.teachers[0], load_teacher_file(cfg.teachers[0]))
    else:  # equal priors: equal weights, the plain mean of the logits
        teacher, _ = load_committee(cfg.teachers, temperature=1.0, prior=[0.0] * len(cfg.teachers))
    return relabel(s, teacher, views="static", temperature=cfg.temperature)


def merge_groups(paths: list[str], cfg: InferConfig) -> SynSet:
    """One labelled set, saved to ``cfg.out``, from shard sets: each contributes the compensators of
    the groups its provenance names; a CondenseError line when a group is left uncovered."""
    from ..runtime.errors import CondenseError
    from ..synset import load_synset

    parts = [load_synset(p) for p in paths]
    first = parts[0]
    comp = torch.zeros_like(first.compensated.compensators)
    covered = torch.zeros(len(comp), dtype=torch.bool)
    for p in parts:
        rows = torch.tensor(p.provenance["group_rows"], dtype=torch.long)
        comp[rows] = p.compensated.compensators[rows]
        covered[rows] = True
    if not bool(covered.all()):
        raise CondenseError(f"the shards {', '.join(paths)} do not cover every group of the set")
    c = Compensated(first.compensated.base, comp)
    images, classes = c.expand(first.transform)
    config = {k: v for k, v in first.config.items() if k != "shard"}
    provenance = {k: v for k, v in first.provenance.items() if k not in ("shard", "group_rows")}
    s = SynSet.hard(images, classes, dataset=first.dataset, num_classes=first.num_classes, method=first.method,
                    transform=first.transform, data=first.data, config=config, compensated=c,
                    provenance={**provenance, "shards": [str(p) for p in paths]})
    s = static_labels(s, cfg)
    s.save(cfg.out)
    return s


def run_infer(cfg: InferConfig, device: torch.device, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Optimise (or resume) the compensators of ``cfg.out``: here, or their groups as shards over
    ``cfg.devices`` / Ray (:func:`~condense.runtime.executors.run_shards`), merged into the same set."""
    from ..runtime.executors import default_workers, run_shards
    from .loop import synthesize

    shards = cfg.shards or default_workers(cfg.executor, cfg.devices)
    if shards > 1:
        cfg.validate()
        paths = run_shards("condense.methods.infer:infer_shard", {"config": asdict(cfg)}, shards,
                           executor=cfg.executor, devices=cfg.devices, address=cfg.address, note=progress)
        return merge_groups(paths, cfg)
    method = Infer(cfg, device)
    return synthesize(method, cfg, cfg.out, method.config(), progress=progress, bars=bars, evaluate=evaluate)


def infer_shard(config: dict, shard: int, shards: int, device: str = "cpu") -> str:
    """A job of :func:`run_infer`: the groups of shard ``shard`` of ``shards`` in their own resumable
    run; returns the shard's set file."""
    from ..runtime.executors import shard_path
    from .loop import synthesize

    cfg = InferConfig(**{**config, "devices": None, "executor": "local", "shards": None,
                         "out": shard_path(config["out"], shard, shards)})
    method = Infer(cfg, torch.device(device), (shard, shards))
    synthesize(method, cfg, cfg.out, method.config(), progress=lambda m: None, bars=False)
    return cfg.out
