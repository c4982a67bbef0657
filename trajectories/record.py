"""The expert recorder: train networks on real data and save their parameters every epoch.

An expert is trained by :func:`condense.train.train_model` (the one training loop) with
plain SGD (MTT), SAM/GSAM (FTD's flat experts) or the smooth-expert regularisers (AST),
and its flat parameters are written after initialisation (row 0) and after every epoch,
with that epoch's test accuracy and training loss. Experts are independent jobs
(:mod:`condense.jobs`): ``devices=["cuda:0", "cuda:1"]`` records on both GPUs at once.

Randomness: expert ``i`` of a store with seed ``s`` is the training run ``(s, i)``:
its init comes from ``(s, i, 0, 0, INIT)``, its batch order and DSA draws from
``(s, i, epoch, step, ...)``. So an expert is the same whichever worker records it and
whether or not the run was interrupted (at a fixed thread count).

Resume: rerunning the same command skips finished experts and records the missing
ones; an expert interrupted mid-way is recorded again from its start.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable

import torch

from condense.data import load_dataset
from condense.data.lazy import to_device
from condense.runtime.errors import CondenseError, ConfigError
from condense.jobs import Job, parse_device, run_jobs
from condense.config import configclass, setting
from condense.config.parts import Augmentation, Data, Run, Training, Workers
from condense.nets import FlatLayout, build_net, parse_arch
from condense.runtime.rng import generator
from condense.step_rules import FLAT_KINDS, ExpertRegularizer
from condense.train import STREAM_INIT, TrainProtocol, accuracy, protocol_dict, train_model
from trajectories.store import DTYPES, ExpertWriter, prepare_store, seal_experts
from condense.runtime.files import holding_lock


@configclass(Data, Run, Training, Augmentation, Workers, part="buffer",
             drop=("ipc", "trajectories", "teacher", "device", "temperature", "min_scale", "flip", "executor",
                   "address", "shards"),
             defaults={"out": "runs/experts", "devices": ["cpu"]},
             helps={"out": "store folder (a rerun resumes: finished experts are kept)",
                    "seed": "seed of the store: expert i is run (seed, i)",
                    "epochs": "epochs per expert",
                    "lr_decay_at": "lr x --lr-decay-factor from this fraction of the epochs (1 = never, MTT)",
                    "devices": "record experts on these devices at once, one worker each: cuda:0,cuda:1 or cpu,cpu"})
class BufferConfig:
    """Everything that defines a store of experts: train expert networks on the real training set and save
    their parameters after every epoch (epoch 0 = init) with per-epoch test accuracy. Defaults follow MTT's
    buffer.py (SGD lr 0.01, momentum 0, weight decay 0, batch 256, DSA on, no lr decay)."""

    download: bool = setting(False, "download the dataset if it is missing")
    experts: int = setting(5, "number of experts", gt=0, le=10_000)
    lr_decay_factor: float = setting(0.1, "lr multiplier at --lr-decay-at", gt=0)
    lr_decay_epoch: int | None = setting(None, "0-based epoch from which lr is decayed (overrides --lr-decay-at; "
                                               "AST's buffer.py: epochs//2 + 2)", ge=0, unit="epochs")
    lr_decay_restart: bool = setting(False, "the decay rebuilds the optimizer, clearing its momentum (AST's buffer.py)")
    dtype: str = setting("float32", "storage precision of the parameters", choices=tuple(DTYPES))
    flat: str = setting("none", "flat experts via SAM or GSAM (FTD)", choices=FLAT_KINDS)
    sam_rho: float = setting(0.05, "SAM/GSAM radius rho", gt=0)
    gsam_alpha: float = setting(0.4, "GSAM's alpha", ge=0)
    adaptive: bool = setting(False, "adaptive (ASAM-style) SAM/GSAM perturbation, as FTD's code uses")
    smooth: bool = setting(False, "smooth experts: loss-decay schedule + gradient penalty (AST)")
    gp_weight: float = setting(2.0, "gradient-penalty weight with --smooth", ge=0)
    loss_decay: bool = setting(True, "with --smooth: scale the loss by 0.5, 0.55, ... in the first 10 epochs")

    def validate(self) -> None:
        """What the declarations cannot say: a decay epoch within the epochs, devices that exist here."""
        if self.lr_decay_epoch is not None and self.lr_decay_epoch >= self.epochs:
            raise ConfigError(f"--lr-decay-epoch must be a 0-based epoch of the {self.epochs} trained, "
                              f"got {self.lr_decay_epoch}")
        if not self.devices:
            raise ConfigError("--devices needs at least one device")
        for d in self.devices:
            parse_device(d)

    def protocol(self) -> TrainProtocol:
        return TrainProtocol(epochs=self.epochs, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                             batch_size=self.batch_size, decay_at=self.lr_decay_at, decay_factor=self.lr_decay_factor,
                             decay_epoch=self.lr_decay_epoch, decay_restart=self.lr_decay_restart,
                             dsa=self.dsa, dsa_strategy=self.dsa_strategy, dsa_share=self.dsa_share)

    def regularizer(self) -> ExpertRegularizer:
        return ExpertRegularizer(flat=self.flat, sam_rho=self.sam_rho, gsam_alpha=self.gsam_alpha, adaptive=self.adaptive,
                                 smooth=self.smooth, gp_weight=self.gp_weight, loss_decay=self.loss_decay)


@functools.lru_cache(maxsize=2)
def _dataset(name: str, root: str | None, download: bool, zca: bool, val_size: int | None, limit_train: int | None):
    return load_dataset(name, root, zca=zca, val_size=val_size, limit_train=limit_train, download=download)


def dataset_for(cfg: BufferConfig):
    """The processed dataset of a config (cached per process: workers load it once)."""
    return _dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.zca, cfg.val_size, cfg.limit_train)


def store_metadata(cfg: BufferConfig) -> dict[str, Any]:
    """What the store's manifest records (its identity: dataset, net, training, data)."""
    ds = dataset_for(cfg)
    net = build_net(cfg.arch, ds.info.channels, ds.info.num_classes, ds.info.image_size)
    layout = FlatLayout.of(net)
    data = {k: v for k, v in ds.meta.items() if k != "root"}  # the same data found elsewhere is the same data
    return {
        "source": "recorded", "dataset": ds.info.name, "num_classes": ds.info.num_classes,
        "image_shape": list(ds.info.shape), "arch": str(parse_arch(cfg.arch)), "layout": layout.to_json(),
        "n_params": layout.numel, "epochs": cfg.epochs, "dtype": cfg.dtype, "seed": cfg.seed,
        "protocol": protocol_dict(cfg.protocol()), "regularizer": cfg.regularizer().describe(),
        "transform": ds.transform.describe(), "data": data, "config": dataclasses.asdict(cfg),
    }


def record_expert(cfg: dict[str, Any], index: int, folder: str, device: str = "cpu",
                  on_epoch: Callable[[int, float, float], None] | None = None) -> dict[str, Any]:
    """Train expert ``index`` of the store in ``folder`` and write it (a job function).

    ``on_epoch(epoch, test_acc, train_loss)`` reports progress. Returns a summary dict.
    """
    config = BufferConfig(**cfg)
    ds = dataset_for(config)
    dev = torch.device(device)
    c, (h, w) = ds.info.channels, ds.info.image_size
    net = build_net(config.arch, c, ds.info.num_classes, (h, w),
                    generator=generator(config.seed, index, 0, 0, STREAM_INIT)).to(dev)
    layout = FlatLayout.of(net)
    x_test, y_test = to_device(ds.x_test, dev), ds.y_test.to(dev)
    writer = ExpertWriter(folder, index, attrs={"seed": config.seed, "run": index, "device": device})
    t0 = time.perf_counter()
    try:
        writer.write_epoch(0, layout.flatten(net), accuracy(net, x_test, y_test))

        def snapshot(epoch: int, model: torch.nn.Module, loss: float) -> None:
            if not math.isfinite(loss):
                raise CondenseError(f"expert {index} diverged in epoch {epoch} (training loss {loss}); lower --lr")
            acc = accuracy(model, x_test, y_test)
            writer.write_epoch(epoch + 1, layout.flatten(model), acc, loss)
            if on_epoch is not None:
                on_epoch(epoch + 1, acc, loss)

        train_model(net, to_device(ds.x_train, dev), ds.y_train.to(dev), config.protocol(), seed=config.seed, run=index,
                    lr=config.lr, on_epoch=snapshot, step=config.regularizer().step_rule())
        seconds = time.perf_counter() - t0
        path = writer.finish(seconds=seconds)
    except BaseException:
        writer.abort()
        raise
    return {"index": index, "path": str(path), "seconds": seconds,
            "final_test_acc": float(accuracy(net, x_test, y_test))}


@holding_lock(lambda cfg, *a, **k: cfg.out)
def record_store(cfg: BufferConfig, progress: Callable[[str], None] = print, bars: bool = True) -> list[dict[str, Any]]:
    """Record (or finish recording) the store ``cfg.out``. Returns one summary per new expert."""
    cfg.validate()
    todo = prepare_store(cfg.out, store_metadata(cfg), cfg.experts, note=progress)
    if not todo:
        progress(f"{cfg.out}: all {cfg.experts} experts are already recorded")
        return []
    progress(f"{cfg.out}: recording experts {todo[0]}..{todo[-1]} ({len(todo)} to go) on {', '.join(cfg.devices)}")
    from condense.runtime.progress import bar as progress_bar

    cfg_dict = dataclasses.asdict(cfg)
    summaries, failures = [], []
    if len(cfg.devices) == 1:
        # In-process: an epoch-level bar per expert.
        for i in todo:
            with progress_bar(total=cfg.epochs, desc=f"expert {i}", unit="ep", disable=not bars, leave=False) as bar:
                def tick(epoch: int, acc: float, loss: float) -> None:
                    bar.update(1)
                    bar.set_postfix(test_acc=f"{100 * acc:.1f}%", loss=f"{loss:.3f}")

                s = record_expert(cfg_dict, i, cfg.out, cfg.devices[0], on_epoch=tick)
            seal_experts(cfg.out, [i])
            summaries.append(s)
            progress(f"expert {i}: test acc {100 * s['final_test_acc']:.2f}% after {cfg.epochs} epochs ({s['seconds']:.0f} s)")
        return summaries
    jobs = [Job(f"expert {i}", "trajectories.record:record_expert", {"cfg": cfg_dict, "index": i, "folder": cfg.out})
            for i in todo]
    index_of = {job.key: i for job, i in zip(jobs, todo)}
    with progress_bar(total=len(jobs), desc="experts", unit="expert", disable=not bars) as bar:
        for r in run_jobs(jobs, cfg.devices):
            bar.update(1)
            if r.ok:
                seal_experts(cfg.out, [index_of[r.key]])
                summaries.append(r.value)
                progress(f"{r.key}: test acc {100 * r.value['final_test_acc']:.2f}% ({r.seconds:.0f} s on {r.device})")
            else:
                failures.append(r)
                progress(f"{r.key} failed on {r.device}: {r.error}")
    if failures:
        raise CondenseError(f"{len(failures)} of {len(jobs)} experts failed (first: {failures[0].key}: "
                            f"{failures[0].error.splitlines()[0]}); the finished ones are kept, rerun to retry")
    return summaries
