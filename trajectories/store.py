"""The expert-trajectory store: a folder of one HDF5 file per finished expert.

Layout (docs/FORMATS.md)::

    STORE/manifest.json        format "condense.trajectories", version, and the metadata
                               every expert shares (dataset, arch, flat layout, optimiser,
                               regulariser, pixel transform, split, seed, dtype, epochs)
    STORE/expert_00000.h5      one finished expert: params [epochs + 1, n_params] chunked by
                               epoch (row 0 = the initialisation), test_acc [epochs + 1],
                               train_loss [epochs + 1] (row 0 = nan), attrs index, seed...
    STORE/.expert_00003.h5.tmp-PID   an expert being recorded (ignored; removed on resume)

An expert is written row by row to its temporary file and renamed into place only
when its last epoch is on disk, so a kill at any moment never damages a finished
expert, and a store never exposes a half-recorded one. Memory to read one epoch is
one row: ``store.epoch(i, e)`` reads a single HDF5 chunk.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from condense.runtime.errors import CondenseError, FormatError
from condense.runtime.files import WriteError, attr, check_h5, dataset, regular_file, write_h5, write_text
from condense.nets import FlatLayout
from condense.synset import file_sha256
from condense.version import __version__

STORE_FORMAT = "condense.trajectories"
EXPERT_FORMAT = "condense.expert"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": np.float32, "float16": np.float16}
_EXPERT_RE = re.compile(r"^expert_(\d{5,})\.h5$")

# Keys that may differ between runs appending to the same store; everything else in the
# manifest defines the store's identity.
_NON_IDENTITY = ("experts_planned", "created", "condense_version", "store_key", "config", "checksums")
# A manifest is a few KB (its checksums ~100 bytes per expert); anything near this is not one.
MAX_MANIFEST_BYTES = 16 << 20
# Protocol keys that change how test accuracy is batched, not the recorded trajectory: a store
# resumes across them and keeps the values (and the key) it was created with.
_TRAJECTORY_NEUTRAL = ("test_batch_size",)


def _identity_differs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Identity keys whose values differ between two manifests, trajectory-neutral ones ignored."""
    def trajectory_part(v: Any) -> Any:
        return {k: x for k, x in v.items() if k not in _TRAJECTORY_NEUTRAL} if isinstance(v, dict) else v
    return sorted(k for k in set(old) | set(new) if k not in _NON_IDENTITY
                  and trajectory_part(old.get(k)) != trajectory_part(new.get(k)))


def dsa_share(meta: dict[str, Any]) -> str | None:
    """What a store's training batches shared of a DSA draw (:mod:`condense.augment`). A manifest
    written before condense 0.2 does not say: its recorded experts drew once per batch ('batch'),
    experts imported from MTT's buffer.py drew per image ('image'). None: no DSA."""
    protocol = meta.get("protocol") or {}
    if not protocol.get("dsa", True):
        return None
    return protocol.get("dsa_share", "image" if meta.get("source") == "mtt-import" else "batch")


def _with_dsa_share(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with its protocol's DSA share spelt out (:func:`dsa_share`; none without DSA), so
    manifests of both versions compare by what their experts did."""
    protocol = meta.get("protocol")
    if not isinstance(protocol, dict):
        return meta
    protocol = {k: v for k, v in protocol.items() if k != "dsa_share"}
    share = dsa_share(meta)
    return dict(meta, protocol=protocol if share is None else {**protocol, "dsa_share": share})


def store_key(meta: dict[str, Any]) -> str:
    """Hash of the identity part of a manifest: files with another key belong elsewhere."""
    identity = {k: v for k, v in meta.items() if k not in _NON_IDENTITY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def expert_path(folder: Path, index: int) -> Path:
    return folder / f"expert_{index:05d}.h5"


def _io_error(what: str, e: OSError) -> CondenseError:
    return CondenseError(f"cannot write {what}: {e.strerror or e}")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the store in ``folder``, validated (FormatError otherwise)."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FormatError(f"{folder}: no such trajectory store (not a folder)")
    if not path.exists():
        raise FormatError(f"{folder} is not a trajectory store (no {MANIFEST})")
    regular_file(path, "trajectory-store manifest", follow=False)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise FormatError(f"{path}: {path.stat().st_size:,} bytes is too large for a manifest")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise FormatError(f"{path}: unreadable manifest ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise FormatError(f"{path}: not a condense trajectory-store manifest")
    version = meta.get("version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise FormatError(f"{path}: trajectory-store format version {version} is not supported "
                          f"(this condense reads 1..{FORMAT_VERSION}; upgrade condense)")
    for key in ("layout", "epochs", "n_params", "dtype", "dataset", "arch", "store_key"):
        if key not in meta:
            raise FormatError(f"{path}: manifest lacks '{key}'")
    if meta["dtype"] not in DTYPES:
        raise FormatError(f"{path}: unknown dtype {meta['dtype']!r}")
    for key in ("epochs", "n_params"):
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 1:
            raise FormatError(f"{path}: '{key}' must be a positive integer, got {str(meta[key])[:40]!r}")
    if not isinstance(meta.get("checksums", {}), dict):
        raise FormatError(f"{path}: 'checksums' must be a mapping")
    return meta


_CHECKED: dict[str, tuple[int, int, int]] = {}  # expert path -> (inode, mtime, size) of its checked version


def open_expert(path: Path, meta: dict[str, Any]) -> Any:
    """The finished expert file ``path`` of the store described by ``meta``, opened read-only
    after the checks of :func:`condense.runtime.files.open_h5` (once per version of the file:
    tm reads two rows an iteration) and against the manifest: format, store key, shapes,
    completion. FormatError otherwise; the caller closes the file."""
    import h5py

    regular_file(path, "trajectory-store expert", follow=False)
    st = os.stat(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError:
        raise FormatError(f"{path}: not a readable HDF5 file (truncated or corrupt expert)") from None
    try:
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        if _CHECKED.get(str(path)) != version:
            check_h5(f)
            _CHECKED[str(path)] = version
        if attr(f, "format", str, default=None) != EXPERT_FORMAT or attr(f, "version", int, default=-1) != FORMAT_VERSION:
            raise FormatError(f"not a condense expert file of version {FORMAT_VERSION}")
        if attr(f, "store_key", str, default=None) != meta["store_key"]:
            raise FormatError("belongs to another store (different dataset, arch or settings)")
        rows = int(meta["epochs"]) + 1
        for name, shape in (("params", (rows, int(meta["n_params"]))), ("test_acc", (rows,)), ("train_loss", (rows,))):
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset) or ds.shape != shape or ds.dtype.kind != "f":
                raise FormatError(f"'{name}' missing or not float {list(shape)}")
        if not attr(f, "complete", bool, default=False):
            raise FormatError("expert not marked complete")
    except FormatError as e:
        f.close()
        raise FormatError(f"{path}: {e}") from None
    except BaseException:
        f.close()
        raise
    return f


class TrajectoryStore:
    """Read access to a store. ``len(store)`` finished experts; expert ``i`` is the i-th
    finished expert in index order.

    ``store.expert(i)`` -> float32 [epochs + 1, n_params]; ``store.epoch(i, e)`` -> float32
    [n_params], reading that one row; ``store.test_acc(i)`` -> [epochs + 1] fractions.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.meta = read_manifest(self.folder)
        self.layout = FlatLayout.from_json(self.meta["layout"])
        self.epochs = int(self.meta["epochs"])
        self.n_params = int(self.meta["n_params"])
        self.indices = sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _EXPERT_RE.match(p.name)))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def dsa_share(self) -> str | None:
        """What the experts' training batches shared of a DSA draw (:func:`dsa_share`: a condense 0.1
        store reads as 'batch' if recorded, 'image' if imported from MTT)."""
        return dsa_share(self.meta)

    def __repr__(self) -> str:
        return (f"TrajectoryStore({str(self.folder)!r}: {len(self)} experts x {self.epochs} epochs, "
                f"{self.meta['arch']} on {self.meta['dataset']}, {self.n_params} params)")

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Each expert's [epochs + 1, n_params] trajectory in turn (one in memory at a time)."""
        for i in range(len(self)):
            yield self.expert(i)

    def path(self, i: int) -> Path:
        if not 0 <= i < len(self):
            raise IndexError(f"expert {i} out of range: the store holds {len(self)} finished experts")
        return expert_path(self.folder, self.indices[i])

    def _open(self, i: int) -> Any:
        return open_expert(self.path(i), self.meta)

    def _read(self, i: int, rows: Any) -> np.ndarray:
        with self._open(i) as f:
            try:
                return np.asarray(f["params"][rows], dtype=np.float32)
            except OSError as e:
                raise FormatError(f"{self.path(i)}: corrupt parameter data ({e})") from None

    def expert(self, i: int) -> torch.Tensor:
        """float32 [epochs + 1, n_params]: the whole trajectory of expert ``i``."""
        return torch.from_numpy(self._read(i, slice(None)))

    def epoch(self, i: int, e: int) -> torch.Tensor:
        """float32 [n_params]: expert ``i``'s parameters after epoch ``e`` (0 = init); one row read."""
        if not 0 <= e <= self.epochs:
            raise IndexError(f"epoch {e} out of range 0..{self.epochs}")
        return torch.from_numpy(self._read(i, e))

    def test_acc(self, i: int) -> np.ndarray:
        """[epochs + 1] test accuracy (fractions; nan where unknown, e.g. imported experts)."""
        with self._open(i) as f:
            return dataset(f, "test_acc", (self.epochs + 1,), "f", np.float64)

    def train_loss(self, i: int) -> np.ndarray:
        """[epochs + 1] mean training loss per epoch (row 0, the init, is nan)."""
        with self._open(i) as f:
            return dataset(f, "train_loss", (self.epochs + 1,), "f", np.float64)

    def expert_attrs(self, i: int) -> dict[str, Any]:
        with self._open(i) as f:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}


def open_store(folder: str | os.PathLike) -> TrajectoryStore:
    """Open the trajectory store in ``folder`` for reading (see :class:`TrajectoryStore`)."""
    return TrajectoryStore(folder)


def prepare_store(folder: str | os.PathLike, meta: dict[str, Any], experts: int,
                  note: Callable[[str], None] = print) -> list[int]:
    """Create the store in ``folder``, or reopen it to resume; returns the expert indices
    still to record (of 0..experts-1).

    Refuses a folder holding a store of another dataset/arch/config, or a non-empty folder
    that is not a store. Removes temporary files of experts a killed run left unfinished, and
    finished experts that are damaged (:func:`_verify_experts`), telling ``note``.
    """
    folder = Path(folder)
    meta = _with_dsa_share(dict(meta, format=STORE_FORMAT, version=FORMAT_VERSION, experts_planned=experts,
                                condense_version=__version__))
    meta["store_key"] = store_key(meta)
    if (folder / MANIFEST).exists():
        old = _with_dsa_share(read_manifest(folder))
        if old["store_key"] != meta["store_key"]:
            differ = _identity_differs(old, meta)
            if differ == ["protocol"] and dsa_share(old) != dsa_share(meta):
                raise CondenseError(f"{folder} holds experts recorded with DSA share {dsa_share(old)!r}, this run uses "
                                    f"{dsa_share(meta)!r}; experts of two augmentation semantics are not mixed in "
                                    f"one store: choose another --out, or --dsa-share {dsa_share(old)}")
            if differ:
                raise CondenseError(f"{folder} holds a store recorded with other settings (differs in: "
                                    f"{', '.join(differ)}); choose another --out or the same settings")
            # Only trajectory-neutral keys differ: keep the store's identity so its experts stay valid.
            meta.update({k: v for k, v in old.items() if k not in _NON_IDENTITY})
            meta["store_key"] = old["store_key"]
        meta["created"] = old.get("created")
        meta["experts_planned"] = max(experts, int(old.get("experts_planned", 0)))
        meta["checksums"] = old.get("checksums", {})
    elif folder.exists() and any(p for p in folder.iterdir() if not p.name.startswith(".")):
        raise CondenseError(f"{folder} is not empty and not a trajectory store; choose another --out")
    else:
        meta["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".expert_*.h5.tmp-*"):
            stale.unlink()
        if meta.get("checksums") is not None:
            _verify_experts(folder, meta, note)
            meta["checksums"] = {k: v for k, v in meta["checksums"].items() if (folder / k).exists()}
        write_text(folder / MANIFEST, json.dumps(meta, indent=1, sort_keys=True, default=str))
    except OSError as e:
        raise _io_error(f"the store in {folder}", e) from None
    done = {int(m.group(1)) for p in folder.iterdir() if (m := _EXPERT_RE.match(p.name))}
    return [i for i in range(experts) if i not in done]


def seal_experts(folder: str | os.PathLike, indices: Any = None) -> None:
    """Record in the manifest the SHA-256 of finished experts (``indices``, or every one without a
    checksum yet), so that a resume can tell an expert damaged on disk from a sound one.
    Only the recording process writes the manifest (its workers only write expert files)."""
    folder = Path(folder)
    meta = read_manifest(folder)
    sums = dict(meta.get("checksums", {}))
    done = {int(m.group(1)) for p in folder.iterdir() if (m := _EXPERT_RE.match(p.name))}
    if indices is None:
        todo = [i for i in sorted(done) if expert_path(folder, i).name not in sums]
    else:
        todo = sorted(done & set(indices))
    if not todo:
        return
    for i in todo:
        path = expert_path(folder, i)
        with open_expert(path, meta):
            pass
        sums[path.name] = file_sha256(path)
    write_text(folder / MANIFEST, json.dumps(dict(meta, checksums=sums), indent=1, sort_keys=True, default=str))


def _verify_experts(folder: Path, meta: dict[str, Any], note: Callable[[str], None]) -> None:
    """Delete finished experts that are damaged (their checksum differs from the manifest's, or
    they fail the reading checks when they have none, in which case a sound one is sealed), so
    that the resume records them again."""
    sums = meta["checksums"]
    for p in sorted(folder.iterdir()):
        if not _EXPERT_RE.match(p.name):
            continue
        reason = None
        if p.name in sums:
            if file_sha256(p) != sums[p.name]:
                reason = "its checksum differs from the manifest's"
        else:
            try:
                with open_expert(p, meta):
                    pass
                sums[p.name] = file_sha256(p)  # finished, but its run was killed before sealing it
            except FormatError as e:
                reason = str(e).split(": ", 1)[-1]
        if reason:
            note(f"{p}: damaged ({reason}); recording it again")
            p.unlink()


class ExpertWriter:
    """Records one expert: rows are kept in memory as they are written (copied out of the live
    parameters, never aliased, so later training cannot change a saved epoch); :meth:`finish`
    writes the whole file atomically. A killed expert leaves nothing: it is recorded again."""

    def __init__(self, folder: str | os.PathLike, index: int, attrs: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.meta = read_manifest(self.folder)
        self.index = index
        self.final = expert_path(self.folder, index)
        rows, n = int(self.meta["epochs"]) + 1, int(self.meta["n_params"])
        self.n_params = n
        self.attrs = {"format": EXPERT_FORMAT, "version": FORMAT_VERSION, "index": index,
                      "store_key": self.meta["store_key"], "complete": False, **(attrs or {})}
        self.params = np.zeros((rows, n), dtype=DTYPES[self.meta["dtype"]])
        self.test_acc = np.full(rows, np.nan)
        self.train_loss = np.full(rows, np.nan)
        self.written = np.zeros(rows, dtype=bool)

    def write_epoch(self, epoch: int, flat: torch.Tensor, test_acc: float = float("nan"),
                    train_loss: float = float("nan")) -> None:
        """Store row ``epoch`` (0 = init): flat [n_params] parameters, and that epoch's numbers."""
        if tuple(flat.shape) != (self.n_params,):
            raise ValueError(f"expected {self.n_params} parameters, got shape {tuple(flat.shape)}")
        self.params[epoch] = flat.detach().to("cpu", torch.float32).numpy()
        self.test_acc[epoch] = test_acc
        self.train_loss[epoch] = train_loss
        self.written[epoch] = True

    def finish(self, **attrs: Any) -> Path:
        """Mark complete and write the expert file atomically. Returns its path."""
        if not self.written.all():
            missing = np.flatnonzero(~self.written).tolist()
            raise RuntimeError(f"expert {self.index} finished with epochs {missing} never written")

        def build(f: Any) -> None:
            f.attrs.update({**self.attrs, "complete": True, **attrs})
            # One chunk per epoch: store.epoch(i, e) reads one row.
            f.create_dataset("params", data=self.params, chunks=(1, self.n_params))
            f.create_dataset("test_acc", data=self.test_acc)
            f.create_dataset("train_loss", data=self.train_loss)

        try:
            return write_h5(self.final, build)
        except WriteError as e:
            raise CondenseError(f"cannot write expert {self.index} in {self.folder}: {str(e).split(': ')[-1]}") from None

    def abort(self) -> None:
        """Drop the rows recorded so far (nothing was written to disk)."""
        self.written[:] = False
