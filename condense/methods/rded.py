"""`rded`: realistic and diverse crops of real images, chosen by a teacher and stitched (RDED,
Sun et al. CVPR 2024; reference code LINs-lab/RDED, ``synthesize/main.py`` and ``utils.py``).

No optimisation. Per class c, ``candidates`` real images are drawn (seeded); each gets
``num_crop`` random-resized square crops (area fraction U(min_scale, 1)) resized to a
patch of (H / factor) x (W / factor). A crop's realism score is the teacher's cross-entropy
on class c of the crop padded with zeros (the mean colour in network space) to H x W; the
best crop of each image is kept, and the ``ipc · factor²`` best of those, best first, fill
the class's ``ipc`` images cell by cell: cell k (row-major) of image i holds crop
``k · ipc + i``. ``factor`` 1 keeps single crops (RDED's Tiny-ImageNet and CIFAR
setting), 2 stitches 2 x 2 (its ImageNet setting). Deterministic from the seed: class
c's candidates come from (seed, c, PICK) and its crops from (seed, c, CROP).
"""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F

from ..augment import crop_resize
from ..config import configclass, setting
from ..config.parts import Augmentation, Data, Run
from ..runtime.errors import ConfigError
from ..nets import parse_arch
from ..runtime.progress import bar
from ..runtime.rng import generator
from ..synset import SynSet

STREAM_PICK, STREAM_CROP = 41, 42


@configclass(Data, Run, Augmentation, part="rded",
             drop=("dataset", "val_size", "zca", "trajectories", "dsa", "dsa_strategy", "dsa_share", "flip"),
             defaults={"out": "runs/rded.h5"},
             helps={"limit_train": "candidates come from a class-balanced subset of this size (recorded)",
                    "arch": "the student the set is evaluated with (recorded)"})
class RDEDConfig:
    factor: int = setting(2, "crops per side of a stitched image", gt=0, le=16)
    num_crop: int = setting(5, "crops scored per candidate image", gt=0, le=1000)
    candidates: int = setting(300, "real images drawn per class (RDED's mipc)", gt=0, le=100_000, unit="images")
    score_batch: int = setting(512, "crops per teacher forward", gt=0, le=100_000, unit="crops")

    def validate(self) -> None:
        """What the declarations cannot say: the teacher, and enough candidates for the crops."""
        if not self.teacher:
            raise ConfigError("rded needs --teacher FILE (a teacher file from `condense teacher`)")
        if self.ipc * self.factor ** 2 > self.candidates:
            raise ConfigError(f"--candidates {self.candidates} cannot fill {self.ipc} images of "
                              f"{self.factor}x{self.factor} crops per class (needs >= {self.ipc * self.factor ** 2})")


def square_crops(n: int, min_scale: float, g: torch.Generator) -> torch.Tensor:
    """[n, 4] square crop boxes (w, h, left, top) in fractions, area ~ U(min_scale, 1) (ratio 1, as RDED)."""
    side = torch.sqrt(torch.rand(n, generator=g) * (1.0 - min_scale) + min_scale)
    left = torch.rand(n, generator=g) * (1.0 - side)
    top = torch.rand(n, generator=g) * (1.0 - side)
    return torch.stack([side, side, left, top], dim=1)


def pad_center(patches: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad [n, C, h, w] patches centrally to ``size`` (what RDED scores)."""
    h, w = patches.shape[2:]
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    return F.pad(patches, (left, size[1] - w - left, top, size[0] - h - top))


def stitch(patches: torch.Tensor, ipc: int, factor: int) -> torch.Tensor:
    """[ipc · factor², C, h, w] patches (best first) -> [ipc, C, factor·h, factor·w]: cell k
    (row-major) of image i is patch k · ipc + i."""
    n, c, h, w = patches.shape
    grid = patches.view(factor, factor, ipc, c, h, w)  # [row, col, image, C, h, w]
    return grid.permute(2, 3, 0, 4, 1, 5).reshape(ipc, c, factor * h, factor * w)


@torch.no_grad()
def crop_scores(net: torch.nn.Module, crops: torch.Tensor, label: int, size: tuple[int, int], batch: int) -> torch.Tensor:
    """The teacher's cross-entropy on class ``label`` of every crop padded to ``size``: [n]."""
    out = []
    for part in crops.split(batch):
        logits = net(pad_center(part, size)).float()
        out.append(F.cross_entropy(logits, torch.full((len(part),), label, device=logits.device), reduction="none"))
    return torch.cat(out)


def select_class(net, x_train, members: torch.Tensor, label: int, cfg: RDEDConfig, device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ``label``'s ipc stitched images, the index into ``members`` of each of their cells'
    source image [ipc·factor²]). Only the drawn candidates are read from ``x_train`` (a lazy
    dataset decodes just those files)."""
    _, c, h, w = x_train.shape
    ph, pw = h // cfg.factor, w // cfg.factor
    pick = torch.randperm(len(members), generator=generator(cfg.seed, label, STREAM_PICK))[:cfg.candidates]
    images = x_train[members[pick]].to(device)
    boxes = square_crops(len(pick) * cfg.num_crop, cfg.min_scale, generator(cfg.seed, label, STREAM_CROP))
    crops = crop_resize(images.repeat_interleave(cfg.num_crop, dim=0), boxes.to(device), (ph, pw))
    scores = crop_scores(net, crops, label, (h, w), cfg.score_batch).view(len(pick), cfg.num_crop)
    best_score, best_crop = scores.min(dim=1)  # each image's most realistic crop
    order = torch.argsort(best_score, stable=True)[:cfg.ipc * cfg.factor ** 2]
    chosen = crops.view(len(pick), cfg.num_crop, c, ph, pw)[order, best_crop[order]]
    return stitch(chosen, cfg.ipc, cfg.factor).cpu(), pick[order.cpu()]


def run_rded(cfg: RDEDConfig, device: torch.device, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Select, score and stitch; write the set to ``cfg.out`` and return it."""
    from ..data import load_dataset
    from ..labels.teacher_file import load_teacher_file
    from ..labels.teachers import check_fits, teacher_of_file
    from .baselines import already_selected

    cfg.validate()
    tf = load_teacher_file(cfg.teacher)
    teacher = teacher_of_file(cfg.teacher, tf)
    config = {"method": "rded", **asdict(cfg), "arch": str(parse_arch(cfg.arch)), "teacher_sha256": teacher.source["sha256"]}
    done = already_selected(cfg.out, config)
    if done is not None:
        progress(f"{cfg.out}: already selected with these settings")
        return done
    ds = load_dataset(tf.dataset, cfg.data_root, zca=tf.transform.kind == "zca", limit_train=cfg.limit_train)
    check_fits(tf, cfg.teacher, ds.info.name, ds.transform.describe(), ds.info.shape, ds.info.num_classes,
               ds.info.class_names)
    _, h, w = ds.info.shape
    if h % cfg.factor or w % cfg.factor:
        raise ConfigError(f"--factor {cfg.factor} does not divide the {h}x{w} images into equal cells")
    counts = torch.bincount(ds.y_train, minlength=ds.info.num_classes)
    if int(counts.min()) < cfg.ipc * cfg.factor ** 2:
        raise ConfigError(f"the smallest class has {int(counts.min())} training images; IPC {cfg.ipc} with factor "
                          f"{cfg.factor} needs {cfg.ipc * cfg.factor ** 2}")
    net = tf.net.to(device).eval()
    images, sources = [], []
    for k in bar(iterable=range(ds.info.num_classes), desc="rded classes", unit="class", disable=not bars):
        members = torch.nonzero(ds.y_train == k).flatten()
        x, picked = select_class(net, ds.x_train, members, k, cfg, device)
        images.append(x)
        sources.append(members[picked].view(cfg.factor ** 2, cfg.ipc).t().tolist())  # per image: its cells' sources
    classes = torch.arange(ds.info.num_classes).repeat_interleave(cfg.ipc)
    s = SynSet.hard(torch.cat(images), classes, dataset=ds.info.name, num_classes=ds.info.num_classes, method="rded",
                    transform=ds.transform, data={**ds.meta, "class_names": list(ds.info.class_names)}, config=config,
                    provenance={"seed": cfg.seed, "teacher": teacher.source,
                                "cell_sources": [cells for per_class in sources for cells in per_class]})
    s.save(cfg.out)
    if evaluate is not None:
        progress(f"validation accuracy {100 * evaluate(s):.2f}%")
    return s
