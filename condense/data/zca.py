"""ZCA whitening, numerically the transform MTT uses (kornia's ``ZCAWhitening(eps=0.1)``).

Definition (kornia ``zca_mean`` with ``dim=0, unbiased=True``), for images x [N, C, H, W]
flattened to X [N, D] with D = C*H*W in C order:

    mu    = mean over samples of X                         [D]
    Sigma = (X - mu)^T (X - mu) / (N - 1)                  [D, D]   (unbiased)
    U, S  = SVD(Sigma)                                     (U S U^T = Sigma)
    whiten   T     = U diag(1 / sqrt(S + eps)) U^T
    unwhiten T^-1  = U diag(sqrt(S + eps)) U^T
    apply(x)  = (X - mu) T          invert(z) = Z T^-1 + mu

``invert`` equals kornia's ``inverse_transform`` (which computes (Z + mu T) T^-1) because
T T^-1 = I. Differences from kornia, all deliberate: the fit accumulates the mean and
covariance in float64 over chunks (kornia uses the input dtype, float32 in MTT), so
ours is the more exact value of the same formula; the stored matrices are float32.

MTT fits ZCA on the un-normalised [0, 1] training pixels and feeds the whitened
images to the network without any mean/std normalisation; ``condense.data.datasets``
does the same. Fitting is expensive for large D (CIFAR: D = 3072), so
:meth:`ZCA.fit_cached` keeps fitted matrices in ``<cache>/zca/<key>.npz`` where the key
hashes (caller's key parts such as the dataset name, the exact data content, eps).
"""
from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from condense.data.cache import atomic_write, cache_dir, check_npz, content_hash
from condense.runtime.errors import DataError

# Bump when the fit changes, so stale cache entries are never reused.
_FORMAT = "condense-zca-v1"
_FIT_CHUNK = 4096


def zca_key(x: torch.Tensor, eps: float, key_parts: Sequence[object] = ()) -> str:
    """Cache key (hex) of a ZCA fit: hash of (format, key_parts, content hash of x, eps)."""
    payload = json.dumps([_FORMAT, [str(p) for p in key_parts], content_hash(x), repr(float(eps))])
    return hashlib.blake2b(payload.encode(), digest_size=12).hexdigest()


def zca_matrices(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit kornia's ZCA in float64: returns (mean [D], whiten [D, D], unwhiten [D, D]).

    x: [N, ...] with N >= 2 samples; everything after dim 0 is flattened (C order).
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"ZCA needs a tensor of at least 2 samples [N, ...], got {shape}")
    if not float(eps) > 0:
        raise DataError(f"ZCA eps must be positive, got {eps}; the field's value is 0.1")
    n = x.shape[0]
    flat = x.detach().reshape(n, -1)
    d = flat.shape[1]
    # Chunked float64 accumulation: exact enough for 50k x 3072 without a float64 copy of X.
    mean = torch.zeros(d, dtype=torch.float64)
    for i in range(0, n, _FIT_CHUNK):
        mean += flat[i : i + _FIT_CHUNK].to("cpu", torch.float64).sum(0)
    mean /= n
    cov = torch.zeros(d, d, dtype=torch.float64)
    for i in range(0, n, _FIT_CHUNK):
        c = flat[i : i + _FIT_CHUNK].to("cpu", torch.float64) - mean
        cov.addmm_(c.T, c)
    cov /= n - 1
    if not torch.isfinite(cov).all():
        raise DataError("ZCA fit data contains NaN or Inf; check the dataset files")
    u, s, _ = torch.linalg.svd(cov)
    whiten = (u * torch.rsqrt(s + eps)) @ u.T
    unwhiten = (u * torch.sqrt(s + eps)) @ u.T
    return mean, whiten, unwhiten


@dataclass(frozen=True, eq=False)
class ZCA:
    """A fitted ZCA transform; matrices are float32 on the CPU.

    mean [D], whiten [D, D], unwhiten [D, D] with D = C*H*W; ``eps`` the regulariser;
    ``key`` identifies the fit (data content, eps, key parts) and is what synthetic-set
    files record so a reader can check it has the same transform.
    """

    mean: torch.Tensor
    whiten: torch.Tensor
    unwhiten: torch.Tensor
    eps: float
    key: str

    @property
    def dim(self) -> int:
        """D, the flattened image size the transform applies to."""
        return int(self.mean.shape[0])

    def to(self, device: str | torch.device) -> "ZCA":
        """A copy with the matrices on ``device`` (so :meth:`apply` does not copy them per call)."""
        return ZCA(self.mean.to(device), self.whiten.to(device), self.unwhiten.to(device), self.eps, self.key)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x[0].numel() != self.dim:
            raise DataError(
                f"ZCA was fitted on images of {self.dim} values but got shape {tuple(x.shape)}; "
                "use the ZCA of the same dataset"
            )
        return x.reshape(x.shape[0], -1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten x [N, C, H, W] (or any [N, ...] with D values per sample) -> same shape.

        Runs in x's dtype and device and is differentiable in x.
        """
        flat = self._flat(x)
        out = (flat - self.mean.to(flat)) @ self.whiten.to(flat)
        return out.reshape(x.shape)

    def invert(self, z: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`apply`: whitened z [N, ...] -> pixels, same shape (not clamped)."""
        flat = self._flat(z)
        out = flat @ self.unwhiten.to(flat) + self.mean.to(flat)
        return out.reshape(z.shape)

    @classmethod
    def fit(cls, x: torch.Tensor, eps: float = 0.1, key: str | None = None) -> "ZCA":
        """Fit on x [N, C, H, W] (MTT: un-normalised [0, 1] training pixels).

        ``key`` defaults to :func:`zca_key` of (x, eps).
        """
        mean, whiten, unwhiten = zca_matrices(x, eps)
        return cls(
            mean=mean.float(),
            whiten=whiten.float(),
            unwhiten=unwhiten.float(),
            eps=float(eps),
            key=key if key is not None else zca_key(x, eps),
        )

    @classmethod
    def fit_cached(
        cls,
        x: torch.Tensor,
        eps: float = 0.1,
        key_parts: Sequence[object] = (),
        cache: str | Path | None = None,
    ) -> "ZCA":
        """:meth:`fit`, computed once per (key_parts, data content, eps) and kept on disk.

        ``cache`` is the folder (default ``$CONDENSE_CACHE/zca`` or ``~/.cache/condense/zca``).
        A corrupt or mismatching cache file is ignored with a warning and refitted; a cache
        folder that cannot be written only costs a warning.
        """
        key = zca_key(x, eps, key_parts)
        path = Path(cache) if cache is not None else cache_dir("zca")
        path = path / f"{key}.npz"
        if path.exists():
            try:
                z = cls.load(path)
                if z.key != key or z.eps != float(eps) or z.dim != x[0].numel():
                    raise DataError(f"entry is for key {z.key} eps {z.eps}")
                return z
            except DataError as e:
                warnings.warn(f"ignoring unusable ZCA cache file {path} ({e}); refitting", RuntimeWarning)
        z = cls.fit(x, eps, key=key)
        try:
            z.save(path)
        except OSError as e:
            warnings.warn(f"could not write ZCA cache {path} ({e}); set $CONDENSE_CACHE to a writable folder",
                          RuntimeWarning)
        return z

    def save(self, path: str | Path) -> Path:
        """Write an uncompressed .npz (plain arrays only), atomically."""
        arrays = {
            "format": np.array(_FORMAT),
            "mean": self.mean.cpu().numpy(),
            "whiten": self.whiten.cpu().numpy(),
            "unwhiten": self.unwhiten.cpu().numpy(),
            "eps": np.array(self.eps, dtype=np.float64),
            "key": np.array(self.key),
        }
        return atomic_write(Path(path), lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> "ZCA":
        """Read a file written by :meth:`save`; DataError if it is corrupt or not a ZCA file."""
        check_npz(path)  # shapes against stored bytes first: np.load allocates what headers declare
        try:
            with np.load(path, allow_pickle=False) as f:
                fmt, mean, whiten = str(f["format"]), f["mean"], f["whiten"]
                unwhiten, eps, key = f["unwhiten"], float(f["eps"]), str(f["key"])
        except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path} is not a readable ZCA file ({type(e).__name__}: {e})") from None
        d = mean.shape[0] if mean.ndim == 1 else -1
        if fmt != _FORMAT or d < 1 or whiten.shape != (d, d) or unwhiten.shape != (d, d):
            raise DataError(f"{path} is not a {_FORMAT} file with consistent shapes")
        for a in (mean, whiten, unwhiten):
            if a.dtype != np.float32 or not np.isfinite(a).all():
                raise DataError(f"{path} holds non-float32 or non-finite matrices")
        return cls(torch.from_numpy(mean), torch.from_numpy(whiten), torch.from_numpy(unwhiten), eps, key)
