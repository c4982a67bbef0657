"""The reference repositories' on-disk layouts of a distilled set, read and written.

None of them records the dataset or the pixel transform, so an import is told both; every tensor
is checked against the dataset before a set is made of it. The layouts (docs/FORMATS.md):

``mtt``  (MTT / FTD / DATM ``distill.py``) a folder of bare tensors, one per file:
         ``images_best.pt`` float [N, C, H, W], ``labels_best.pt`` int64 [N] (DATM: float [N, K]
         learned logits), ``lr_best.pt`` (DATM only) a 0-d or 1-element tensor or a float;
         per-iteration snapshots ``images_<it>.pt`` / ``labels_<it>.pt`` / ``lr_<it>.pt``.
``dm``   (DC / DSA / DM ``main.py`` / ``main_DM.py``) one file holding
         ``{'data': [[images, labels], ...one per experiment], 'accs_all_exps': {...}}``.
``ddranking`` (DD-Ranking's README) a folder with ``images.pt``, ``labels.pt`` (int64 [N] or
         float [N, K] soft labels) and, optionally, ``lr.pt``.
``dict`` condense's earlier single file ``{'image_syn', 'label_syn', 'syn_lr'}``.

Float labels are logits at temperature 1 in every layout (DATM learns logits; DD-Ranking's soft
labels are teacher outputs), so they import as ``LabelSpec(kind="logits", loss="kl")``, the kind
``synth tm --labels learned`` stores.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .runtime.errors import ConfigError, FormatError
from .runtime.files import check_torch_file, ensure_folder, torch_bytes, write_files
from .data.transform import PixelTransform
from .synset import LabelSpec, SynSet, file_sha256

LAYOUTS = ("mtt", "dm", "ddranking", "dict")
FOLDER_LAYOUTS = ("mtt", "ddranking")


@dataclass
class Raw:
    """What a layout holds, unchecked: images [N, C, H, W], labels [N] or [N, K], lr or None,
    and the files read (for the provenance)."""

    images: Any
    labels: Any
    lr: Any
    files: list[Path]


# --- reading -----------------------------------------------------------------------------------

def load_pt(path: Path, max_bytes: int | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` behind condense's checks: a regular file, no
    compressed or forged archive, at most ``max_bytes``; anything but tensors and plain
    containers is refused in one line naming the file (nothing is unpickled)."""
    path = check_torch_file(path, "reference-layout .pt")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise FormatError(f"{path}: {path.stat().st_size} bytes is more than a set of this dataset can hold "
                          f"({max_bytes} at most); refused")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError... for unsafe or corrupt files
        raise FormatError(f"{path}: not a weights-only tensor file ({type(e).__name__}); refusing to unpickle it") from None


def tag_name(stem: str, iteration: int | None) -> str:
    """MTT's file name for ``stem`` (images | labels | lr): ``<stem>_best.pt`` or ``<stem>_<it>.pt``."""
    return f"{stem}_{'best' if iteration is None else iteration}.pt"


def detect(src: Path) -> str:
    """The layout of ``src`` from its names alone (a .pt file's content decides dm vs dict later)."""
    if src.is_dir():
        if (src / "images_best.pt").exists() or any(src.glob("images_[0-9]*.pt")):
            return "mtt"
        if (src / "images.pt").exists():
            return "ddranking"
        hint = " (DATM writes into its 'Normal' subfolder: name that)" if (src / "Normal").is_dir() else ""
        raise FormatError(f"{src}: neither images_best.pt (MTT/FTD/DATM) nor images.pt (DD-Ranking) is there{hint}")
    if src.suffix == ".pt":
        return "pt"
    raise ConfigError(f"convert goes .h5 -> .pt or a layout folder, or back, not {src.suffix or '?'} "
                      f"({src}); name the layout with --from/--to")


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FormatError(f"{path}: missing ({what})")
    return path


def folder_names(layout: str, iteration: int | None = None) -> tuple[str, str, str]:
    """The (images, labels, lr) file names of a folder layout: MTT's ``<stem>_best.pt`` or
    ``<stem>_<it>.pt`` (the iteration), DD-Ranking's ``images.pt``, ``labels.pt``, ``lr.pt``."""
    if layout == "mtt":
        return tag_name("images", iteration), tag_name("labels", iteration), tag_name("lr", iteration)
    return "images.pt", "labels.pt", "lr.pt"


def read_folder(folder: Path, names: tuple[str, str, str], max_bytes: int | None) -> Raw:
    """A folder layout's images, labels and, when its file is there, lr (``names``: :func:`folder_names`)."""
    files = [_need(folder / names[0], "the images"),
             _need(folder / names[1], "the labels file that goes with the images")]
    if (folder / names[2]).exists():
        files.append(folder / names[2])
    tensors = [load_pt(f, max_bytes) for f in files]
    return Raw(tensors[0], tensors[1], tensors[2] if len(tensors) > 2 else None, files)


def from_dm(obj: Any, path: Path, experiment: int) -> Raw:
    """Experiment ``experiment`` of DC/DSA/DM's ``{'data': [[images, labels], ...], ...}``."""
    data = obj.get("data")
    if not isinstance(data, (list, tuple)) or not data:
        raise FormatError(f"{path}: 'data' must be a non-empty list of [images, labels] pairs")
    if not 0 <= experiment < len(data):
        raise ConfigError(f"--experiment {experiment} is out of range: {path} holds {len(data)} experiment(s) "
                          f"(0..{len(data) - 1})")
    pair = data[experiment]
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise FormatError(f"{path}: data[{experiment}] must be an [images, labels] pair")
    return Raw(pair[0], pair[1], None, [path])


def from_dict(obj: Any, path: Path) -> Raw:
    """condense's earlier ``{'image_syn', 'label_syn', 'syn_lr'}`` (or ``images``/``labels``/``lr``)."""
    images = obj.get("image_syn", obj.get("images"))
    labels = obj.get("label_syn", obj.get("labels"))
    if images is None or labels is None:
        raise FormatError(f"{path}: needs tensors 'image_syn' and 'label_syn' (found keys {sorted(map(str, obj))})")
    return Raw(images, labels, obj.get("syn_lr", obj.get("lr")), [path])


def read(src: Path, layout: str | None, *, iteration: int | None = None, experiment: int | None = None,
         max_bytes: int | None) -> tuple[str, Raw]:
    """Read ``src`` in ``layout`` (detected when None); returns the layout and what it holds."""
    found = detect(src)
    layout = layout or (None if found == "pt" else found)
    if layout in FOLDER_LAYOUTS and not src.is_dir():
        raise ConfigError(f"--from {layout} reads a folder, and {src} is not one")
    if layout in ("dm", "dict") and src.is_dir():
        raise ConfigError(f"--from {layout} reads one .pt file, and {src} is a folder")
    if iteration is not None and layout != "mtt":
        raise ConfigError("--iteration has no effect here: it picks MTT's images_<N>.pt (--from mtt)")
    if experiment is not None and layout in FOLDER_LAYOUTS:
        raise ConfigError("--experiment has no effect here: it picks one of DC/DSA/DM's experiments (--from dm)")
    if layout in FOLDER_LAYOUTS:
        return layout, read_folder(src, folder_names(layout, iteration), max_bytes)
    obj = load_pt(src, max_bytes)
    if not isinstance(obj, dict):
        raise FormatError(f"{src}: expected a dict ('data' of DC/DSA/DM, or 'image_syn'/'label_syn'), "
                          f"got {type(obj).__name__}")
    layout = layout or ("dm" if "data" in obj else "dict")
    if experiment is not None and layout != "dm":
        raise ConfigError("--experiment has no effect here: it picks one of DC/DSA/DM's experiments (--from dm)")
    if layout == "dm":
        return layout, from_dm(obj, src, experiment or 0)
    return layout, from_dict(obj, src)


def _tensor(x: Any, path: Path, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise FormatError(f"{path}: {what} must be a tensor, got {type(x).__name__}")
    return x


def build_set(raw: Raw, *, dataset: str, num_classes: int, image_shape: tuple[int, int, int],
              transform: Any, data: dict[str, Any] | None = None, method: str = "imported") -> SynSet:
    """A :class:`SynSet` of ``raw`` after checking it against the dataset: images float
    [N, C, H, W] of its shape; labels int [N] in [0, K) or float [N, K] logits; lr a positive
    number. Images are taken class by class, as the reference code stores them, when labels are soft."""
    where = raw.files[0]
    images = _tensor(raw.images, where, "the images")
    if not images.is_floating_point() or images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape) \
            or images.shape[0] == 0:
        raise FormatError(f"{where}: images {images.dtype} {tuple(images.shape)} do not fit {dataset} "
                          f"(float [N, {', '.join(map(str, image_shape))}])")
    images = images.detach().float().contiguous()
    n = int(images.shape[0])
    lwhere = raw.files[1] if len(raw.files) > 1 else where
    labels = _tensor(raw.labels, lwhere, "the labels")
    if labels.is_floating_point():
        if tuple(labels.shape) != (n, num_classes):
            raise FormatError(f"{lwhere}: soft labels must be float [{n}, {num_classes}], got {tuple(labels.shape)}")
        if n % num_classes:
            raise FormatError(f"{lwhere}: {n} images cannot be {num_classes} equal classes")
        # The reference repositories store images class by class (c * ipc ... (c + 1) * ipc - 1).
        classes = torch.arange(num_classes).repeat_interleave(n // num_classes)
        s = SynSet(images=images, classes=classes, labels=labels.detach().float().contiguous(), dataset=dataset,
                   num_classes=num_classes, method=method, label_spec=LabelSpec(kind="logits", loss="kl"),
                   transform=transform)
    else:
        if labels.dtype == torch.bool or labels.is_complex() or tuple(labels.shape) != (n,):
            raise FormatError(f"{lwhere}: hard labels must be int64 [{n}], got {labels.dtype} {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise FormatError(f"{lwhere}: labels {int(labels.min())}..{int(labels.max())} are outside "
                              f"{dataset}'s classes 0..{num_classes - 1}")
        s = SynSet.hard(images, labels.long(), dataset=dataset, num_classes=num_classes, method=method,
                        transform=transform)
    if raw.lr is not None:
        s.lr = _lr(raw.lr, raw.files[-1])
    s.data = dict(data or {})
    if len(raw.files) == 1:
        s.provenance = {"imported_from": str(raw.files[0]), "sha256": file_sha256(raw.files[0])}
    else:  # a layout folder: every file it was read from, by name
        s.provenance = {"imported_from": str(raw.files[0].parent),
                        "sha256": {f.name: file_sha256(f) for f in raw.files}}
    try:
        s.validate()
    except FormatError as e:
        raise FormatError(f"{where}: {e}") from None
    return s


def _lr(x: Any, path: Path) -> float:
    """A learned lr: a 0-d or 1-element tensor, or a number (some forks save ``syn_lr.item()``)."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_complex():
        value = float(x.reshape(-1)[0])
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        value = float(x)
    else:
        raise FormatError(f"{path}: the lr must be one number, got {type(x).__name__}"
                          f"{' ' + str(tuple(x.shape)) if isinstance(x, torch.Tensor) else ''}")
    if not (value > 0 and math.isfinite(value)):
        raise FormatError(f"{path}: the lr must be a positive number, got {value}")
    return value


# --- writing -----------------------------------------------------------------------------------

def export_labels(s: SynSet, layout: str) -> torch.Tensor:
    """The set's labels as a layout holds them: int64 [N], or float [N, K] logits at temperature 1
    (logits are divided by the set's temperature; probabilities become their logs, whose softmax
    is the same distribution). Per-view and regression labels have no place in a layout: refused."""
    spec = s.label_spec
    if spec.view_mode == "per-view":
        raise ConfigError(f"this set's labels are per view ([V, N, K]); the {layout} layout holds one label per "
                          "image: relabel it with static labels first (condense labels ... --views static)")
    if spec.kind == "hard":
        return s.labels.detach().cpu().long().contiguous()
    if spec.kind == "logits":
        return (s.labels.detach().cpu().float() / spec.temperature).contiguous()
    if spec.kind == "probabilities":
        return s.labels.detach().cpu().float().clamp_min(1e-30).log().contiguous()
    raise ConfigError(f"{spec.kind} labels have no place in the {layout} layout (it holds classes or class scores)")


def write(s: SynSet, dst: Path, layout: str) -> list[Path]:
    """Write ``s`` to ``dst`` in ``layout``; returns the files written. Images stay in the space
    they were optimised in (normalised or ZCA-whitened), as the reference code expects."""
    images = s.images.detach().cpu().float().contiguous()
    labels = export_labels(s, layout)
    lr = None if s.lr is None else torch.tensor(float(s.lr))
    if layout == "dm":
        files = {dst: {"data": [[images, labels]], "accs_all_exps": {}}}
    elif layout == "dict":
        files = {dst: {"image_syn": images, "label_syn": labels, **({} if lr is None else {"syn_lr": lr})}}
    else:
        names = folder_names(layout)
        if dst.is_symlink():
            raise FormatError(f"{dst}: a symbolic link (refusing to write through it)")
        if lr is None and (dst / names[2]).exists():
            # Left there, an earlier lr would be read back as this set's.
            raise ConfigError(f"{dst / names[2]} is from another set (this one has no learned lr): "
                              "remove it or choose another folder")
        files = {dst / names[0]: images, dst / names[1]: labels, **({} if lr is None else {dst / names[2]: lr})}
    data = {path: torch_bytes(obj) for path, obj in files.items()}  # before any byte is written
    if layout in FOLDER_LAYOUTS:
        ensure_folder(dst, "the layout folder")
    write_files(data)
    return list(data)


# --- condense's earlier one-file API ------------------------------------------------------------

def export_pt(s: SynSet, path: str | os.PathLike) -> Path:
    """Write condense's earlier one-file layout ``{"image_syn", "label_syn", "syn_lr"}``
    (:func:`write` writes the reference repositories' real ones)."""
    write(s, Path(path), "dict")
    return Path(path)


def import_pt(path: str | os.PathLike, *, dataset: str, num_classes: int, image_shape: tuple[int, int, int],
              transform: PixelTransform, data: dict[str, Any] | None = None) -> SynSet:
    """Read a one-file ``.pt`` set (never unpickling arbitrary objects): the dict
    ``{image_syn, label_syn[, syn_lr]}`` (or ``images``/``labels``/``lr``), or DC/DSA/DM's
    ``{'data': [[images, labels], ...]}`` (its first experiment). Hard labels are int64 [N];
    float [N, K] labels are soft logits (DATM's learned labels). The caller supplies the dataset
    and its pixel transform, which .pt files do not carry."""
    _, raw = read(Path(path), None, max_bytes=None)
    return build_set(raw, dataset=dataset, num_classes=num_classes, image_shape=image_shape,
                     transform=transform, data=data)
