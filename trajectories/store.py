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
from typing import Any, Iterator

import numpy as np
import torch

from condense.runtime.errors import CondenseError, FormatError
from condense.nets import FlatLayout
from condense.version import __version__

STORE_FORMAT = "condense.trajectories"
EXPERT_FORMAT = "condense.expert"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": np.float32, "float16": np.float16}
_EXPERT_RE = re.compile(r"^expert_(\d{5,})\.h5$")

# Keys that may differ between runs appending to the same store; everything else in the
# manifest defines the store's identity.
_NON_IDENTITY = ("experts_planned", "created", "condense_version", "store_key", "config")
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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _io_error(what: str, e: OSError) -> CondenseError:
    return CondenseError(f"cannot write {what}: {e.strerror or e}")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the store in ``folder``, validated (FormatError otherwise)."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FormatError(f"{folder}: no such trajectory store (not a folder)")
    if not path.exists():
        raise FormatError(f"{folder} is not a trajectory store (no {MANIFEST})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: unreadable manifest ({e})") from None
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
    return meta


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
        import h5py

        path = self.path(i)
        try:
            f = h5py.File(path, "r")
        except OSError:
            raise FormatError(f"{path}: not a readable HDF5 file (truncated or corrupt expert)") from None
        try:
            if f.attrs.get("format") != EXPERT_FORMAT or int(f.attrs.get("version", -1)) != FORMAT_VERSION:
                raise FormatError(f"{path}: not a condense expert file of version {FORMAT_VERSION}")
            if f.attrs.get("store_key") != self.meta["store_key"]:
                raise FormatError(f"{path}: belongs to another store (different dataset, arch or settings)")
            if "params" not in f or f["params"].shape != (self.epochs + 1, self.n_params):
                raise FormatError(f"{path}: parameters missing or not [{self.epochs + 1}, {self.n_params}]")
            if not f.attrs.get("complete", False):
                raise FormatError(f"{path}: expert not marked complete")
        except FormatError:
            f.close()
            raise
        return f

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
            return np.asarray(f["test_acc"][()], dtype=np.float64)

    def train_loss(self, i: int) -> np.ndarray:
        """[epochs + 1] mean training loss per epoch (row 0, the init, is nan)."""
        with self._open(i) as f:
            return np.asarray(f["train_loss"][()], dtype=np.float64)

    def expert_attrs(self, i: int) -> dict[str, Any]:
        with self._open(i) as f:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}


def open_store(folder: str | os.PathLike) -> TrajectoryStore:
    """Open the trajectory store in ``folder`` for reading (see :class:`TrajectoryStore`)."""
    return TrajectoryStore(folder)


def prepare_store(folder: str | os.PathLike, meta: dict[str, Any], experts: int) -> list[int]:
    """Create the store in ``folder``, or reopen it to resume; returns the expert indices
    still to record (of 0..experts-1).

    Refuses a folder holding a store of another dataset/arch/config, or a non-empty folder
    that is not a store. Removes temporary files of experts a killed run left unfinished.
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
    elif folder.exists() and any(p for p in folder.iterdir() if not p.name.startswith(".")):
        raise CondenseError(f"{folder} is not empty and not a trajectory store; choose another --out")
    else:
        meta["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".expert_*.h5.tmp-*"):
            stale.unlink()
        _atomic_write_text(folder / MANIFEST, json.dumps(meta, indent=1, sort_keys=True, default=str))
    except OSError as e:
        raise _io_error(f"the store in {folder}", e) from None
    done = {int(m.group(1)) for p in folder.iterdir() if (m := _EXPERT_RE.match(p.name))}
    return [i for i in range(experts) if i not in done]


class ExpertWriter:
    """Writes one expert row by row into a temporary file; :meth:`finish` renames it into place.

    Rows are copied out of the live parameters as they are written (never aliased), so
    later training cannot change a saved epoch.
    """

    def __init__(self, folder: str | os.PathLike, index: int, attrs: dict[str, Any] | None = None):
        import h5py

        self.folder = Path(folder)
        self.meta = read_manifest(self.folder)
        self.index = index
        self.final = expert_path(self.folder, index)
        self.tmp = self.final.with_name(f".{self.final.name}.tmp-{os.getpid()}")
        rows, n = int(self.meta["epochs"]) + 1, int(self.meta["n_params"])
        self.n_params = n
        try:
            self.file = h5py.File(self.tmp, "w")
            self.file.attrs.update({"format": EXPERT_FORMAT, "version": FORMAT_VERSION, "index": index,
                                    "store_key": self.meta["store_key"], "complete": False, **(attrs or {})})
            self.params = self.file.create_dataset("params", shape=(rows, n), dtype=DTYPES[self.meta["dtype"]],
                                                   chunks=(1, n))
            self.file.create_dataset("test_acc", data=np.full(rows, np.nan))
            self.file.create_dataset("train_loss", data=np.full(rows, np.nan))
        except OSError as e:
            self.abort()
            raise _io_error(f"expert {index} in {self.folder}", e) from None
        self.written = np.zeros(rows, dtype=bool)

    def write_epoch(self, epoch: int, flat: torch.Tensor, test_acc: float = float("nan"),
                    train_loss: float = float("nan")) -> None:
        """Store row ``epoch`` (0 = init): flat [n_params] parameters, and that epoch's numbers."""
        if tuple(flat.shape) != (self.n_params,):
            raise ValueError(f"expected {self.n_params} parameters, got shape {tuple(flat.shape)}")
        try:
            self.params[epoch] = flat.detach().to("cpu", torch.float32).numpy()
            self.file["test_acc"][epoch] = test_acc
            self.file["train_loss"][epoch] = train_loss
        except OSError as e:
            self.abort()
            raise _io_error(f"expert {self.index} in {self.folder}", e) from None
        self.written[epoch] = True

    def finish(self, **attrs: Any) -> Path:
        """Mark complete, flush to disk and rename into place. Returns the final path."""
        if not self.written.all():
            missing = np.flatnonzero(~self.written).tolist()
            self.abort()
            raise RuntimeError(f"expert {self.index} finished with epochs {missing} never written")
        try:
            self.file.attrs.update({"complete": True, **attrs})
            self.file.flush()
            self.file.close()
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.final)
        except OSError as e:
            self.abort()
            raise _io_error(f"expert {self.index} in {self.folder}", e) from None
        return self.final

    def abort(self) -> None:
        """Close and delete the temporary file (the expert is not kept)."""
        try:
            if getattr(self, "file", None) is not None and self.file.id.valid:
                self.file.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()
