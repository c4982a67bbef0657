"""Transfer evaluation (``condense eval SET... --transfer DATASETS``): pre-train fresh networks on
a set, then fine-tune them and linear-probe them on labelled downstream data.

The protocol is KRR-ST's (Lee et al., ICLR 2024; db-Lee/selfsup_dd ``test.py``,
``algorithms/pretrain_*.py``, ``finetune.py``), run r with seed (seed, r):

1. **Pre-train** a fresh network on the set for ``pretrain_epochs`` epochs, batch 256, SGD
   momentum 0.9, in the loss the set's labels need: MSE to representation targets (a KRR-ST set:
   the network's head has D outputs; constant lr 0.1, weight decay 1e-3, no augmentation, as the
   reference), the set's own loss otherwise (hard labels: cross-entropy with DSA; lr 0.01,
   x0.1 at half, weight decay 5e-4, as the reference pre-trains DC/DSA/DM/MTT sets; FRePo's
   regression targets too, where the reference pre-trains them with Adam 3e-4).
2. **Fine-tune** on each downstream training split: the pre-trained network with a new head (all
   layers trained), ``finetune_iters`` iterations of ``finetune_batch`` images (random crop with
   1/8 padding + flip, drawn per image), SGD momentum 0.9, lr 0.01 with a cosine decay, weight
   decay 5e-4; test accuracy after the last iteration.
3. **Linear probe**: the pre-trained network frozen, a new head fitted on its standardised
   features (:func:`condense.labels.ssl.linear_probe`); test accuracy.

Downstream images are brought to the pre-trained network's input shape: bilinear resizing (in the
downstream set's own normalised space, as the reference normalises each dataset with its own
statistics) and, between grey and colour, a repeated or averaged channel.

Rows beside the sets (``--transfer-baselines``): ``none`` (no pre-training: a randomly initialised
network fine-tuned and probed), ``random`` (the same number of random real training images with
targets made as the set's were: the teacher's representations for a KRR-ST set, hard labels of a
class-balanced subset for a labelled one; run r draws its own images) and ``full`` (full-data
self-supervised pre-training: the KRR-ST set's teacher itself, which must have the evaluation's
architecture). Every row's runs pair with the others' (same seeds): the report gives the run-by-
run difference to random real and to no pre-training.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from condense.augment import DSAConfig, apply_dsa, sample_dsa
from condense.config.parts import TRANSFER_BASELINES
from condense.data import class_balanced_indices, load_dataset
from condense.jobs import Job
from condense.labels.ssl import features, linear_probe
from condense.nets import build_net, parse_arch
from condense.runtime.errors import CondenseError, ConfigError
from condense.runtime.files import write_text
from condense.runtime.rng import generator
from condense.synset import LabelSpec, file_sha256, load_synset
from condense.train import STREAM_INIT, TrainProtocol, accuracy, train_model
from condense.version import environment

from .stats import summarize

JOB_FN = "evals.transfer:transfer_job"
STREAM_RANDOM, STREAM_HEAD, STREAM_FT_ORDER, STREAM_FT_AUG = 71, 72, 73, 74


def check_transfer(cfg) -> None:
    """What the declarations cannot say: baselines by name."""
    bad = [b for b in cfg.transfer_baselines if b not in TRANSFER_BASELINES]
    if bad:
        raise ConfigError(f"--transfer-baselines {bad[0]!r} is not one of: {', '.join(TRANSFER_BASELINES)}")


# --- the computations -----------------------------------------------------------------------------

def adapt(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Downstream images x [N, c, h, w] brought to a network's input ``shape`` (C, H, W): grey
    repeated into C channels or colour averaged into one, then bilinear resizing."""
    c, h, w = (int(v) for v in shape)
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif c == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise ConfigError(f"downstream images have {x.shape[1]} channels, the network takes {c}")
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                          antialias=x.shape[2] > h or x.shape[3] > w)
    return x.contiguous()


def head_names(net: nn.Module) -> set[str]:
    """The state-dict names of ``net.head``'s parameters."""
    ids = {id(p) for p in net.head.parameters()}
    return {n for n, p in net.named_parameters() if id(p) in ids}


def with_new_head(pre: nn.Module, arch: str, num_classes: int, seed: int, run: int) -> nn.Module:
    """A network of ``arch`` for ``num_classes`` classes carrying every weight of ``pre`` but its head
    (a fresh one from (seed, run, 0, 0, HEAD))."""
    net = build_net(arch, *pre.input_shape[:1], num_classes, pre.input_shape[1:],
                    generator=generator(seed, run, 0, 0, STREAM_HEAD))
    state = {k: v for k, v in pre.state_dict().items() if k not in head_names(pre)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or set(missing) != head_names(net):
        raise ConfigError(f"the pre-trained network does not fit {arch} (missing {missing[:2]}, extra {unexpected[:2]})")
    return net


def finetune(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, iters: int, batch: int, lr: float,
             weight_decay: float, seed: int, run: int) -> nn.Module:
    """Train every layer of ``net`` on (x [N, C, H, W], y [N]) for ``iters`` iterations: epoch-wise
    shuffled batches, random crop + flip per image, SGD momentum 0.9 with a cosine lr; in place."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    aug, n, dev = DSAConfig(strategy="crop+flip", share="view"), x.shape[0], next(net.parameters()).device
    batch = min(batch, n)
    per_epoch = max(n // batch, 1)  # full batches only, as a loader with drop_last
    net.train()
    order = None
    for it in range(iters):
        epoch, t = divmod(it, per_epoch)
        if t == 0:
            order = torch.randperm(n, generator=generator(seed, run, epoch, 0, STREAM_FT_ORDER))
        idx = order[t * batch:(t + 1) * batch]
        xb = apply_dsa(x[idx], sample_dsa(aug, len(idx), x.shape[1:], generator(seed, run, epoch, t, STREAM_FT_AUG)))
        loss = F.cross_entropy(net(xb.to(dev)), y[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net


def pretrain_protocol(kind: str, cfg: dict[str, Any]) -> tuple[TrainProtocol, float]:
    """(the pre-training protocol, its lr) for labels of ``kind``: the reference's per label kind."""
    rep = kind == "representation"
    lr = cfg["pretrain_lr"] or (0.1 if rep else 0.01)
    wd = cfg["pretrain_weight_decay"] if cfg["pretrain_weight_decay"] is not None else (1e-3 if rep else 5e-4)
    return TrainProtocol(epochs=cfg["pretrain_epochs"], lr=lr, momentum=0.9, weight_decay=wd, batch_size=256,
                         decay_at=1.0 if rep else 0.5, dsa=not rep), lr


@functools.lru_cache(maxsize=8)  # the source and a handful of downstream sets, loaded once per worker
def _dataset(name: str, data_root: str | None, limit_train: int | None = None):
    return load_dataset(name, data_root, limit_train=limit_train)


@functools.lru_cache(maxsize=2)
def _teacher(path: str, sha256: str):
    from condense.labels.teacher_file import load_teacher_file

    if file_sha256(path) != sha256:
        raise ConfigError(f"teacher {path} changed since the evaluation was planned")
    return load_teacher_file(path)


def training_data(src: dict[str, Any], seed: int, run: int) -> tuple[torch.Tensor, torch.Tensor, LabelSpec]:
    """(images [N, C, H, W], targets, their meaning) that run ``run`` of source ``src`` pre-trains on."""
    if src["kind"] == "set":
        s = load_synset(src["path"])
        return s.images, s.labels, s.label_spec
    ds = _dataset(src["dataset"], src.get("data_root"), src.get("limit_train"))
    if src["labels"] == "representation":
        idx = torch.randperm(ds.x_train.shape[0], generator=generator(seed, run, STREAM_RANDOM))[:src["images"]]
        x = ds.x_train[idx]
        teacher = _teacher(src["teacher"], src["teacher_sha256"]).net
        return x, features(teacher, x), LabelSpec(kind="representation", loss="mse")
    idx = class_balanced_indices(ds.y_train, src["ipc"], seed + run)
    return ds.x_train[idx], ds.y_train[idx], LabelSpec()


def pretrained(src: dict[str, Any], arch: str, cfg: dict[str, Any], seed: int, run: int, device) -> nn.Module:
    """The network run ``run`` of source ``src`` starts downstream from."""
    shape = tuple(src["shape"])
    if src["kind"] == "full":
        return _teacher(src["teacher"], src["teacher_sha256"]).net
    if src["kind"] == "none":
        return build_net(arch, shape[0], src["outputs"], shape[1:], generator=generator(seed, run, 0, 0, STREAM_INIT))
    x, y, spec = training_data(src, seed, run)
    outputs = int(y.shape[1]) if spec.kind == "representation" else src["outputs"]
    net = build_net(arch, shape[0], outputs, shape[1:], generator=generator(seed, run, 0, 0, STREAM_INIT)).to(device)
    protocol, lr = pretrain_protocol(spec.kind, cfg)
    train_model(net, x.to(device), y.to(device), protocol, seed=seed, run=run, lr=lr, label_spec=spec)
    return net.cpu()


def transfer_job(source: dict[str, Any], arch: str, run: int, seed: int, downstream: list[str],
                 cfg: dict[str, Any], data_root: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """One run of one source: pre-train, then per downstream set fine-tune and probe. Returns
    ``{"accs": [fine-tune %, probe % (if any), ... per downstream set], "names": [...]}``."""
    pre = pretrained(source, arch, cfg, seed, run, device)
    accs, names = [], []
    for name in downstream:
        ds = _dataset(name, data_root)
        x_tr, x_te = adapt(ds.x_train, pre.input_shape), adapt(ds.x_test, pre.input_shape)
        net = with_new_head(pre, arch, ds.info.num_classes, seed, run).to(device)
        finetune(net, x_tr, ds.y_train, iters=cfg["finetune_iters"], batch=cfg["finetune_batch"],
                 lr=cfg["finetune_lr"], weight_decay=cfg["finetune_weight_decay"], seed=seed, run=run)
        accs.append(100.0 * accuracy(net, x_te, ds.y_test))
        names.append(f"{name}/finetune")
        if cfg["probe_epochs"]:
            net = with_new_head(pre, arch, ds.info.num_classes, seed, run).to(device)
            linear_probe(net, x_tr, ds.y_train, epochs=cfg["probe_epochs"], seed=seed + run)
            accs.append(100.0 * accuracy(net, x_te, ds.y_test))
            names.append(f"{name}/probe")
    return {"accs": accs, "names": names}


# --- the harness ----------------------------------------------------------------------------------

def _settings(cfg) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in ("pretrain_epochs", "pretrain_lr", "pretrain_weight_decay", "finetune_iters",
                                         "finetune_batch", "finetune_lr", "finetune_weight_decay", "probe_epochs")}


def plan_sources(cfg, paths: Sequence[str]) -> list[tuple[str, str, dict[str, Any], str | None]]:
    """[(row name, arch, source, the row name of its random-real baseline or None)] for the sets and
    the baselines asked for; one ConfigError line for anything that cannot be evaluated, before any
    training."""
    rows, seen = [], set()

    def add(name: str, arch: str, src: dict[str, Any], random: str | None = None) -> None:
        key = json.dumps([arch, src], sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append((name, arch, src, random))

    for path in paths:
        s = load_synset(path)
        if s.is_video or s.texture is not None:
            raise ConfigError(f"{path}: transfer evaluation pre-trains on images (not clips or textures)")
        if s.label_spec.view_mode == "per-view":
            raise ConfigError(f"{path} has per-view labels (one per view of {s.labels.shape[0]} epochs); pre-training "
                              "runs longer: relabel it with static labels first (condense labels SET --views static)")
        if not cfg.archs and not s.config.get("arch"):
            raise ConfigError(f"{path} records no architecture: give --arch")
        archs = [str(parse_arch(a)) for a in (cfg.archs or [s.config["arch"]])]
        shape = list(s.image_shape)
        rep = s.label_spec.kind == "representation"
        teacher = _set_teacher(cfg, s, path) if rep else None
        random = random_row_name(s)
        label = f"{s.method}, {s.ipc_label} ({Path(path).name})"
        for arch in archs:
            add(label, arch, {"kind": "set", "path": path, "sha256": file_sha256(path), "shape": shape,
                             "outputs": s.num_classes}, random if "random" in cfg.transfer_baselines else None)
            base = {"dataset": s.dataset, "data_root": cfg.data_root, "shape": shape,
                    "outputs": s.num_classes if not rep else 0, "limit_train": s.data.get("limit_train")}
            if "none" in cfg.transfer_baselines:
                add("no pre-training", arch, {"kind": "none", "shape": shape, "outputs": 10})
            if "random" in cfg.transfer_baselines:
                if rep:
                    add(random, arch, {**base, "kind": "random", "labels": "representation",
                                       "images": int(s.images.shape[0]), **teacher})
                else:
                    add(random, arch, {**base, "kind": "random", "labels": "hard", "ipc": s.ipc})
            if "full" in cfg.transfer_baselines and rep:
                tf = _teacher(teacher["teacher"], teacher["teacher_sha256"])
                if str(parse_arch(tf.arch)) != arch:
                    raise ConfigError(f"the full-data row transfers the teacher {teacher['teacher']} ({tf.arch}); "
                                      f"the evaluation's architecture is {arch}: drop 'full' from "
                                      "--transfer-baselines or evaluate with the teacher's --arch")
                add(f"full data, {tf.ssl['method']} teacher", arch, {"kind": "full", "shape": shape, **teacher})
    return rows


def random_row_name(s) -> str:
    """The name of the random-real row paired with set ``s``: as many images, targets made alike."""
    if s.label_spec.kind == "representation":
        return f"random real, {s.images.shape[0]} images, teacher targets"
    return f"random real, IPC {s.ipc}, hard labels"


def _set_teacher(cfg, s, path: str) -> dict[str, str]:
    """{teacher, teacher_sha256} of a KRR-ST set: --teacher, else where the set recorded it; the
    file must be the one the set was made with."""
    where = cfg.teacher or s.config.get("teacher")
    want = s.config.get("teacher_sha256")
    if not where or not Path(where).is_file():
        raise ConfigError(f"{path}: its teacher {where!r} is not there (random real needs its targets): give "
                          "--teacher FILE")
    sha = file_sha256(where)
    if want and sha != want:
        raise ConfigError(f"{path} was made with another teacher than {where} (its sha256 differs)")
    return {"teacher": str(where), "teacher_sha256": sha}


def run_transfer(cfg, paths: Sequence[str], *, note: Callable[[str], None] = print,
                 bars: bool = True) -> dict[str, Any]:
    """Plan, run (resumable: ``<json>.run/jobs.jsonl``), aggregate and report a transfer evaluation."""
    from condense.runtime.executors import execute

    from .grid import ResultLog, _bar

    cfg.validate()
    check_transfer(cfg)
    if not paths:
        raise ConfigError("--transfer evaluates sets: give at least one set file")
    for name in cfg.transfer:
        _dataset(name, cfg.data_root)  # a missing downstream set is one line now, not one per job
    sources = plan_sources(cfg, list(paths))
    settings = _settings(cfg)
    jobs, where = [], {}
    for i, (name, arch, src, _) in enumerate(sources):
        for run in range(cfg.runs):
            kwargs = {"source": src, "arch": arch, "run": run, "seed": cfg.seed, "downstream": list(cfg.transfer),
                      "cfg": settings}
            keyed = {**kwargs, "source": {k: v for k, v in src.items() if k not in ("path", "teacher",
                                                                                     "data_root")}}
            key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:20]
            jobs.append(Job(key, JOB_FN, {**kwargs, "data_root": cfg.data_root}))
            where[key] = (i, run)
    folder = Path(str(cfg.json) + ".run")
    log = ResultLog(folder)
    write_text(folder / "config.json", json.dumps(asdict(cfg), indent=1))
    write_text(folder / "env.json", json.dumps(environment(), indent=1))
    done = log.load()
    todo = [j for j in jobs if j.key not in done]
    if len(todo) < len(jobs):
        note(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} jobs already finished ({log.path})")
    errors = []
    bar = _bar(len(jobs), len(jobs) - len(todo), bars)
    try:
        for res in execute(todo, executor=cfg.executor, devices=cfg.devices, address=cfg.address):
            row = log.append(res)
            if res.ok:
                done[res.key] = row
            else:
                errors.append(f"{sources[where[res.key][0]][0]}: {res.error.splitlines()[0]}")
                note(f"job failed: {errors[-1]}")
            bar.update(1)
    finally:
        bar.close()
    rows = aggregate(sources, jobs, where, done, cfg.runs)
    doc = {"results": rows, "protocol": {**settings, "runs": cfg.runs, "seed": cfg.seed,
                                         "downstream": list(cfg.transfer), "accs_unit": "percent"},
           **({"errors": errors} if errors else {})}
    write_text(Path(cfg.json), json.dumps(doc, indent=1))
    if rows:
        note(transfer_table(rows))
        if cfg.plots:
            note(f"plot: {plot_transfer(rows, Path(cfg.plots) / 'transfer.png')}")
    note(f"results: {cfg.json} (run folder {folder}/)")
    if errors:
        raise CondenseError(f"{len(errors)} transfer job(s) failed (the others are in {cfg.json}); first: {errors[0]}")
    return doc


def aggregate(sources, jobs, where, done, runs: int) -> list[dict[str, Any]]:
    """One row per (source, arch, downstream set, fine-tune | probe) with every run's accuracy,
    their summary, and the paired differences (same seeds) to random real and to no pre-training."""
    from .report import paired

    accs: dict[tuple[int, str], list[float]] = {}
    for job in jobs:
        row = done.get(job.key)
        if row is not None:
            for name, a in zip(row.get("names", []), row["accs"]):
                accs.setdefault((where[job.key][0], name), []).append(a)
    out, by = [], {}
    for (i, name), values in sorted(accs.items(), key=lambda kv: kv[0][0]):  # downstream sets in the asked order
        label, arch, src, random = sources[i]
        ds, mode = name.rsplit("/", 1)
        r = {"synset": src.get("path"), "source": label, "kind": src["kind"], "arch": arch, "downstream": ds,
             "mode": mode, "accs": values, **summarize(values), "complete": len(values) == runs, "_random": random}
        out.append(r)
        by[(label, arch, ds, mode)] = r
    for r in out:
        for other, field in ((r.pop("_random"), "vs_random"), ("no pre-training", "vs_none")):
            base = by.get((other, r["arch"], r["downstream"], r["mode"]))
            if base is not None and base is not r and len(base["accs"]) == len(r["accs"]):
                r[field] = paired(r["accs"], base["accs"])
    return out


def transfer_table(rows: Sequence[dict]) -> str:
    """The report as a text table: a line per source, a column per downstream set and mode."""
    cols = list(dict.fromkeys((r["downstream"], r["mode"]) for r in rows))
    sources = list(dict.fromkeys((r["source"], r["arch"]) for r in rows))
    by = {(r["source"], r["arch"], r["downstream"], r["mode"]): r for r in rows}
    head = ["source"] + [f"{d} {m}" for d, m in cols]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for s, a in sources:
        cells = [s if len({x[1] for x in sources}) == 1 else f"{s} ({a})"]
        for d, m in cols:
            r = by.get((s, a, d, m))
            if r is None:
                cells.append("-")
                continue
            ci = "" if r["ci95"] != r["ci95"] else f" ± {r['ci95']:.2f}"
            vs = f" ({r['vs_random']['mean']:+.2f} vs random)" if "vs_random" in r else ""
            cells.append(f"{r['mean']:.2f}{ci}{vs}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def plot_transfer(rows: Sequence[dict], path: Path) -> Path:
    """A PNG: one panel per downstream set and mode, a bar per source (mean, 95 % interval)."""
    from matplotlib.figure import Figure

    from condense.runtime.files import write_figure

    panels = list(dict.fromkeys((r["downstream"], r["mode"]) for r in rows))
    sources = list(dict.fromkeys(r["source"] for r in rows))
    fig = Figure(figsize=(4 + 2.2 * len(panels), 0.9 + 0.32 * len(sources)))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (ds, mode) in zip(axes, panels):
        got = {r["source"]: r for r in rows if r["downstream"] == ds and r["mode"] == mode}
        ys = range(len(sources))
        means = [got[s]["mean"] if s in got else 0.0 for s in sources]
        errs = [0.0 if s not in got or got[s]["ci95"] != got[s]["ci95"] else got[s]["ci95"] for s in sources]
        ax.barh(list(ys), means, xerr=errs, color=["C0" if got.get(s, {}).get("kind") == "set" else "0.6"
                                                   for s in sources], capsize=2)
        lo = min((m for m in means if m), default=0.0)
        ax.set_xlim(max(0.0, lo - 10), 100)
        ax.set_title(f"{ds}, {mode}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(list(range(len(sources))), [s[:60] for s in sources])
    axes[0].invert_yaxis()
    fig.supxlabel("test accuracy % (mean, 95 % interval)", fontsize=8)
    fig.tight_layout()
    return write_figure(path, fig, dpi=120)
