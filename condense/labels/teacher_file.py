"""The teacher file: one trained network, weights only, with what it was trained on.

Decoupled methods (SRe2L, CDA, RDED) and relabelling need a *trained* network: its
weights and BatchNorm running statistics (the statistics SRe2L's recovery matches), the
pixel transform its inputs live in, and the order of its output classes. A teacher file
is HDF5 (docs/FORMATS.md), read without unpickling anything:

    /        attrs: format="condense.teacher", version, arch (canonical spec), dataset,
                    num_classes, image_shape, class_names (JSON list), accuracy
                    (test, percent), val_accuracy (percent or -1), config (JSON: how it
                    was trained), data (JSON: split facts), condense_version, created
    /state/  one dataset per state_dict entry (parameters and buffers), in the attr
             ``names`` order
    /transform/  the pixel transform (same layout as a synthetic-set file)

A self-supervised teacher (``condense teacher --ssl``) adds the attr ``ssl`` (JSON: method,
representation_dim, projector sizes, ...) and ``/projector/`` (its state, as ``/state/``). Its
representation is the network's ``embed``; its head is the linear probe that measured it, so
``accuracy`` is the probe's and the file is still an ordinary classifier.

Writers go through a temporary file and an atomic rename.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.data.transform import PixelTransform
from condense.runtime.errors import FormatError
from condense.runtime.files import attr, dataset, json_attr, read_h5, write_h5
from condense.nets import build_net
from condense.version import __version__

FORMAT_NAME = "condense.teacher"
FORMAT_VERSION = 1


@dataclass
class TeacherFile:
    """A teacher file in memory: the network (eval mode) and its record."""

    net: nn.Module
    arch: str
    dataset: str
    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    transform: PixelTransform
    accuracy: float  # test accuracy, percent (nan: not measured)
    val_accuracy: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    ssl: dict[str, Any] | None = None  # a self-supervised teacher's record (module docstring)
    projector: nn.Module | None = None  # its projector (Barlow Twins')

    @property
    def representation_dim(self) -> int:
        """D of the representation ``net.embed`` gives: [B, C, H, W] -> [B, D]."""
        return int(self.net.embed_dim)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically to ``path`` (a kill never leaves a half-written teacher)."""
        return write_h5(path, self._write)

    def _write(self, f: Any) -> None:
        from condense.synset import write_transform

        state = self.net.state_dict()
        f.attrs.update({
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "arch": self.arch, "dataset": self.dataset,
            "num_classes": self.num_classes, "image_shape": list(self.image_shape),
            "class_names": json.dumps(list(self.class_names)), "accuracy": float(self.accuracy),
            "val_accuracy": -1.0 if self.val_accuracy is None else float(self.val_accuracy),
            "config": json.dumps(self.config, sort_keys=True, default=str),
            "data": json.dumps(self.data, sort_keys=True, default=str), "condense_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
        _write_state(f.create_group("state"), state)
        write_transform(f.create_group("transform"), self.transform)
        if self.ssl is not None:
            f.attrs["ssl"] = json.dumps(self.ssl, sort_keys=True)
            _write_state(f.create_group("projector"), self.projector.state_dict())

    def summary(self, path: str | os.PathLike) -> str:
        """What the file at ``path`` records, in four lines (``condense teacher --info``)."""
        names = ", ".join(self.class_names[:10]) + (f", ... ({len(self.class_names)})"
                                                    if len(self.class_names) > 10 else "") \
            if self.class_names else "(not recorded)"
        val = "-" if self.val_accuracy is None else f"{self.val_accuracy:.2f} %"
        test = "not measured" if self.accuracy != self.accuracy else f"{self.accuracy:.2f} %"
        params = sum(p.numel() for p in self.net.parameters())
        kind = "" if self.ssl is None else f" (self-supervised, {self.ssl.get('method')}: representation " \
                                                 f"{self.representation_dim}-d, projector {self.ssl.get('projector')})"
        probe = "" if self.ssl is None else "linear-probe "
        if self.ssl is not None and isinstance(self.ssl.get("untrained_probe"), dict):
            u = self.ssl["untrained_probe"]
            val += f" (the untrained network: test {u.get('test', float('nan')):.2f} %)"
        return "\n".join([f"{path}: teacher {self.arch} ({params:,} parameters) on {self.dataset}{kind}",
                          f"  {probe}accuracy: test {test}, validation {val}",
                          f"  images {list(self.image_shape)}, transform {self.transform.kind}, "
                          f"{self.num_classes} classes: {names}",
                          f"  trained: {self.config.get('protocol', {})}"])


def load_teacher_file(path: str | os.PathLike) -> TeacherFile:
    """Read a teacher file; one-line FormatError for a missing, foreign, newer or corrupt file."""
    return read_h5(path, _read, "teacher")


# Bounds on a header that decides how big a network is built before any weight is read.
MAX_CLASSES = 100_000
MAX_PIXELS = 4096 * 4096


def _read(f: Any) -> TeacherFile:
    from condense.synset import read_transform

    fmt = attr(f, "format", str, default=None)
    if fmt != FORMAT_NAME:
        raise FormatError(f"not a condense teacher (format attribute {fmt!r})")
    version = attr(f, "version", int)
    if version < 1 or version > FORMAT_VERSION:
        raise FormatError(f"teacher format version {version} is not supported (this condense reads 1..{FORMAT_VERSION})")
    image_shape = attr(f, "image_shape", list)
    k = attr(f, "num_classes", int)
    if len(image_shape) != 3 or not (1 <= image_shape[0] <= 4 and 1 <= image_shape[1] * image_shape[2] <= MAX_PIXELS
                                     and min(image_shape) >= 1) or not 1 <= k <= MAX_CLASSES:
        raise FormatError(f"header declares images {image_shape} and {k} classes (out of range)")
    c, h, w = (int(v) for v in image_shape)
    arch = attr(f, "arch", str)
    # The network's shapes, on the meta device: a forged header costs no memory before the
    # stored weights are checked against it (their bytes are in the file: see open_h5).
    with torch.device("meta"):
        expected = build_net(arch, c, k, (h, w)).state_dict()
    net = build_net(arch, c, k, (h, w))
    net.load_state_dict(_read_state(f, "state", expected, f"a {arch} network"))
    ssl, head = None, None
    if "ssl" in f.attrs:
        from .ssl import SSL_METHODS, projector

        ssl = json_attr(f, "ssl", dict)
        sizes = ssl.get("projector")
        if ssl.get("method") not in SSL_METHODS or not isinstance(sizes, list) or not 1 <= len(sizes) <= 8 or \
                not all(isinstance(v, int) and 1 <= v <= 65536 for v in sizes):
            raise FormatError(f"its self-supervised record is malformed (method {ssl.get('method')!r}, "
                              f"projector {str(sizes)[:40]})")
        with torch.device("meta"):
            want = projector(net.embed_dim, sizes).state_dict()
        head = projector(net.embed_dim, sizes)
        head.load_state_dict(_read_state(f, "projector", want, f"a projector {sizes}"))
        head.eval()
    val = attr(f, "val_accuracy", float)
    return TeacherFile(net=net.eval(), arch=arch, dataset=attr(f, "dataset", str), num_classes=k, image_shape=(c, h, w),
                       class_names=tuple(str(n) for n in json_attr(f, "class_names", list)),
                       transform=read_transform(f["transform"], (c, h, w)),
                       accuracy=attr(f, "accuracy", float), val_accuracy=None if val < 0 else val,
                       config=json_attr(f, "config", dict), data=json_attr(f, "data", dict), ssl=ssl, projector=head)


def _write_state(g: Any, state: dict[str, torch.Tensor]) -> None:
    g.attrs["names"] = json.dumps(list(state))
    for i, (name, t) in enumerate(state.items()):
        g.create_dataset(str(i), data=t.detach().cpu().numpy())


def _read_state(f: Any, group: str, expected: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The state dict stored in ``f[group]``, each entry checked against ``expected``'s shapes."""
    if group not in f:
        raise FormatError(f"missing {group!r}: the file is corrupt or truncated")
    g = f[group]
    names = json_attr(g, "names", list)
    if sorted(map(str, names)) != sorted(expected) or len(names) != len(expected):
        raise FormatError(f"its weights do not fit {what} (entries differ)")
    state = {}
    for i, name in enumerate(names):
        want = tuple(expected[name].shape)
        ds = g.get(str(i))
        if ds is None or tuple(getattr(ds, "shape", ())) != want:
            got = None if ds is None else tuple(getattr(ds, "shape", ()))
            raise FormatError(f"weight {name} has shape {got}, {what} needs {want}")
        state[name] = torch.from_numpy(dataset(g, str(i), want))
    return state


def is_teacher_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file (a teacher file) rather than a trajectory-store folder."""
    return Path(path).is_file()
