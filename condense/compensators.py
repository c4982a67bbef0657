"""Sets stored as real base images plus compensators (INFER's instances), expanded on load.

INFER (Zhang et al., ICLR 2025) stores G groups of K real images, one of every class, and
M compensators per group, each an image-shaped tensor added to the whole group. Instance
(g, m) of class c is clip(base[g, c] + compensator[g, m − 1]), with m = 0 the real image itself,
so G (M + 1) instances per class cost G (K + M) stored images: that, not the instances, is
the set's storage. The instances are ordered class by class, as every set is: instance
(c, g, m) is row c · G (M + 1) + g (M + 1) + m.

clip is the valid pixel range in the network's space (per channel, from the set's
normalisation); under ZCA no per-channel box holds exactly the valid images, and nothing is clipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .data.transform import PixelTransform


@dataclass
class Compensated:
    """The stored form: ``base`` [G, K, C, H, W] (group g holds one real image of every class, in
    class order) and ``compensators`` [G, M, C, H, W], in the network's space."""

    base: torch.Tensor
    compensators: torch.Tensor

    @property
    def groups(self) -> int:
        return int(self.base.shape[0])

    @property
    def members(self) -> int:
        return int(self.compensators.shape[1])

    @property
    def stored_images(self) -> int:
        """Images' worth of storage: G · K base images plus G · M compensators."""
        return int(self.base.shape[0] * self.base.shape[1] + self.compensators.shape[0] * self.compensators.shape[1])

    def classes(self) -> torch.Tensor:
        """The class of every instance [K · G (M + 1)], in class order."""
        return torch.arange(int(self.base.shape[1])).repeat_interleave(self.groups * (self.members + 1))

    def expand(self, transform: PixelTransform) -> tuple[torch.Tensor, torch.Tensor]:
        """(instances [K · G (M + 1), C, H, W], their classes [K · G (M + 1)]) in class order."""
        return expand(self.base, self.compensators, pixel_box(transform, int(self.base.shape[2])))

    def expands_to(self, images: torch.Tensor, classes: torch.Tensor, transform: PixelTransform) -> bool:
        """Whether ``images`` and ``classes`` are exactly this form's instances: checked one group at a
        time, so no second copy of the set is made (an ImageNet-scale set is tens of GB expanded)."""
        g, k, m = self.groups, int(self.base.shape[1]), self.members
        if tuple(images.shape) != (k * g * (m + 1), *self.base.shape[2:]) or not torch.equal(classes.cpu(),
                                                                                           self.classes()):
            return False
        box = pixel_box(transform, int(self.base.shape[2]))
        rows = images.view(k, g, m + 1, *images.shape[1:])
        return all(torch.equal(compose(self.base[i:i + 1], self.compensators[i:i + 1], box)[0].transpose(0, 1),
                               rows[:, i].float().cpu()) for i in range(g))


def pixel_box(transform: PixelTransform, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The per-channel (low, high) [1, C, 1, 1] of valid pixels in network space; None under ZCA."""
    if transform.kind == "zca":
        return None
    lo = transform.from_pixels(torch.zeros(1, channels, 1, 1))
    hi = transform.from_pixels(torch.ones(1, channels, 1, 1))
    return lo, hi


def compose(base: torch.Tensor, compensators: torch.Tensor, box) -> torch.Tensor:
    """[G, M + 1, K, C, H, W]: each group's real images, then each with one of its compensators
    added and clipped to ``box`` (differentiable in the compensators)."""
    with_comp = base.unsqueeze(1) + compensators.unsqueeze(2)  # [G, M, K, C, H, W]
    if box is not None:
        with_comp = torch.maximum(torch.minimum(with_comp, box[1].to(with_comp)), box[0].to(with_comp))
    return torch.cat([base.unsqueeze(1), with_comp], dim=1)


def expand(base: torch.Tensor, compensators: torch.Tensor, box) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`Compensated.expand` on plain tensors (``box`` from :func:`pixel_box`)."""
    g, k = int(base.shape[0]), int(base.shape[1])
    m = int(compensators.shape[1])
    rows = compose(base, compensators, box).permute(2, 0, 1, 3, 4, 5)  # [K, G, M + 1, C, H, W]
    return rows.reshape(k * g * (m + 1), *base.shape[2:]).contiguous(), torch.arange(k).repeat_interleave(g * (m + 1))
