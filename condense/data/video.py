"""Video datasets: clips ``[N, T, C, H, W]``, generated or read from frame folders.

Generated (no files beyond Fashion-MNIST's):

``moving-fashion``
    A garment moves across a dark 16 x 16 canvas for 8 frames, wrapping around at the edges (a
    torus, so its position in any one frame is uniform and says nothing about its motion). The 10
    classes are 5 garments (T-shirt/top, Trouser, Sneaker, Bag, Ankle boot) x 2 directions (moving
    right, moving left, 2 pixels a frame). Per clip: a Fashion-MNIST image of that garment (train
    clips from the train images, test clips from the test images, each image used once), resized to
    12 x 12, tinted with a random colour, at a random height and starting column. One frame shows
    which garment it is but not where it goes, so a single-frame classifier cannot beat about half
    of the garment accuracy; a clip shows both (docs/methods/video.md has the measured numbers).
``moving-toy``
    The same construction on ``toy``'s 4 patterns (2 patterns x 2 directions), 8 frames of 3 x 12 x 12,
    for tests: generated in milliseconds, no files.

Read from frame folders (the layouts of the video-distillation paper's code, yuz1wan/video_distillation;
lazy: a clip's frames are decoded only when it is indexed):

``miniucf101`` / ``hmdb51``
    ``<root>/<split csv>`` with columns ``folder_name,label,split`` (split ``train`` or ``test``; label a
    class index or a class name) and frames ``<root>/jpegs_112/<folder_name>/frame%06d.jpg``; 16 frames
    112 x 112. Frame sampling as the paper's: ``skip`` = 4 when a video has at least 64 frames, else
    ``frames // 16``; 16 frames ``start + k * skip`` from a random start.
``kinetics-400``
    ``<root>/train.csv`` and ``<root>/validate.csv`` (keys ``label, youtube_id, time_start, time_end``)
    with frames in ``<root>/<train|val>/<youtube_id>_<start:06d>_<end:06d>/``; 8 frames 64 x 64; a video
    whose folder does not hold exactly 8 frames is skipped, as the reference does.
``ssv2``
    ``<root>/annot_train.json`` / ``annot_val.json`` (lists of ``{"id", "class"}``), ``class_list.json``
    and frames in ``<root>/frame/<id>/``; 8 frames 64 x 64.
The validation split of the reference's K400/SSv2 code is the test set here, as there.

Differences from the reference, on purpose: frames are read in sorted file-name order (the reference
lists K400/SSv2 folders unsorted, so frame order is the file system's); the random start of a clip
comes from a generator keyed by (sampling seed, split, video index), so every run reads the same
clips (the reference draws the train start once per process and a new test start on every read);
no random flip is applied to test clips.
"""
from __future__ import annotations

import colorsys
import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from condense.runtime.errors import DataError
from condense.runtime.rng import generator

from .lazy import IMAGE_SUFFIXES, LazyImages, decode_resized
from .transform import PixelTransform

_TAG = 0x71D  # stream tag of generated clips and clip starts
MOVING_FRAMES, MOVING_CANVAS, MOVING_ITEM, MOVING_SPEED = 8, 16, 12, 2
FASHION_GARMENTS = (0, 1, 7, 8, 9)  # T-shirt/top, Trouser, Sneaker, Bag, Ankle boot
FASHION_NAMES = ("T-shirt/top", "Trouser", "Sneaker", "Bag", "Ankle boot")
DIRECTIONS = ("moving right", "moving left")


def moving_clips(items: torch.Tensor, directions: torch.Tensor, g: torch.Generator, *, frames: int = MOVING_FRAMES,
                 canvas: int = MOVING_CANVAS, item: int = MOVING_ITEM, speed: int = MOVING_SPEED) -> torch.Tensor:
    """Clips ``[M, T, 3, canvas, canvas]`` in [0, 1] of ``items`` ``[M, C, h, w]`` in [0, 1] (C = 1 or 3)
    moving by ``speed`` pixels a frame to the right (direction +1) or left (-1), wrapping around.

    Per clip, drawn from ``g`` in this order: the starting column (uniform on the canvas), the row
    (uniform among those that keep the item inside), and a colour (random hue, saturation 0.5-1,
    value 0.7-1) that multiplies a grey item; a colour item keeps its colours.
    """
    m = items.shape[0]
    small = F.interpolate(items.float(), size=(item, item), mode="bilinear", antialias=True,
                          align_corners=False).clamp(0, 1)
    x0 = torch.randint(canvas, (m,), generator=g)
    y0 = torch.randint(canvas - item + 1, (m,), generator=g)
    hsv = torch.rand(m, 3, generator=g)
    if small.shape[1] == 1:
        tint = torch.tensor([colorsys.hsv_to_rgb(float(h), 0.5 + 0.5 * float(s), 0.7 + 0.3 * float(v))
                             for h, s, v in hsv])
        small = small * tint.view(m, 3, 1, 1)
    base = torch.zeros(m, 3, canvas, canvas)
    rows = y0.view(m, 1) + torch.arange(item)
    for i in range(m):  # place each item at its row; columns move below
        base[i, :, rows[i], :item] = small[i]
    t = torch.arange(frames)
    shift = x0.view(m, 1) + directions.view(m, 1).long() * speed * t  # [M, T]
    cols = (torch.arange(canvas).view(1, 1, canvas) - shift.unsqueeze(-1)) % canvas  # source column of each column
    index = cols.view(m, frames, 1, 1, canvas).expand(m, frames, 3, canvas, canvas)
    return torch.gather(base.unsqueeze(1).expand(m, frames, 3, canvas, canvas), 4, index).contiguous()


def _moving(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, sources: Sequence[int],
            per_class: int, g: torch.Generator, **geometry: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` clips of each (source class, direction) pair from the first images of each source
    class (each image used once): clips [2 · len(sources) · per_class, T, 3, S, S], labels 2 s + d."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    y = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    picks, classes, dirs = [], [], []
    for s, source in enumerate(sources):
        members = torch.nonzero(y == source).flatten()
        if len(members) < 2 * per_class:
            raise DataError(f"class {source} has {len(members)} images; {2 * per_class} are needed")
        for d in range(2):
            picks.append(members[d * per_class:(d + 1) * per_class])
            classes += [2 * s + d] * per_class
            dirs += [1 if d == 0 else -1] * per_class
    idx = torch.cat(picks)
    return moving_clips(x[idx], torch.tensor(dirs), g, **geometry), torch.tensor(classes)


def make_moving_fashion(x_train, y_train, x_test, y_test, *, train_per_class: int = 500, test_per_class: int = 100):
    """``moving-fashion`` from Fashion-MNIST's raw splits (images [N, 1, 28, 28] in [0, 1] or uint8)."""
    xs, ys = _moving(x_train, y_train, FASHION_GARMENTS, train_per_class, generator(0, _TAG, 0))
    xt, yt = _moving(x_test, y_test, FASHION_GARMENTS, test_per_class, generator(0, _TAG, 1))
    return xs, ys, xt, yt, moving_names(FASHION_NAMES)


def make_moving_toy(seed: int = 0):
    """``moving-toy``: 2 of ``toy``'s patterns x 2 directions, 24 train and 12 test clips per class."""
    from .toy import make_toy

    x, y, xt, yt = make_toy(seed)
    xs, ys = _moving(x, y, (0, 1), 24, generator(seed, _TAG, 2), canvas=12, item=8)
    xt, yt = _moving(xt, yt, (0, 1), 12, generator(seed, _TAG, 3), canvas=12, item=8)
    return xs, ys, xt, yt, moving_names(("pattern-0", "pattern-1"))


def moving_names(sources: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{s} {d}" for s in sources for d in DIRECTIONS)


# ------------------------------------------------------------------------------------- frame folders

def sorted_frames(folder: Path) -> list[Path]:
    """The image files of a video's folder in file-name order (frame000001.jpg, ... or 00.jpg, ...)."""
    try:
        return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)
    except OSError as e:
        raise DataError(f"cannot list the frames of {folder} ({e})") from None


def clip_frames(count: int, frames: int, stride: int, g: torch.Generator | None) -> list[int]:
    """Indices of the ``frames`` frames read from a video of ``count`` frames: the paper's sampling,
    every ``skip``-th frame from a random start, with ``skip = stride`` when the video is long enough
    (``count >= frames * stride``), else ``count // frames``; ``g`` None: the first possible start."""
    if count < frames:
        raise DataError(f"a video of {count} frames cannot give {frames}")
    skip = stride if count >= frames * stride else max(1, count // frames)
    last_start = count - (frames - 1) * skip  # starts 0 .. last_start - 1 fit
    start = 0 if g is None else int(torch.randint(last_start, (1,), generator=g))
    return [start + k * skip for k in range(frames)]


class LazyClips(LazyImages):
    """Clips ``[N, T, 3, size, size]`` read from frame folders when indexed (like :class:`LazyImages`).

    ``videos[i]`` is the folder of video i; its ``frames`` frames are chosen by :func:`clip_frames`
    from a generator keyed by ``(seed, split, i)`` (``seed`` None: the first possible start), and
    every frame is decoded, its shorter side resized to ``size`` and centre-cropped.
    """

    def __init__(self, videos: Sequence[Path], frames: int, stride: int, size: int, name: str, *,
                 seed: int | None = 0, split: int = 0, keys: Sequence[int] | None = None,
                 transform: PixelTransform | None = None, threads: int = 8):
        super().__init__(list(videos), size, size, name, transform, threads)
        self.frames, self.stride, self.seed, self.split = int(frames), int(stride), seed, int(split)
        self.keys = list(range(len(self.files))) if keys is None else list(keys)

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (len(self.files), self.frames, 3, self.size, self.size)

    def _like(self, files, keys, transform) -> "LazyClips":
        return LazyClips(files, self.frames, self.stride, self.size, self.name, seed=self.seed, split=self.split,
                         keys=keys, transform=transform, threads=self.threads)

    def subset(self, indices) -> "LazyClips":
        idx = torch.as_tensor(indices, dtype=torch.int64).tolist()
        return self._like([self.files[i] for i in idx], [self.keys[i] for i in idx], self.transform)

    def normalized(self, transform: PixelTransform) -> "LazyClips":
        return self._like(self.files, self.keys, transform)

    def read_item(self, i: int) -> np.ndarray:
        """Video i's clip as uint8 [T, 3, size, size]."""
        files = sorted_frames(self.files[i])
        g = None if self.seed is None else generator(self.seed, _TAG, self.split, self.keys[i])
        return np.stack([decode_resized(files[k], self.size, self.size)
                         for k in clip_frames(len(files), self.frames, self.stride, g)])


class LazyFrames(LazyClips):
    """One frame of every video, ``[N, 3, size, size]``: the frame drawn from the generator keyed by
    ``(seed, split, video index)`` among all of the video's frames (the paper's single-frame datasets
    that the static memory is learned on)."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), 3, self.size, self.size)

    def _like(self, files, keys, transform) -> "LazyFrames":
        return LazyFrames(files, 1, 1, self.size, self.name, seed=self.seed, split=self.split, keys=keys,
                          transform=transform, threads=self.threads)

    def read_item(self, i: int) -> np.ndarray:
        return super().read_item(i)[0]


def single_frames(clips, split: int):
    """One frame of every clip: ``[N, T, C, H, W]`` -> ``[N, C, H, W]``, the frame of clip i drawn from
    a generator keyed by (split, i); frame folders give :class:`LazyFrames`."""
    if isinstance(clips, LazyClips):
        return LazyFrames(clips.files, 1, 1, clips.size, clips.name, seed=0 if clips.seed is None else clips.seed,
                          split=split + 2, keys=clips.keys, threads=clips.threads)
    x = torch.as_tensor(clips)
    pick = torch.randint(x.shape[1], (x.shape[0],), generator=generator(0, _TAG, 4, split))
    return x[torch.arange(x.shape[0]), pick]


def _class_index(values: Sequence[str], names: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels as given (integers) or class names mapped to their sorted order."""
    try:
        labels = np.asarray([int(v) for v in values], dtype=np.int64)
        return labels, tuple(names or ())
    except ValueError:
        known = sorted(set(values)) if not names else list(names)
        lookup = {n: k for k, n in enumerate(known)}
        missing = sorted(set(values) - set(lookup))
        if missing:
            raise DataError(f"labels {missing[:3]} are not among the {len(known)} class names") from None
        return np.asarray([lookup[v] for v in values], dtype=np.int64), tuple(known)


def read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file with a header naming at least ``columns``; one DataError line otherwise."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path} ({e})") from None
    if not rows or not set(columns) <= set(rows[0]):
        raise DataError(f"{path} needs the columns {', '.join(columns)}")
    return rows


def read_split_csv(root: Path, csv_name: str, frames_dir: str, name: str, *, frames: int, stride: int, size: int):
    """UCF101/HMDB51 as the paper's code reads them: ``root/csv_name`` (``folder_name,label,split``)
    and one folder of frames per video under ``root/frames_dir``."""
    path = root / csv_name
    rows = read_csv(path, ("folder_name", "label", "split"))
    labels, names = _class_index([r["label"] for r in rows], None)
    out = []
    for k, split in enumerate(("train", "test")):
        keep = [i for i, r in enumerate(rows) if r["split"].strip() == split]
        if not keep:
            raise DataError(f"{path} lists no '{split}' videos")
        videos = [root / frames_dir / rows[i]["folder_name"] for i in keep]
        out += [LazyClips(videos, frames, stride, size, name, split=k), labels[keep]]
    return (*out, names) if names else tuple(out)


def read_kinetics(root: Path, *, frames: int = 8, size: int = 64, name: str = "kinetics-400"):
    """Kinetics-400 frame folders as the paper's code reads them (module docstring)."""
    out, names = [], None
    for k, (csv_name, split) in enumerate((("train.csv", "train"), ("validate.csv", "val"))):
        rows = read_csv(root / csv_name, ("label", "youtube_id", "time_start", "time_end"))
        names = names or tuple(sorted({r["label"] for r in rows}))
        videos, labels = [], []
        for r in rows:
            try:
                folder = root / split / f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}"
            except ValueError:
                raise DataError(f"{root / csv_name}: time_start and time_end must be integers, got "
                                f"{r['time_start']!r}, {r['time_end']!r}") from None
            if folder.is_dir() and len(sorted_frames(folder)) == frames:
                videos.append(folder)
                labels.append(r["label"])
        if not videos:
            raise DataError(f"no {split} video of {root} has a folder of {frames} frames")
        out += [LazyClips(videos, frames, 1, size, name, split=k), _class_index(labels, names)[0]]
    return (*out, names)


def read_ssv2(root: Path, *, frames: int = 8, size: int = 64, name: str = "ssv2"):
    """Something-Something V2 frame folders as the paper's code reads them (module docstring)."""
    def load(file: str):
        try:
            return json.loads((root / file).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {root / file} ({e})") from None

    names = load("class_list.json")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{root / 'class_list.json'} must be a list of class names")
    out = []
    for k, file in enumerate(("annot_train.json", "annot_val.json")):
        items = load(file)
        if not isinstance(items, list) or not all(isinstance(i, dict) and {"id", "class"} <= set(i) for i in items):
            raise DataError(f"{root / file} must be a list of {{\"id\", \"class\"}} entries")
        videos = [root / "frame" / str(i["id"]) for i in items]
        out += [LazyClips(videos, frames, 1, size, name, split=k), _class_index([str(i["class"]) for i in items],
                                                                                names)[0]]
    return (*out, tuple(names))


def find_file(root: Path, *names: str) -> bool:
    return all((root / n).is_file() for n in names)

