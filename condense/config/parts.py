"""The shared parts every configuration is composed of, each field declared here once.

A method or command takes the parts it needs (``configclass(DATA, RUN, ...)``), leaves
out the fields that would have no effect for it, and may change a default or a help
line; the field itself (type, bounds, choices, unit) lives only here.
"""
from __future__ import annotations

from ..augment import SHARES
from .declare import part, setting

DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"
EXECUTORS = ("local", "ray")
TRANSFER_BASELINES = ("none", "random", "full")  # evals.transfer's rows beside the sets
# Upper bounds where a larger value would only exhaust memory or never finish: far above every
# published protocol (IPC 50 on ImageNet-1k, batch 1024, 10 runs), far below what allocates terabytes.
MAX_IPC = 10_000
MAX_BATCH = 100_000
MAX_RUNS = 1000


def _arch(text: str) -> None:
    from ..nets import parse_arch_flag  # networks are imported only once a config is built

    parse_arch_flag(text)


def _strategy(text: str) -> None:
    from ..augment import parse_strategy

    parse_strategy(text)


@part("data")
class Data:
    """What is distilled, and from what."""

    dataset: str | None = setting("fashion-mnist", "dataset name (`condense datasets` lists what is available)")
    data_root: str | None = setting(None, "folder holding the dataset files (default: $CONDENSE_DATA, then the "
                                          "usual places)", metavar="DIR")
    limit_train: int | None = setting(None, "use a class-balanced subset of the training split of this size "
                                            "(recorded)", gt=0, unit="images")
    val_size: int | None = setting(None, "validation images held out of training (default: the dataset's)",
                                   ge=0, unit="images")
    zca: bool = setting(False, "ZCA-whiten the data (MTT's; kornia's eps 0.1 on [0, 1] pixels)")
    arch: str | None = setting("convnet", "network spec, e.g. convnet:width=32 or resnet18 (condense.nets)",
                              check=_arch)
    ipc: int = setting(1, "images per class of the set", gt=0, le=MAX_IPC, unit="images")
    trajectories: str = setting("", "trajectory store recorded by `condense buffer`", metavar="STORE")
    teacher: str | None = setting(None, "teacher file from `condense teacher` (its dataset, transform and "
                                        "classes are the set's)", metavar="FILE")


@part("committee")
class Committee:
    """CV-DD's committee (Cui et al. 2025): teacher files of any architectures voting with --teacher, each
    weighted by softmax(prior / temperature), the prior being its measured accuracy: validation, else test
    (condense.labels.teachers)."""

    committee_teacher: list[str] = setting(factory=list, help="another teacher file voting with --teacher "
                                           "(repeat; any architecture)", repeat=True, flag="--committee-teacher",
                                           metavar="FILE")
    committee_temperature: float = setting(10.0, "committee weights softmax(prior / this) (CV-DD: 10 to relabel, "
                                                 "5 to recover)", gt=0)


@part("run")
class Run:
    """Where the result goes, how it is seeded, where it runs."""

    seed: int = setting(0, "seed: every random draw derives from it", ge=0)
    out: str | None = setting("runs/out.h5", "file to write", metavar="PATH")
    device: str | None = setting(None, "cpu, cuda or cuda:N (default: cuda if available)")


@part("iterations")
class Loop:
    """What every iterative method shares (condense.methods.loop)."""

    iters: int = setting(1000, "synthesis iterations", gt=0)
    checkpoint_every: int = setting(100, "save the set and the full state every N iterations (a rerun resumes)",
                                    gt=0, unit="iterations")
    eval_every: int = setting(0, "evaluate on the validation split every N iterations (0: never)", ge=0,
                              unit="iterations")
    eval_epochs: int = setting(100, "training epochs of each --eval-every evaluation", gt=0, unit="epochs")
    max_bad_steps: int = setting(10, "stop after N non-finite steps in a row (each is rolled back)", gt=0)
    skip_loss_above: float | None = setting(None, "skip iterations whose loss exceeds this (DATM's threshold; "
                                                  "not counted as bad steps)", gt=0)


@part("synthesis")
class Synthesis:
    """Settings that several synthesis methods have, with per-method defaults."""

    lr_img: float = setting(1.0, "learning rate of the images", gt=0)
    init: str = setting("real", "initial images")
    batch_real: int = setting(256, "real images per class and iteration", gt=0, le=MAX_BATCH, unit="images")


@part("matching")
class Matching:
    """Trajectory matching's student and expert window (tm; s2d --finetune tm)."""

    syn_steps: int = setting(20, "student steps per iteration", gt=0, le=10_000)
    expert_epochs: int = setting(2, "expert epochs matched, M", gt=0, le=10_000, unit="epochs")
    min_start_epoch: int = setting(0, "lowest start epoch", ge=0)
    max_start_epoch: int = setting(5, "start epochs are below this", gt=0)
    batch_syn: int | None = setting(None, "synthetic images per student step (default: all, as MTT)", gt=0)
    lr_lr: float = setting(1e-5, "learning rate of the learned step size (MTT's meaning; with --lr-param exp "
                                 "the step of rho is lr_lr / lr_init^2)", gt=0)
    lr_init: float | None = setting(None, "initial learned step size (default: the experts' lr)", gt=0)


@part("pool")
class Pool:
    """A model pool: networks trained online on the set, whose features a kernel method regresses on (frepo,
    krr-st; condense.jax.pool)."""

    pool_size: int = setting(10, "networks in the model pool", gt=0, le=1000)
    max_online_steps: int = setting(100, "a pool network is re-initialised after N online steps", gt=0)
    lr_online: float = setting(3e-4, "learning rate of the pool networks' online steps", gt=0)
    online_batch: int | None = setting(1000, "synthetic images per online step of a pool network (all when fewer; "
                                             "unset: all)", gt=0, le=1_000_000, unit="images")


@part("augmentation")
class Augmentation:
    """Differentiable siamese augmentation (condense.augment) and crops."""

    dsa: bool = setting(True, "DSA augmentation")
    dsa_strategy: str | None = setting(DSA_DEFAULT, "DSA transforms, joined by _ (or rrc+flip)", check=_strategy)
    dsa_share: str = setting("image", "what one batch shares of a DSA draw: image = per-image parameters, one "
                                      "group per step (the references); batch = one draw per batch (condense 0.1); "
                                      "view = nothing shared", choices=SHARES)
    min_scale: float = setting(0.08, "smallest crop area fraction of the random-resized crop", gt=0, le=1)
    flip: bool = setting(True, "horizontal flips")


@part("training")
class Training:
    """How a network is trained on real data (experts, teachers) or on a set (evaluation)."""

    epochs: int | None = setting(50, "training epochs", gt=0, unit="epochs")
    lr: float | None = setting(0.01, "SGD learning rate", gt=0)
    momentum: float = setting(0.0, "SGD momentum", ge=0, lt=1)
    weight_decay: float = setting(0.0, "weight decay", ge=0)
    batch_size: int = setting(256, "batch size", gt=0, le=MAX_BATCH, unit="images")
    lr_decay_at: float = setting(1.0, "lr x0.1 from this fraction of the epochs (1 = never)", gt=0, le=1)
    temperature: float | None = setting(1.0, "distillation temperature of soft labels", gt=0)


@part("evaluation")
class Evaluation:
    """How sets are evaluated (``condense eval``; a pipeline overrides its eval sections' with it)."""

    runs: int | None = setting(5, "runs (seeds) per set and arch", gt=0, le=MAX_RUNS)


@part("transfer")
class Transfer:
    """Transfer evaluation (``condense eval --transfer``, evals.transfer): pre-train on each set, then fine-tune and
    linear-probe on downstream data."""

    transfer: list[str] = setting(factory=list, help="downstream datasets: pre-train on each set, then fine-tune "
                                  "and linear-probe on these (e.g. fashion-mnist-1pct,sklearn-digits)", metavar="LIST")
    transfer_baselines: list[str] = setting(factory=lambda: list(TRANSFER_BASELINES), help="--transfer: rows beside the "
                                            "sets: none (no pre-training), random (random real, same targets), full "
                                            "(the self-supervised teacher)", metavar="LIST")
    pretrain_epochs: int = setting(1000, "--transfer: pre-training epochs on a set (the reference's 1,000)", gt=0,
                                   unit="epochs")
    pretrain_lr: float | None = setting(None, "--transfer: pre-training lr (default 0.1 for representation "
                                              "targets, else 0.01: the reference's)", gt=0)
    pretrain_weight_decay: float | None = setting(None, "--transfer: pre-training weight decay (default 1e-3 for "
                                                        "representation targets, else 5e-4)", ge=0)
    finetune_iters: int = setting(5000, "--transfer: fine-tuning iterations per downstream set (the reference's "
                                        "5,000; 10,000 for CIFAR and Tiny-ImageNet)", gt=0, unit="iterations")
    finetune_batch: int = setting(128, "--transfer: fine-tuning batch size", gt=0, le=100_000, unit="images")
    finetune_lr: float = setting(0.01, "--transfer: fine-tuning lr (cosine decay to 0)", gt=0)
    finetune_weight_decay: float = setting(5e-4, "--transfer: fine-tuning weight decay", ge=0)


@part("probe")
class Probe:
    """A linear probe: a new head fitted on a network's frozen, standardised features (condense.labels.ssl)."""

    probe_epochs: int = setting(100, "epochs of the linear probe on a frozen representation (0: no probe)", ge=0,
                                unit="epochs")


@part("workers")
class Workers:
    """Spreading independent work over devices, processes or a Ray cluster (condense.runtime.executors)."""

    devices: list[str] | None = setting(None, "devices, one worker each: cuda:0,cuda:1 or cpu,cpu", metavar="LIST")
    executor: str = setting("local", "local (in-process or a process per device) or ray", choices=EXECUTORS)
    address: str | None = setting(None, "--executor ray: the cluster (auto, host:port; default a local Ray)")
    shards: int | None = setting(None, "shards of the work (default: one per device; Ray: 2)", gt=0, le=4096)


@part("recovery")
class Recovery:
    """Optimising images against a frozen teacher's BatchNorm statistics and cross-entropy (sre2l, infer)."""

    r_bn: float = setting(0.01, "weight of the BatchNorm-statistics loss", ge=0)
    first_bn_multiplier: float = setting(10.0, "extra weight of the first BN layer's term", gt=0)
    jitter: int = setting(4, "random roll of up to this many pixels", ge=0, le=1024, unit="pixels")
    amp: bool = setting(True, "bfloat16 autocast of the teacher on CUDA (statistics stay float32; CPU: off)")
    # larger forwards lose cache locality on a CPU (docs/BENCHMARKS.md)
    chunk: int | None = setting(None, "images per teacher forward: whole batches grouped up to this many "
                                      "(default: 128 on a CPU, all on a GPU)", gt=0, unit="images")


ALL = (Data, Committee, Run, Loop, Synthesis, Matching, Pool, Augmentation, Training, Evaluation, Transfer, Probe, Workers, Recovery)
