"""Video sets stored as still images plus a dynamic memory and an integrator, expanded on load.

The static/dynamic disentanglement of Wang et al. ("Dancing with Still Images: Video Distillation via
Static-Dynamic Disentanglement", CVPR 2024): per class, S still images (the static memory, [C, H, W]
each, learned on single frames by an image method) and D dynamic memories (one channel per frame,
[T, 1, H, W] each), and one integrator shared by all classes, a single 3-D convolution
(C + 1 -> C channels, 3 x 3 x 3, padding 1: the reference's ``Conv3DNet``):

    clip(s, d) = conv3d(concat(s repeated over T frames, d), weight, bias)       [T, C, H, W]

Slot j of a class pairs its statics g·j … g·j + g − 1 with its dynamics g·j … g·j + g − 1 (the
reference: g = 2, S = D = 2 · videos per class, one static and one dynamic drawn at random per forward
pass). Here a set is all g² combinations of every slot, in a fixed order, so that distillation and
evaluation train on the same clips and nothing depends on a random draw: instance (c, j, a, b) is row
c · (V g²) + j g² + a g + b, with V = S / g slots per class.

Without dynamics (D = 0, no integrator) every still is one clip, the still repeated over T frames:
the paper's static-only set ("boring videos"). Storage is what is stored, in float32: the stills, the
dynamic memories and the integrator's weights, never the expanded clips.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class VideoMemory:
    """``statics`` [K, S, C, H, W]; ``dynamics`` [K, D, T, 1, H, W] or None; ``weight`` [C, C + 1, 3, 3, 3] and
    ``bias`` [C] (None without dynamics); ``group`` g; ``frames`` T. All in the network's space."""

    statics: torch.Tensor
    dynamics: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    group: int
    frames: int

    @property
    def num_classes(self) -> int:
        return int(self.statics.shape[0])

    @property
    def slots(self) -> int:
        """Video slots per class (V)."""
        return int(self.statics.shape[1]) // self.group if self.dynamics is not None else int(self.statics.shape[1])

    @property
    def per_class(self) -> int:
        """Clips per class once expanded: V g² (static-only: S)."""
        return self.slots * (self.group ** 2 if self.dynamics is not None else 1)

    @property
    def stored_numbers(self) -> int:
        """float32 numbers stored: stills, dynamic memories and the integrator."""
        return sum(int(t.numel()) for t in (self.statics, self.dynamics, self.weight, self.bias) if t is not None)

    def clip_shape(self) -> tuple[int, int, int, int]:
        c, h, w = (int(s) for s in self.statics.shape[2:])
        return (self.frames, c, h, w)

    def classes(self) -> torch.Tensor:
        """The class of every clip [K · per_class], in class order."""
        return torch.arange(self.num_classes).repeat_interleave(self.per_class)

    def class_clips(self, c: int) -> torch.Tensor:
        """Class ``c``'s clips [per_class, T, C, H, W]. Expanding and checking both go class by class, so
        they compute exactly the same numbers whatever batch size a convolution would pick its algorithm by."""
        return compose(self.statics[c:c + 1], None if self.dynamics is None else self.dynamics[c:c + 1],
                       self.weight, self.bias, self.group, self.frames)

    def expand(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(clips [K · per_class, T, C, H, W], classes) in the order of the module docstring."""
        return torch.cat([self.class_clips(c) for c in range(self.num_classes)]), self.classes()

    def expands_to(self, clips: torch.Tensor, classes: torch.Tensor) -> bool:
        """Whether ``clips`` and ``classes`` are this memory's expansion (so it may be written for them): checked
        one class at a time, so no second copy of the clips is made (miniUCF101 at VPC 5 is 2.4 GB of them)."""
        if tuple(clips.shape) != (self.num_classes * self.per_class, *self.clip_shape()) \
                or not torch.equal(classes.cpu(), self.classes()):
            return False
        rows = clips.view(self.num_classes, self.per_class, *self.clip_shape())
        return all(torch.equal(self.class_clips(c), rows[c].detach().float().cpu()) for c in range(self.num_classes))

    def check(self) -> str | None:
        """Why the shapes do not fit together, or None."""
        k, s = int(self.statics.shape[0]), int(self.statics.shape[1])
        c, h, w = (int(v) for v in self.statics.shape[2:])
        if self.statics.ndim != 5 or min(k, s, c, h, w) < 1 or self.frames < 1 or self.group < 1:
            return f"stills {tuple(self.statics.shape)} with {self.frames} frames and group {self.group}"
        if self.dynamics is None:
            return None if self.weight is None and self.bias is None else "an integrator without dynamic memories"
        if tuple(self.dynamics.shape) != (k, s, self.frames, 1, h, w) or s % self.group:
            return (f"dynamic memories {tuple(self.dynamics.shape)} do not pair with stills {tuple(self.statics.shape)} "
                    f"in groups of {self.group}")
        if self.weight is None or tuple(self.weight.shape) != (c, c + 1, 3, 3, 3) or self.bias is None \
                or tuple(self.bias.shape) != (c,):
            return f"the integrator must be a Conv3d({c + 1} -> {c}, 3x3x3) weight and bias"
        return None


def integrate(statics: torch.Tensor, dynamics: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The integrator: stills [B, C, H, W] and dynamic memories [B, T, 1, H, W] -> clips [B, T, C, H, W]."""
    t = dynamics.shape[1]
    x = torch.cat([statics.unsqueeze(2).expand(-1, -1, t, -1, -1), dynamics.transpose(1, 2)], dim=1)  # [B, C+1, T, H, W]
    return F.conv3d(x, weight, bias, padding=1).transpose(1, 2)


def pairing(slots: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(static index, dynamic index) within a class of every clip (j, a, b), in expansion order."""
    j, a, b = torch.meshgrid(torch.arange(slots), torch.arange(group), torch.arange(group), indexing="ij")
    return (group * j + a).flatten(), (group * j + b).flatten()


def compose(statics: torch.Tensor, dynamics: torch.Tensor | None, weight: torch.Tensor | None,
            bias: torch.Tensor | None, group: int, frames: int) -> torch.Tensor:
    """All clips of a memory [K · per_class, T, C, H, W] (differentiable in every argument)."""
    if dynamics is None:
        return statics.flatten(0, 1).unsqueeze(1).expand(-1, frames, -1, -1, -1).contiguous()
    si, di = pairing(statics.shape[1] // group, group)
    s = statics[:, si.to(statics.device)].flatten(0, 1)
    d = dynamics[:, di.to(dynamics.device)].flatten(0, 1)
    return integrate(s, d, weight, bias)
