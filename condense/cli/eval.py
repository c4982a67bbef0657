"""``condense eval``: train fresh networks on synthetic sets over archs × seeds; table, JSON, plots."""
from __future__ import annotations

import argparse
import inspect

from .common import add_preset_flag, refuse_unused
from .flags import add_config_flags, config_from_args

EXAMPLES = """examples:
  condense eval runs/fmnist/tm_ipc10.h5 --arch convnet --arch convnet:width=32 --arch resnet18 \\
      --runs 5 --seed 0 --json results.json
  condense eval runs/fmnist/*.h5 --runs 3 --epochs 300 --devices cuda:0,cuda:1,cuda:2
  condense eval runs/fmnist/*.h5 --devices cpu,cpu                 two CPU worker processes
  condense eval ... --executor ray --address auto                   the same grid on a Ray cluster
  condense eval ... --vmap-seeds                                    train the seeds of one arch at once
  condense eval SET.h5 --robustness                                 + the no-augmentation variant
  condense eval SET.h5 --scores --full-runs 2                        + HLR / IOR / LRS / ARS (DD-Ranking)
  condense eval --baseline full --dataset fashion-mnist --arch convnet:width=32 --epochs 20
  condense eval --baseline random --dataset fashion-mnist --ipc 1 --ipc 10 --runs 10
  condense eval krr_st.h5 dm_ipc10.h5 --transfer fashion-mnist-1pct,sklearn-digits --runs 10
                                  pre-train on each set, fine-tune and linear-probe downstream (KRR-ST's protocol)"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from evals.grid import EvalConfig

    p = sub.add_parser("eval", help="evaluate synthetic sets over architectures x seeds (table, JSON, plots)",
                       description=inspect.getdoc(EvalConfig), epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="*", metavar="SET", help="synthetic-set files (.h5)")
    add_preset_flag(p, "eval")
    add_config_flags(p, EvalConfig)
    p.set_defaults(handler=handle, preset=None)


def handle(args: argparse.Namespace) -> int:
    import dataclasses

    from evals import EvalConfig, run_eval
    from ..config.parts import Transfer

    TRANSFER_FIELDS = [f.name for f in dataclasses.fields(Transfer)] + ["probe_epochs"]

    cfg = config_from_args(EvalConfig, args, "eval")
    transfer_only = [f for f in TRANSFER_FIELDS if f != "transfer"]
    if cfg.transfer:
        refuse_unused(args, ("baseline", "scores", "robustness", "also_lr", "vmap_seeds", "epochs", "lr", "mixup",
                             "hard_gap", "random_baseline", "random_labels", "schedule", "split", "ipc",
                             "dataset", "dsa", "dsa_strategy", "temperature", "batch_size"),
                      "--transfer pre-trains, fine-tunes and probes by its own protocol (its options are "
                      "--pretrain-*, --finetune-*, --probe-epochs, --transfer-baselines)")
        run_eval(cfg, args.sets, bars=not args.no_progress)
        return 0
    refuse_unused(args, transfer_only, "it is a --transfer option")
    if cfg.baseline is None:
        refuse_unused(args, ("dataset",), "eval reads the dataset from each set file (--dataset names the dataset "
                                          "of --baseline)")
        refuse_unused(args, ("ipc",), "each set file has its own IPC (--ipc is for --baseline random)")
    elif cfg.baseline == "full":
        refuse_unused(args, ("ipc",), "--baseline full trains on the whole training split (--ipc is for "
                                      "--baseline random)")
    if not cfg.scores:
        refuse_unused(args, ("full_epochs", "lrs_weight", "ars_weight"), "it is a --scores option")
        if cfg.baseline != "full":
            refuse_unused(args, ("full_accuracy", "full_runs"), "it is a --scores (or --baseline full) option")
    run_eval(cfg, args.sets, bars=not args.no_progress)
    return 0
