"""Import MTT's replay buffers (``replay_buffer_*.pt``) into a condense trajectory store.

MTT's layout (GeorgeCazenavette/mtt-distillation, ``buffer.py``): a file is
``torch.save(trajectories)`` where ``trajectories`` is a list of experts; an expert is
a list of per-epoch snapshots (snapshot 0 = the initialisation, then one after every
training epoch, so ``train_epochs + 1`` of them); a snapshot is a list of tensors in
``module.parameters()`` order (for the ConvNet: conv weight, conv bias, norm weight,
norm bias per block, then classifier weight and bias). The recorder writes a file
every ``save_interval`` experts (``replay_buffer_0.pt``, ``replay_buffer_1.pt``, ...).

Safety: files are read with ``torch.load(..., weights_only=True)`` only. A file that
needs anything else (a pickled custom object, a function reference) is refused with a
:class:`~condense.runtime.errors.FormatError`; nothing in it is executed.

What is checked, before anything is written (first pass, one file at a time, tensors
memory-mapped, not read): every file loads weights-only; it holds a non-empty list of
experts, each a list of at least two snapshots (init + one epoch), each a list of
floating-point tensors; every expert of every file has the same number of snapshots;
each snapshot matches the flat layout of ``build_net(arch, channels, num_classes,
image_size)`` for the named dataset (same tensor count, same shape in order), so a
CIFAR-10 buffer imported as Fashion-MNIST fails with the file, expert, epoch, tensor
index and both shapes. While writing (second pass) each expert's values are checked:
all finite, and the final snapshot differs from the initial one (MTT recorded on a CPU
saves every epoch as an alias of the live weights, so all its snapshots are equal and
trajectory matching would divide by zero).

What is recorded: the manifest is :func:`trajectories.record.store_metadata` of the
config MTT's ``buffer.py`` uses by default (SGD lr 0.01, momentum 0, weight decay 0,
batch 256, DSA on, no lr decay; the buffer itself does not record them, so they are
MTT's defaults, not verified facts: ``"protocol_source"`` says so), with ``source =
"mtt-import"``, ``seed = None`` (MTT reseeds from the clock) and ``imported_from``: one
entry per file, ``{"file": base name, "sha256": ..., "experts": count}``, in import
order. Expert ``i`` (numbered file by file, then in list order) carries the attributes
``source_file`` and ``source_index`` (its position in that file). Test accuracy and
training loss per epoch are unknown and stay nan.

Identity and resume: ``imported_from`` is part of the store's identity on purpose.
Rerunning the same import (same files, same order, same content) resumes: experts
already in the store are skipped. Another file set, another order or changed content
would renumber or replace experts, so :func:`trajectories.store.prepare_store` refuses
it ("differs in: imported_from"); import into a new folder instead.

Split and ZCA: MTT trained its experts on the whole training set (no validation split)
and fitted its ZCA (kornia ``ZCAWhitening(eps=0.1)``) on all training images, so the
store records ``val_size = 0``; with ``zca=True`` condense refits the same whitening on
all training images of the dataset, which an imported ZCA buffer needs.
"""
from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from condense.data import dataset_info
from condense.runtime.errors import ConfigError, FormatError
from condense.runtime.files import check_torch_file
from condense.nets import FlatLayout, build_net
from condense.synset import file_sha256
from trajectories.record import BufferConfig, store_metadata
from trajectories.store import DTYPES, ExpertWriter, prepare_store, seal_experts

SOURCE = "mtt-import"
PROTOCOL_SOURCE = "MTT buffer.py defaults (not recorded in replay buffers)"


@dataclass(frozen=True)
class _BufferFile:
    path: Path
    sha256: str
    experts: int
    snapshots: int


def _load(path: Path) -> Any:
    """``torch.load`` weights-only (memory-mapped for zip-format files); FormatError otherwise."""
    import pickle

    if not path.is_file():
        raise FormatError(f"{path}: no such replay-buffer file")
    check_torch_file(path, "replay-buffer")
    try:
        mmap = zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text or "WeightsUnpickler" in text:
            m = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"WeightsUnpickler error: ([^\n.]+)", text)
            why = f" (it needs {m.group(1)})" if m else ""
            raise FormatError(f"{path}: refusing to unpickle it: it is not a weights-only torch file{why}; "
                              f"only plain lists of tensors are imported") from None
        raise FormatError(f"{path}: not a readable torch file ({text.splitlines()[0] if text else type(e).__name__})") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read it ({e.strerror or e})") from None
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError... for junk
        line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"{path}: not a readable torch file ({type(e).__name__}: {line})") from None


def _check_structure(obj: Any, name: str, layout: FlatLayout, what: str, file_bytes: int | None = None) -> int:
    """Validate one loaded file against ``layout``; returns its number of snapshots per expert.

    ``file_bytes`` (the file's size) bounds the tensor bytes the lists may reach: a pickle
    can repeat one list or tensor any number of times for two bytes a reference, so a small
    file could otherwise make this walk, and the import write, billions of snapshots. The
    walk stops as soon as the tensors seen hold more bytes than the file."""
    declared = 0
    if not isinstance(obj, (list, tuple)) or not obj:
        raise FormatError(f"{name}: not an MTT replay buffer (expected a non-empty list of experts, "
                          f"found {_describe(obj)})")
    count = None
    for k, expert in enumerate(obj):
        if not isinstance(expert, (list, tuple)):
            raise FormatError(f"{name}: expert {k} is {_describe(expert)}, expected a list of per-epoch snapshots")
        if len(expert) < 2:
            raise FormatError(f"{name}: expert {k} has {len(expert)} snapshot(s); a trajectory needs the init "
                              f"and at least one epoch")
        if count is None:
            count = len(expert)
        elif len(expert) != count:
            raise FormatError(f"{name}: expert {k} has {len(expert)} snapshots but expert 0 has {count}; "
                              f"every expert must have the same number of epochs")
        for e, snap in enumerate(expert):
            where = f"{name}: expert {k}, epoch {e}"
            if not isinstance(snap, (list, tuple)):
                raise FormatError(f"{where}: snapshot is {_describe(snap)}, expected a list of tensors")
            if len(snap) != len(layout.shapes):
                raise FormatError(f"{where}: {len(snap)} parameter tensors, but {what} has {len(layout.shapes)}")
            for j, (t, shape, pname) in enumerate(zip(snap, layout.shapes, layout.names)):
                if not isinstance(t, torch.Tensor):
                    raise FormatError(f"{where}, tensor {j}: found {_describe(t)}, expected a tensor")
                if tuple(t.shape) != shape:
                    raise FormatError(f"{where}, tensor {j} ({pname}): expected shape {list(shape)} for {what}, "
                                      f"found {list(t.shape)}")
                if not t.dtype.is_floating_point:
                    raise FormatError(f"{where}, tensor {j} ({pname}): dtype {t.dtype} is not floating point")
                declared += t.numel() * t.element_size()
                if file_bytes is not None and declared > file_bytes:
                    raise FormatError(f"{where}: its tensors so far hold {declared:,} bytes but the file has only "
                                      f"{file_bytes:,}: snapshots alias shared storage (MTT recorded on a CPU saves "
                                      f"every epoch as an alias of the live weights) or repeat; refusing it")
    return count


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {list(x.shape)}"
    if isinstance(x, (list, tuple)):
        return f"an empty {type(x).__name__}" if not x else f"a {type(x).__name__} of {len(x)}"
    return f"a {type(x).__name__}"


def _flat(snapshot: Sequence[torch.Tensor], layout: FlatLayout) -> torch.Tensor:
    return layout.flatten([t.to(torch.float32) for t in snapshot])


def import_mtt(paths: Sequence[str | Path], out: str | Path, *, dataset: str, arch: str = "convnet",
               data_root: str | None = None, zca: bool = False, dtype: str = "float32",
               progress: Callable[[str], None] = print) -> int:
    """Import MTT replay-buffer files ``paths`` (in this order) into the store ``out``.

    ``dataset``/``arch`` name what the experts are (condense names, e.g. ``cifar10``,
    ``convnet``); ``zca=True`` for buffers recorded with ``--zca``; ``data_root`` locates
    the dataset, which the manifest's normalisation/ZCA record needs. Experts are
    numbered file by file, then in list order. Rerunning the same import skips the
    experts already stored. Returns the number of experts newly imported. Raises
    FormatError for an unreadable, unsafe or mismatching file (see the module
    docstring); nothing is written unless every file passes the structure checks.
    MTT trained on the whole training set, so the store records ``val_size = 0``.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("no replay-buffer files given")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    info = dataset_info(dataset)
    layout = FlatLayout.of(build_net(arch, info.channels, info.num_classes, info.image_size))
    what = f"{arch} on {info.name} ({info.channels}x{info.image_size[0]}x{info.image_size[1]}, {info.num_classes} classes)"

    # Pass 1: hash and check every file (one at a time, tensors memory-mapped) before writing anything.
    files: list[_BufferFile] = []
    for path in paths:
        sha = file_sha256(path) if path.is_file() else None
        obj = _load(path)
        try:
            snapshots = _check_structure(obj, path.name, layout, what, path.stat().st_size)
            n_experts = len(obj)
        finally:
            del obj
        if files and snapshots != files[0].snapshots:
            raise FormatError(f"{path.name}: its experts have {snapshots} snapshots ({snapshots - 1} epochs) but those "
                              f"of {files[0].path.name} have {files[0].snapshots}; all experts must have the same number")
        dup = next((f for f in files if f.sha256 == sha), None)
        if dup is not None:
            raise ConfigError(f"{path} has the same content as {dup.path}; give each buffer file once")
        files.append(_BufferFile(path, sha, n_experts, snapshots))
        progress(f"{path.name}: {files[-1].experts} experts x {snapshots - 1} epochs, layout ok")
    epochs = files[0].snapshots - 1
    total = sum(f.experts for f in files)

    cfg = BufferConfig(dataset=dataset, arch=arch, data_root=data_root, zca=zca, val_size=0, epochs=epochs,
                       dtype=dtype, lr=0.01, momentum=0.0, weight_decay=0.0, batch_size=256, dsa=True,
                       experts=total, out=str(out))
    meta = store_metadata(cfg)
    if FlatLayout.from_json(meta["layout"]) != layout:  # the loaded dataset disagrees with its registry entry
        raise FormatError(f"{dataset}: the loaded dataset's network layout differs from the registered shapes")
    meta.update(source=SOURCE, seed=None, protocol_source=PROTOCOL_SOURCE,
                imported_from=[{"file": f.path.name, "sha256": f.sha256, "experts": f.experts} for f in files])
    todo = set(prepare_store(out, meta, total, note=progress))
    if not todo:
        progress(f"{out}: all {total} experts are already imported")
        return 0
    progress(f"{out}: importing {len(todo)} of {total} experts ({epochs} epochs each)")

    # Pass 2: write the missing experts, one file in memory (mapped) at a time, one row at a time.
    written, start = 0, 0
    for f in files:
        indices = [start + k for k in range(f.experts) if start + k in todo]
        if indices:
            obj = _load(f.path)
            try:
                for i in indices:
                    k = i - start
                    _write_expert(out, i, obj[k], f.path.name, k, layout)
                    seal_experts(out, [i])
                    written += 1
                    progress(f"expert {i}: {f.path.name}[{k}] imported")
            finally:
                del obj
        start += f.experts
    return written


def _write_expert(out: str | Path, index: int, expert: Sequence[Sequence[torch.Tensor]], name: str, k: int,
                  layout: FlatLayout) -> None:
    first = _flat(expert[0], layout)
    last = _flat(expert[-1], layout)
    if torch.equal(first, last):
        raise FormatError(f"{name}: expert {k}: its last snapshot equals its initialisation (MTT recorded on a CPU "
                          f"saves every epoch as an alias of the live weights); this buffer is unusable, re-record it")
    writer = ExpertWriter(out, index, attrs={"source_file": name, "source_index": k})
    try:
        for e, snap in enumerate(expert):
            flat = first if e == 0 else _flat(snap, layout)
            if not bool(torch.isfinite(flat).all()):
                raise FormatError(f"{name}: expert {k}, epoch {e}: non-finite parameters (a diverged expert)")
            writer.write_epoch(e, flat)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
