"""``condense synth``: synthesize a small training set with one of the registered methods."""
from __future__ import annotations

import argparse
import dataclasses

from ..augment import SHARES
from ..config import make_config, preset_section
from ..errors import ConfigError
from ..jobs import resolve_device
from .common import add_preset_flag, add_progress_flag, describe, device_list

EXAMPLES = """examples:
  condense synth --method tm --dataset fashion-mnist --ipc 10 --trajectories runs/fmnist/experts \\
      --iters 500 --syn-steps 20 --expert-epochs 2 --max-start-epoch 5 --out runs/fmnist/tm_ipc10.h5
  condense synth --preset fashion-mnist/tm-ipc1-cpu          the CPU protocol preset
  condense synth --preset cifar10/tm-ipc10                   published MTT hyper-parameters
  condense synth ... --memory constant                       exact gradients, memory independent of --syn-steps
  condense synth ... --ema 0.999                             FTD's moving average of the images
  condense synth --method dm --dataset fashion-mnist --ipc 10 --iters 2000 --out runs/fmnist/dm_ipc10.h5
  condense synth --method dam --dataset fashion-mnist --ipc 10 --out runs/fmnist/dam_ipc10.h5
  condense synth --method herding --dataset fashion-mnist --ipc 10 --out runs/fmnist/herding_ipc10.h5
  condense synth --method tm --backend jax --trajectories runs/fmnist/experts --ipc 10 --out runs/fmnist/tm_jax.h5
  condense synth --method dm --backend jax --dataset fashion-mnist --ipc 10 --out runs/fmnist/dm_jax.h5
  condense synth --method frepo --dataset fashion-mnist --ipc 10 --out runs/fmnist/frepo_ipc10.h5   (JAX only)
  condense synth --method sre2l --teacher runs/fmnist/teacher.h5 --ipc 10 --out runs/fmnist/sre2l_ipc10.h5
  condense synth --method sre2l ... --curriculum cda                CDA's easy-to-hard crops
  condense synth --method rded --teacher runs/fmnist/teacher.h5 --ipc 10 --factor 2 --out runs/fmnist/rded_ipc10.h5

Rerunning the same command resumes from the last checkpoint; the run folder <out>.run/ holds
config, environment, metrics.csv, image grids and the checkpoint; <out>.png is the set's grid."""

BACKENDS = ("torch", "jax")

FLAGS: list[tuple[tuple[str, ...], dict]] = [
    (("--dataset",), dict(help="dataset (default: the experts' dataset)")),
    (("--data-root",), dict(dest="data_root", help="folder holding the dataset files")),
    (("--ipc",), dict(type=int, help="images per class (default 1)")),
    (("--limit-train",), dict(dest="limit_train", type=int,
                              help="use a class-balanced subset of the training split of this size (recorded in the set)")),
    (("--arch",), dict(help="student network (default: the experts' arch; others are refused)")),
    (("--trajectories",), dict(help="trajectory store recorded by `condense buffer` (tm)")),
    (("--teacher",), dict(help="sre2l, rded: teacher file from `condense teacher` (its dataset, transform and "
                               "classes are the set's)")),
    (("--iters",), dict(type=int, help="synthesis iterations")),
    (("--lr-net",), dict(dest="lr_net", type=float, help="gm: learning rate of the network's inner training (0.01)")),
    (("--batch-real",), dict(dest="batch_real", type=int, help="real images per class per step (dm, dam, gm: 256)")),
    (("--outer-loop",), dict(dest="outer_loop", type=int, help="gm: matching rounds per iteration (default: DC's)")),
    (("--inner-loop",), dict(dest="inner_loop", type=int, help="gm: network epochs between rounds (default: DC's)")),
    (("--zca",), dict(action=argparse.BooleanOptionalAction, default=None,
                      help="ZCA-whiten the data (dm, dam, gm; tm takes it from its experts)")),
    (("--power",), dict(type=float, help="dam: power p of the attention maps (paper 4, released code 1)")),
    (("--mmd-weight",), dict(dest="mmd_weight", type=float, help="dam: weight of the final-layer MMD term (0.01)")),
    (("--loss-scale",), dict(dest="loss_scale", type=float, help="dam: factor on the whole loss (the code's 100)")),
    (("--embed-epochs",), dict(dest="embed_epochs", type=int,
                               help="herding/kcenter: epochs of real-data training of the embedding net (default 2)")),
    (("--syn-steps",), dict(dest="syn_steps", type=int, help="student steps per iteration (tm, default 20)")),
    (("--expert-epochs",), dict(dest="expert_epochs", type=int, help="expert epochs matched, M (tm, default 2)")),
    (("--min-start-epoch",), dict(dest="min_start_epoch", type=int, help="lowest start epoch (tm, default 0)")),
    (("--max-start-epoch",), dict(dest="max_start_epoch", type=int, help="start epochs are < this (tm, default 5)")),
    (("--batch-syn",), dict(dest="batch_syn", type=int, help="synthetic images per student step (default all)")),
    (("--lr-img",), dict(dest="lr_img", type=float, help="image learning rate (frepo: images and labels)")),
    (("--lr-lr",), dict(dest="lr_lr", type=float, help="learning rate of the learned step size (published meaning)")),
    (("--lr-init",), dict(dest="lr_init", type=float, help="initial learned step size (default: the experts' lr)")),
    (("--lr-param",), dict(dest="lr_param", choices=["exp", "direct"],
                           help="tm: the learned step size as exp(rho) (default) or itself (MTT's direct)")),
    (("--student-momentum",), dict(dest="student_momentum", type=float,
                                   help="tm: SGD momentum of the student's inner steps (default 0, MTT; AST: 0.9)")),
    (("--init",), dict(help="initial images: real, noise, correct (DATM: ones an expert gets right), confident "
                            "(the expert's most confident) or kmeans (AST's representative init) (default real)")),
    (("--labels",), dict(help="tm labels: hard, expert (TESLA: expert soft labels) or learned (DATM)")),
    (("--label-refresh",), dict(dest="label_refresh", choices=["iteration", "once"],
                                help="tm --labels expert: recompute them every iteration from the target epoch "
                                     "(default, TESLA) or fix them once at the start")),
    (("--lr-labels",), dict(dest="lr_labels", type=float, help="learning rate of learned labels (DATM lr_y, default 2)")),
    (("--window-schedule",), dict(dest="window_schedule", help="start-epoch window: fixed, or linear (DATM) from "
                                                                "--window-start-max to --max-start-epoch")),
    (("--window-start-max",), dict(dest="window_start_max", type=int, help="linear window: initial upper bound")),
    (("--window-end-iter",), dict(dest="window_end_iter", type=int, help="linear window: iteration it reaches the max")),
    (("--balance-loss",), dict(dest="balance_loss", action=argparse.BooleanOptionalAction, default=None,
                               help="AST's balanced inner loss")),
    (("--middle-loss",), dict(dest="middle_loss", action=argparse.BooleanOptionalAction, default=None,
                              help="AST's intermediate matching loss")),
    (("--weight-perturb",), dict(dest="weight_perturb", action=argparse.BooleanOptionalAction, default=None,
                                 help="AST's perturbation of the starting conv weights")),
    (("--dsa",), dict(action=argparse.BooleanOptionalAction, default=None, help="DSA augmentation (default on)")),
    (("--dsa-strategy",), dict(dest="dsa_strategy", help="DSA transforms")),
    (("--dsa-share",), dict(dest="dsa_share", choices=SHARES,
                            help="tm student steps, gm network updates, herding/kcenter embeddings: image = per-image DSA parameters, one group "
                                 "per step (the references, default); batch = one draw per batch (condense 0.1); "
                                 "dm/dam/gm matching is always siamese (one draw per real/synthetic pair)")),
    (("--memory",), dict(help="tm gradients: exact (unrolled graph) or constant (adjoint, memory independent of steps)")),
    (("--ema",), dict(type=float, help="decay of FTD's moving average of the images (0 = off)")),
    (("--optimizer",), dict(help="frepo: optimiser of images and labels, lamb (reference) or adam")),
    (("--pool-size",), dict(dest="pool_size", type=int, help="frepo: networks in the model pool (10)")),
    (("--max-online-steps",), dict(dest="max_online_steps", type=int,
                                   help="frepo: a pool network is re-initialised after N online steps (100)")),
    (("--lr-online",), dict(dest="lr_online", type=float, help="frepo: Adam lr of the pool networks (3e-4)")),
    (("--online-batch",), dict(dest="online_batch", type=int,
                               help="frepo: synthetic images per online step of a pool network (1000)")),
    (("--learn-labels",), dict(dest="learn_labels", action=argparse.BooleanOptionalAction, default=None,
                               help="frepo: learn the labels with the images (default on)")),
    (("--flip",), dict(action=argparse.BooleanOptionalAction, default=None,
                       help="frepo: mirrored copies of the images in the kernel (reference: colour datasets); "
                            "sre2l: flip the crops (default on)")),
    (("--reg",), dict(type=float, help="frepo: ridge = reg * trace(K_ss) / n (1e-6)")),
    (("--r-bn",), dict(dest="r_bn", type=float, help="sre2l: weight of the BatchNorm-statistics loss (0.01)")),
    (("--first-bn-multiplier",), dict(dest="first_bn_multiplier", type=float,
                                      help="sre2l: extra weight of the first BN layer's term (10)")),
    (("--batch-size",), dict(dest="batch_size", type=int,
                             help="sre2l: classes per recovery batch (100), or images per class batch with --class-batches")),
    (("--class-batches",), dict(dest="class_batches", action=argparse.BooleanOptionalAction, default=None,
                                help="sre2l: every recovery batch is one class (LPLD)")),
    (("--min-scale",), dict(dest="min_scale", type=float,
                            help="sre2l, rded: smallest crop area fraction of the random-resized crop (0.08)")),
    (("--jitter",), dict(type=int, help="sre2l: random roll of up to this many pixels (4)")),
    (("--curriculum",), dict(help="sre2l: none, or cda (CDA's easy-to-hard crop scale)")),
    (("--cda-mode",), dict(dest="cda_mode", help="sre2l --curriculum cda: cosine (default), linear or step")),
    (("--milestone",), dict(type=float, help="sre2l --curriculum cda: fraction of the iterations it runs over (1)")),
    (("--amp",), dict(action=argparse.BooleanOptionalAction, default=None,
                      help="sre2l: bfloat16 autocast of the teacher on CUDA (default on; CPU: off)")),
    (("--factor",), dict(type=int, help="rded: crops per side of a stitched image (2)")),
    (("--num-crop",), dict(dest="num_crop", type=int, help="rded: crops scored per candidate image (5)")),
    (("--candidates",), dict(type=int, help="rded: real images drawn per class (300)")),
    (("--checkpoint-every",), dict(dest="checkpoint_every", type=int, help="save set + state every N iterations")),
    (("--eval-every",), dict(dest="eval_every", type=int, help="evaluate on the validation split every N iterations")),
    (("--eval-epochs",), dict(dest="eval_epochs", type=int, help="training epochs of those evaluations (default 100)")),
    (("--max-bad-steps",), dict(dest="max_bad_steps", type=int, help="stop after N non-finite steps in a row")),
    (("--skip-loss-above",), dict(dest="skip_loss_above", type=float, help="skip steps whose loss exceeds this (DATM's threshold; not counted as bad steps)")),
    (("--seed",), dict(type=int, help="seed (default 0)")),
    (("--out",), dict(help="synthetic-set file to write (.h5)")),
    (("--device",), dict(help="cpu, cuda or cuda:N (default: cuda if available)")),
    (("--devices",), dict(type=device_list,
                          help="sre2l: spread the recovery batches over these devices (cuda:0,cuda:1 or cpu,cpu)")),
    (("--executor",), dict(choices=("local", "ray"), help="sre2l: local (default) or ray (one task per shard)")),
    (("--address",), dict(help="sre2l --executor ray: the cluster (auto, host:port; default a local Ray)")),
    (("--shards",), dict(type=int, help="sre2l: shards of the batches (default: one per device; Ray: 2)")),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..methods import method_names

    p = sub.add_parser(
        "synth", help="synthesize a small training set (tm, dm, dam, gm, frepo, sre2l, rded, random, herding, kcenter)",
        description="Synthesize a small training set and write it as a synthetic-set file.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_flag(p, "synth")
    p.add_argument("--method", help=f"one of: {', '.join(method_names())}")
    p.add_argument("--backend", choices=BACKENDS,
                   help="torch (default) or jax (tm and dm: same options and set file, JAX's default device; "
                        "frepo runs only in JAX)")
    for names, kw in FLAGS:
        p.add_argument(*names, **kw)
    add_progress_flag(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ..methods import get_method, runner

    method = args.method or (preset_section(args.preset, "synth").get("method") if args.preset else None)
    if not method:
        raise ConfigError("give --method (e.g. --method tm) or a --preset that names one")
    entry = get_method(method)
    fields = {f.name for f in dataclasses.fields(entry.config)}
    dests = [kw.get("dest") or names[0][2:].replace("-", "_") for names, kw in FLAGS]
    foreign = [d for d in dests if d not in fields and getattr(args, d) is not None]
    if foreign:
        raise ConfigError(f"--{foreign[0].replace('_', '-')} is not an option of method {method}")
    section = dict(preset_section(args.preset, "synth")) if args.preset else {}
    section.pop("method", None)  # selects the method above; not a config field
    preset_backend = section.pop("backend", None)  # likewise
    backend = args.backend or preset_backend or entry.default_backend
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    run = runner(entry, backend)
    flags = {f: getattr(args, f) for f in fields if hasattr(args, f)}
    cfg = make_config(entry.config, section, flags, where=f"preset {args.preset!r}" if args.preset else "")
    device = resolve_device(cfg.device)
    print(f"condense synth --method {method} --backend {backend}: {describe(cfg)}")

    from evals.validation import validation_evaluator

    evaluate_fn = validation_evaluator(cfg, device) if getattr(cfg, "eval_every", 0) else None
    s = run(cfg, device, evaluate=evaluate_fn, bars=not args.no_progress)
    from ..viz import save_set_grid

    grid = save_set_grid(s, cfg.out)
    print(f"wrote {cfg.out}: {s.images.shape[0]} images ({s.ipc} per class)" + (f", learned lr {s.lr:.4g}" if s.lr else "")
          + f"; grid {grid}")
    return 0
