"""Images read from their files when indexed: datasets too large to hold in memory (ImageNet-1k).

A :class:`LazyImages` stands where a dataset's image tensor stands ([N, C, H, W]): indexing
it with an int, a slice, a list or an index tensor decodes those files (PIL, in threads),
resizes the shorter side to ``resize`` and centre-crops ``size`` x ``size`` (torchvision's
Resize(256) + CenterCrop(224) evaluation transform), and returns float32 images in
network space. So code that slices test batches (``accuracy``), draws a random subset
(the random-real baseline) or reads a class's candidates (rded) works unchanged, and
nothing reads more files than it uses. Code that needs a whole split in memory (training
on the full data, dm's real batches) gets one line saying so instead (:meth:`to`).
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from condense.runtime.errors import DataError

from .transform import PixelTransform

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
IMAGENET_FOLDERS = ("imagenet-1k", "imagenet", "ILSVRC2012")  # names the ImageNet folder goes by under a data root


def open_image(path: Path, max_pixels: int | None = None) -> Any:
    """``PIL.Image.open(path)`` with its size checked before any pixel is decoded: an image
    declaring more than ``max_pixels`` (default PIL's ``Image.MAX_IMAGE_PIXELS``, ~89M) is a
    DataError line naming both counts, not a decompression bomb decoded or PIL's warning.
    Other decoding failures are the caller's to catch (OSError, UnidentifiedImageError)."""
    from PIL import Image

    bound = int(max_pixels if max_pixels is not None else (Image.MAX_IMAGE_PIXELS or 0)) or None
    try:
        # PIL only warns between 1x and 2x its limit (and raises past 2x); a warning is neither
        # one line nor a refusal, so it becomes an exception here, for this call only.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"cannot decode {path}: {e}; refusing a decompression bomb, replace the file") from None
    w, h = im.size
    if bound is not None and w * h > bound:
        im.close()
        raise DataError(f"{path} declares {w}x{h} = {w * h:,} pixels, above the bound of {bound:,}; "
                        "refusing a decompression bomb, replace the file")
    return im


def decode_resized(path: Path, size: int, resize: int) -> np.ndarray:
    """[3, size, size] uint8: the image with its shorter side resized to ``resize`` (bilinear,
    antialiased), centre-cropped. DataError for an unreadable file or one declaring more
    pixels than :func:`open_image` allows."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_image(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            a = np.array(im.crop((left, top, left + size, top + size)))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot decode {path} ({e}); replace the file") from None
    return a.transpose(2, 0, 1)


class LazyImages:
    """[N, 3, size, size] images decoded from ``files`` on demand (see the module docstring)."""

    def __init__(self, files: Sequence[Path], size: int, resize: int, name: str,
                 transform: PixelTransform | None = None, threads: int = 8):
        self.files = list(files)
        self.size, self.resize, self.name, self.threads = int(size), int(resize), name, threads
        self.transform = transform or PixelTransform()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), 3, self.size, self.size)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    dtype = torch.float32

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices) -> "LazyImages":
        """The same images at ``indices``, still lazy."""
        idx = torch.as_tensor(indices, dtype=torch.int64).tolist()
        return LazyImages([self.files[i] for i in idx], self.size, self.resize, self.name, self.transform, self.threads)

    def normalized(self, transform: PixelTransform) -> "LazyImages":
        """These images in ``transform``'s network space."""
        return LazyImages(self.files, self.size, self.resize, self.name, transform, self.threads)

    def read_item(self, i: int) -> np.ndarray:
        """Item i as uint8 ``shape[1:]``: here an image, decoded, resized and centre-cropped."""
        return decode_resized(self.files[i], self.size, self.resize)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            idx = list(range(*key.indices(len(self.files))))
        elif isinstance(key, int):
            return self[[key]][0]
        else:
            idx = torch.as_tensor(key, dtype=torch.int64).cpu().reshape(-1).tolist()
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for k, a in enumerate(pool.map(self.read_item, idx)):
                out[k] = a
        return self.transform.from_pixels(torch.from_numpy(out).float().div_(255.0))

    def to(self, *args, **kwargs):  # clips: see to_device
        raise DataError(f"{self.name} is read from its files as needed ({len(self.files):,} images); this step "
                        "needs the whole split in memory (full-data training, matching on real batches), which "
                        "condense does not do for it (sre2l, rded, condense labels and condense eval do not need it)")

    def clone(self) -> "LazyImages":
        return self


def to_device(x, device):
    """``x.to(device)``, except for clips read from their files (a video split of thousands of clips, tens of
    GB as floats): those stay lazy, and whoever indexes them gets each batch decoded on the CPU, which it moves.
    Images read from their files (ImageNet-1k) are refused by ``.to`` as before."""
    return x if isinstance(x, LazyImages) and x.ndim == 5 else x.to(device)


def image_folder(root: Path, wnids: Sequence[str]) -> tuple[list[Path], np.ndarray]:
    """(files, labels) of ``root/<wnid>/*.JPEG`` for each wnid in order (label = its index)."""
    files, labels = [], []
    for k, w in enumerate(wnids):
        d = root / w
        if not d.is_dir():
            raise DataError(f"{d} is missing: {root} needs one folder per class")
        names = sorted(p.name for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += [d / n for n in names]
        labels += [k] * len(names)
    return files, np.asarray(labels, dtype=np.int64)


def find_image_folder(root: Path, names: Sequence[str] = ()) -> Path | None:
    """The folder holding ``train/`` and ``val/`` (one sub-folder per class each): ``root`` or
    ``root/<name>`` for one of ``names``."""
    for d in (root, *(root / n for n in names)):
        if (d / "train").is_dir() and (d / "val").is_dir():
            return d
    return None


def find_imagenet(root: Path) -> Path | None:
    return find_image_folder(root, IMAGENET_FOLDERS)


def imagenet_class_names(d: Path, wnids: Sequence[str]) -> list[str]:
    """First name of each wnid from ``LOC_synset_mapping.txt`` (Kaggle's) if present, else the wnid."""
    names = {}
    mapping = d / "LOC_synset_mapping.txt"
    if mapping.is_file():
        for line in mapping.read_text().splitlines():
            w, _, rest = line.partition(" ")
            names[w] = rest.split(",")[0].strip()
    return [names.get(w) or w for w in wnids]


def read_image_folder(folder: Path, name: str, size: int, resize: int, names: Sequence[str] = ()):
    """A dataset in the ImageFolder layout (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``) ->
    (LazyImages train, labels, LazyImages val, labels, class names). Classes are the train
    folder's sub-folders in sorted order (torchvision's ImageFolder indices, so for ImageNet its
    pretrained teachers line up); the val folder is the test split."""
    d = find_image_folder(folder, names)
    if d is None:
        raise DataError(f"no {name} folder (train/<class>/, val/<class>/) at {folder}")
    wnids = sorted(p.name for p in (d / "train").iterdir() if p.is_dir())
    x_train, y_train = image_folder(d / "train", wnids)
    x_val, y_val = image_folder(d / "val", wnids)
    return (LazyImages(x_train, size, resize, name), y_train, LazyImages(x_val, size, resize, name), y_val,
            imagenet_class_names(d, wnids))


def read_imagenet(folder: Path, size: int = 224, resize: int = 256):
    """ImageNet-1k (ILSVRC2012) in the ImageFolder layout, the val images sorted into wnid folders."""
    return read_image_folder(folder, "imagenet-1k", size, resize, IMAGENET_FOLDERS)
