"""Squeeze: train a teacher on a dataset and save it as a teacher file (``condense teacher``).

SRe2L's first stage. The teacher is trained by :func:`condense.train.train_model`, the
loop every other network here trains with, as run (seed, 0): its init, batch order and
augmentation come from generators keyed by the seed, so the same command gives the
same teacher at a fixed thread count. Nothing selects on the test set: the file records
the final epoch's network, its test accuracy and its accuracy on the validation split.
A teacher costs minutes on a CPU at Fashion-MNIST size, so an interrupted one is
trained again from its start (as an interrupted expert is).
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch

from condense.config import configclass, setting
from condense.config.parts import Augmentation, Data, Probe, Run, Training
from condense.data import load_dataset
from condense.runtime.errors import CondenseError, ConfigError, FormatError
from condense.nets import build_net, parse_arch
from condense.runtime.progress import bar
from condense.runtime.rng import generator
from condense.train import STREAM_INIT, TrainProtocol, accuracy, protocol_dict, train_model

from .ssl import SSL_METHODS
from .teacher_file import TeacherFile
from condense.runtime.files import check_torch_file, holding_lock

@configclass(Data, Run, Training, Augmentation, Probe, part="teacher",
             drop=("val_size", "ipc", "trajectories", "teacher", "temperature", "flip"),
             defaults={"arch": "convnet:norm=batch", "epochs": 20, "momentum": 0.9, "weight_decay": 5e-4,
                       "lr_decay_at": 0.5, "out": "runs/teacher.h5", "min_scale": 0.2},
             helps={"arch": "network spec (convnet:norm=batch is ConvNet BN, resnet18 is ResNet-18 BN)",
                    "out": "teacher file to write (.h5)",
                    "min_scale": "--ssl: smallest crop area fraction of the two views' random-resized crop",
                    "probe_epochs": "--ssl: epochs of the linear probe on the frozen representation (0: not measured)",
                    "dsa_strategy": "augmentation: DSA transforms joined by _, or rrc+flip (random-resized crop "
                                    "and flip)"})
class TeacherConfig:
    """How a teacher is trained: a network trained on a dataset's training split (the loop every network here
    trains with; defaults: the field's evaluation protocol with a BN network), saved with its accuracy, data,
    transform and class order."""

    # Read with weights_only, never unpickled.
    weights: str | None = setting(None, "import a state_dict file instead of training (torchvision's resnet18: "
                                        "--arch resnet18-imagenet)", metavar="FILE")
    measure: bool = setting(True, "--weights: measure the test accuracy")
    ssl: str | None = setting(None, "train self-supervised, labels unused (barlow-twins: Barlow Twins, KRR-ST's "
                                    "teacher); the labels only fit a linear probe afterwards", choices=SSL_METHODS)
    projector: list[int] = setting(factory=lambda: [512, 512, 512], help="--ssl: the projector's hidden and output "
                                   "sizes (Barlow Twins: 8192,8192,8192)", gt=0, le=65536, metavar="SIZES")
    bt_lambda: float = setting(0.0051, "--ssl: weight of Barlow Twins' off-diagonal terms", ge=0)

    def protocol(self) -> TrainProtocol:
        return TrainProtocol(epochs=self.epochs, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                             batch_size=self.batch_size, decay_at=self.lr_decay_at, dsa=self.dsa,
                             dsa_strategy=self.dsa_strategy, dsa_share=self.dsa_share)


@holding_lock(lambda cfg, *a, **k: cfg.out)
def train_teacher(cfg: TeacherConfig, device: torch.device | str = "cpu", *, progress: bool = True) -> TeacherFile:
    """Train ``cfg.arch`` on ``cfg.dataset``'s training split and write the teacher file ``cfg.out``."""
    cfg.validate()
    arch = str(parse_arch(cfg.arch))
    done = _already_trained(cfg, arch)
    if done is not None:
        print(f"{cfg.out}: already trained with these settings")
        return done
    ds = load_dataset(cfg.dataset, cfg.data_root, zca=cfg.zca, limit_train=cfg.limit_train)
    c, (h, w) = ds.info.channels, ds.info.image_size
    try:
        net = build_net(arch, c, ds.info.num_classes, (h, w), generator=generator(cfg.seed, 0, 0, 0, STREAM_INIT))
    except CondenseError as e:
        raise ConfigError(f"--arch {arch} cannot take {ds.info.name} images {c}x{h}x{w}: {e}") from None
    protocol = cfg.protocol()
    if cfg.weights:
        from condense.synset import file_sha256

        load_weights(cfg.weights, net, arch)
        net = net.to(device).eval()
        test = 100.0 * accuracy(net, ds.x_test, ds.y_test, protocol.test_batch_size) if cfg.measure else float("nan")
        return _save(cfg, arch, ds, net, test, None, {"weights_sha256": file_sha256(cfg.weights)})
    net = net.to(device)
    if cfg.ssl:
        return _train_ssl(cfg, arch, ds, net, device, progress)
    with bar(total=protocol.epochs, desc=f"teacher {arch}", unit="ep", disable=not progress) as b:
        def on_epoch(epoch, model, loss):
            b.update(1)
            b.set_postfix({"loss": f"{loss:.4f}"})

        train_model(net, ds.x_train.to(device), ds.y_train.to(device), protocol, seed=cfg.seed, run=0, lr=cfg.lr,
                    on_epoch=on_epoch)
    test = 100.0 * accuracy(net, ds.x_test, ds.y_test, protocol.test_batch_size)
    val = 100.0 * accuracy(net, ds.x_val, ds.y_val, protocol.test_batch_size) if len(ds.y_val) else None
    return _save(cfg, arch, ds, net, test, val, {"protocol": protocol_dict(protocol)})


def _train_ssl(cfg: TeacherConfig, arch: str, ds, net: torch.nn.Module, device, progress: bool) -> TeacherFile:
    """Barlow Twins on the training images (labels unused), then a linear probe measures it."""
    from .ssl import STREAM_PROJECTOR, linear_probe, probe_accuracy, projector, train_barlow_twins

    if cfg.weights:
        raise ConfigError("--ssl trains a network; --weights imports one: give one of them")
    head = projector(net.embed_dim, cfg.projector, generator(cfg.seed, 0, 0, 0, STREAM_PROJECTOR)).to(device)
    with bar(total=cfg.epochs, desc=f"teacher {arch} ({cfg.ssl})", unit="ep", disable=not progress) as b:
        def on_epoch(epoch, loss):
            b.update(1)
            b.set_postfix({"loss": f"{loss:.2f}"})

        losses = train_barlow_twins(net, head, ds.x_train.to(device), epochs=cfg.epochs, batch_size=cfg.batch_size,
                                    lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    decay_at=cfg.lr_decay_at, lambd=cfg.bt_lambda, min_scale=cfg.min_scale,
                                    seed=cfg.seed, on_epoch=on_epoch)
    if not all(map(math.isfinite, losses)):
        raise CondenseError(f"Barlow Twins diverged (loss {losses[-1]}): lower --lr")

    def probed(network):  # (test, validation) accuracy of a linear probe on network's representation
        if not cfg.probe_epochs:
            return float("nan"), None
        linear_probe(network, ds.x_train, ds.y_train, epochs=cfg.probe_epochs, seed=cfg.seed)
        return (probe_accuracy(network, ds.x_test, ds.y_test),
                probe_accuracy(network, ds.x_val, ds.y_val) if len(ds.y_val) else None)

    test, val = probed(net)
    # the same probe on the untrained network (the same init): what training added to the representation
    untrained = probed(build_net(arch, ds.info.channels, ds.info.num_classes, ds.info.image_size,
                                 generator=generator(cfg.seed, 0, 0, 0, STREAM_INIT)))
    ssl = {"method": cfg.ssl, "representation_dim": int(net.embed_dim), "projector": list(cfg.projector),
           "bt_lambda": cfg.bt_lambda, "accuracy": "linear probe", "losses": [round(v, 4) for v in losses],
           "untrained_probe": {"test": untrained[0], "val": untrained[1]}}
    record = {"protocol": {"ssl": cfg.ssl, "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                           "final_loss": round(losses[-1], 4), "probe_epochs": cfg.probe_epochs}}
    return _save(cfg, arch, ds, net, test, val, record, ssl=ssl, projector=head)


def _save(cfg: TeacherConfig, arch: str, ds, net: torch.nn.Module, test: float, val: float | None,
          record: dict, ssl: dict | None = None, projector: torch.nn.Module | None = None) -> TeacherFile:
    """Write the teacher file of ``net`` (trained or imported) on ``ds``; ``record`` joins its config."""
    t = TeacherFile(net=net.cpu().eval(), arch=arch, dataset=ds.info.name, num_classes=ds.info.num_classes,
                    image_shape=tuple(ds.info.shape), class_names=tuple(ds.info.class_names), transform=ds.transform,
                    accuracy=test, val_accuracy=val, config={**asdict(cfg), "arch": arch, **record},
                    data=dict(ds.meta), ssl=ssl, projector=None if projector is None else projector.cpu().eval())
    t.save(cfg.out)
    return t


IGNORED = ("out", "device", "data_root")  # where it is written and run: not what the teacher is


def _already_trained(cfg: TeacherConfig, arch: str) -> TeacherFile | None:
    """The teacher at ``cfg.out`` if it was trained with these settings (a rerun does nothing)."""
    import os

    from .teacher_file import load_teacher_file

    if not os.path.exists(cfg.out):
        return None
    try:
        t = load_teacher_file(cfg.out)
    except CondenseError:
        return None
    want = {k: v for k, v in {**asdict(cfg), "arch": arch}.items() if k not in IGNORED}
    have = {k: v for k, v in t.config.items() if k not in IGNORED and k not in ("protocol", "weights_sha256")}
    defaults = asdict(TeacherConfig())
    # a setting the file predates was at its default then
    have.update({k: defaults[k] for k in want if k not in have})
    if cfg.weights and t.config.get("weights_sha256") != _sha256(cfg.weights):
        return None
    return t if have == want else None


def _sha256(path: str) -> str | None:
    import os

    from condense.synset import file_sha256

    return file_sha256(path) if os.path.exists(path) else None


def load_weights(path: str, net: torch.nn.Module, arch: str) -> None:
    """Load a state_dict file into ``net`` (torchvision ResNet-18 names mapped), one line on failure."""
    from condense.nets.resnet import from_torchvision

    try:
        check_torch_file(path, "state_dict")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FormatError as e:
        raise ConfigError(f"--weights {e}") from None
    except Exception as e:  # torch raises several types for files that are not weights-only state_dicts
        raise ConfigError(f"--weights {path} is not a weights-only state_dict ({type(e).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"--weights {path} does not hold a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "fc.weight" in state:
        state = from_torchvision(state)
    expected = net.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ConfigError(f"--weights {path} does not fit {arch}: " +
                          (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}") +
                          f" ({len(missing)} missing, {len(extra)} unexpected)")
    for k, t in state.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise ConfigError(f"--weights {path}: {k} has shape {tuple(t.shape)}, {arch} needs {tuple(expected[k].shape)}")
    net.load_state_dict(state)
