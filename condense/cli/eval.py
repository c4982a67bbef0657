"""``condense eval``: train fresh networks on synthetic sets over archs × seeds; table, JSON, plots."""
from __future__ import annotations

import argparse

from .common import add_dsa_share_flag, add_preset_flag, add_progress_flag, config_from_args, device_list

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

Protocol: SGD momentum 0.9, weight decay 5e-4, lr = the set's learned lr if it has one
else 0.01 (--lr overrides), batch 256, lr x0.1 at half the epochs, DSA augmentation,
test accuracy on the full test set. Run r uses seed (--seed, r); the random-real
baseline of each IPC is evaluated beside the sets (run r on the subset of seed --seed + r),
and every set is compared with it run by run. Rerunning the same command resumes: the
finished jobs are kept in <json>.run/jobs.jsonl."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate synthetic sets over architectures x seeds (table, JSON, plots)",
                       description="Train fresh networks on synthetic sets with the standard protocol and "
                                   "report accuracy (mean ± std, 95% interval) beside the random-real baseline.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="*", metavar="SET", help="synthetic-set files (.h5)")
    add_preset_flag(p, "eval")
    p.add_argument("--arch", dest="archs", action="append",
                   help="network spec; repeat for several (default: each set's own arch)")
    p.add_argument("--runs", type=int, help="runs (seeds) per set and arch (default 5)")
    p.add_argument("--seed", type=int, help="base seed (default 0)")
    p.add_argument("--epochs", type=int, help="training epochs (default 300; --baseline full: 20)")
    p.add_argument("--lr", type=float, help="training lr (default: the set's learned lr, else 0.01)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="training batch size (default 256)")
    p.add_argument("--dsa", action=argparse.BooleanOptionalAction, default=None,
                   help="DSA augmentation while training (default on)")
    add_dsa_share_flag(p, "while training")
    p.add_argument("--also-lr", dest="also_lr", type=float,
                   help="a set with a learned lr is also trained at this lr (e.g. 0.01): a 'fixed-lr' row beside it")
    p.add_argument("--temperature", type=float, help="soft labels: distillation temperature (default: the set's)")
    p.add_argument("--robustness", action="store_true", default=None,
                   help="also train every set without augmentation (soft-label sets always get their "
                        "hard-label variant)")
    p.add_argument("--hard-gap", dest="hard_gap", action=argparse.BooleanOptionalAction, default=None,
                   help="soft-label sets: also train on their hard labels and report the gap (default on)")
    p.add_argument("--random-baseline", dest="random_baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate the random-real baseline of each IPC beside the sets (default on)")
    p.add_argument("--scores", action="store_true", default=None,
                   help="DD-Ranking's fair scores HLR, IOR, LRS, ARS: adds the full-data, hard-label and "
                        "no-augmentation rows, and random real under each set's labels and augmentation "
                        "(with --plots: fair.png)")
    p.add_argument("--full-runs", dest="full_runs", type=int, help="--scores: runs of the full-data reference (default --runs)")
    p.add_argument("--full-epochs", dest="full_epochs", type=int,
                   help="--scores: epochs of the full-data reference (default 20; --epochs is the sets')")
    p.add_argument("--full-accuracy", dest="full_accuracy", type=float,
                   help="--scores: the full-data accuracy (percent) HLR uses, given instead of trained (ImageNet-1k)")
    p.add_argument("--lrs-weight", dest="lrs_weight", type=float, help="--scores: w of LRS (0.5)")
    p.add_argument("--ars-weight", dest="ars_weight", type=float, help="--scores: gamma of ARS (0.5)")
    p.add_argument("--teacher", help="where the teacher file that labelled the sets is now (default: as recorded)")
    p.add_argument("--dsa-strategy", dest="dsa_strategy",
                   help="augmentation strategy (default: a per-view set's own views, else DSA's groups; rrc+flip: "
                        "random-resized crop + flip)")
    p.add_argument("--baseline", choices=("random", "full"), help="evaluate a baseline of --dataset")
    p.add_argument("--dataset", help="dataset of --baseline")
    p.add_argument("--ipc", type=int, action="append", help="--baseline random: IPC, repeat for several")
    p.add_argument("--data-root", dest="data_root", help="folder holding the dataset files")
    p.add_argument("--vmap-seeds", dest="vmap_seeds", action="store_true", default=None,
                   help="train the runs of one arch at once (stacked models; falls back where it cannot)")
    p.add_argument("--executor", choices=("local", "ray"), help="local (in-process or --devices pool) or ray")
    p.add_argument("--devices", type=device_list, help="comma-separated: cuda:0,cuda:1 or cpu,cpu (one worker each)")
    p.add_argument("--address", help="Ray cluster address (auto, or host:port; default: a local Ray instance)")
    p.add_argument("--split", choices=("test", "val"),
                   help="measure on the test set (default) or the validation split (to choose settings)")
    p.add_argument("--json", help="report file (default runs/eval/results.json)")
    p.add_argument("--plots", help="folder for accuracy.png and curves.png")
    add_progress_flag(p)
    p.set_defaults(handler=handle, preset=None)


def handle(args: argparse.Namespace) -> int:
    from evals import EvalConfig, run_eval

    cfg = config_from_args(EvalConfig, args, "eval")
    run_eval(cfg, args.sets, bars=not args.no_progress)
    return 0
