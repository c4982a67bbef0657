"""The pixel transform: how stored/network-space images relate to [0, 1] pixels.

One object serves the loaded datasets and the synthetic-set files, so a set carries
exactly the transform its dataset applied and can be viewed or reused with no
outside state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from condense.data.zca import ZCA

TRANSFORM_KINDS = ("normalize", "zca", "none")


@dataclass(frozen=True, eq=False)
class PixelTransform:
    """``normalize``: x = (p - mean) / std per channel. ``zca``: x = ZCA(p) over flattened
    C*H*W pixels (fitted on [0, 1] training pixels, as MTT does; no mean/std on top).
    ``none``: x = p. Images are [N, C, H, W] or a single [C, H, W].
    """

    kind: str = "none"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    zca: ZCA | None = None

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1, 1, 1)
        return (torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape),
                torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape))

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Network space -> [0, 1] pixels (not clamped); differentiable; same shape."""
        if self.kind == "zca":
            return self.zca.invert(x.unsqueeze(0)).squeeze(0) if x.ndim == 3 else self.zca.invert(x)
        if self.kind == "normalize":
            mean, std = self._stats(x)
            return x * std + mean
        return x

    def from_pixels(self, p: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> network space; differentiable; same shape."""
        if self.kind == "zca":
            return self.zca.apply(p.unsqueeze(0)).squeeze(0) if p.ndim == 3 else self.zca.apply(p)
        if self.kind == "normalize":
            mean, std = self._stats(p)
            return (p - mean) / std
        return p

    def describe(self) -> dict[str, Any]:
        """JSON-able identity: what must agree between a set, a store and a run."""
        return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std),
                "zca_eps": None if self.zca is None else self.zca.eps,
                "zca_key": None if self.zca is None else self.zca.key}
