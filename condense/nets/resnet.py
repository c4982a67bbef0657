"""ResNet-18 for small images, as in the DC/MTT code.

A 3x3 stem (stride 1, no bias, no max-pool) -> norm -> ReLU, then four stages of two
BasicBlocks (64, 128, 256, 512 channels; stages 2-4 start with stride 2 and a 1x1
convolution + norm shortcut), then global average pooling and ``Linear(512, K)``.
Convolutions have no bias. Option ``norm``: ``batch`` (default; the reference calls
this variant ResNet18BN) or ``instance`` (``GroupNorm(C, C, affine=True)``; the
reference's plain ResNet18). This is SRe2L/RDED's "resnet18_modified"; the registered
``resnet18-imagenet`` is torchvision's ResNet-18 (7x7 stride-2 convolution and 3x3
stride-2 max-pool in the stem, for 224 px ImageNet teachers; :func:`from_torchvision`
renames a torchvision state_dict to ours).

Decision: the reference pools with ``avg_pool2d(out, 4)``, which is global pooling only
for 28x28/32x32 inputs and breaks the classifier at 64x64. We use adaptive average
pooling to 1x1, so any image size works and gives the same result as the reference on
32x32 and 28x28 inputs. Parameter names follow the reference (``conv1``, ``bn1``,
``layer{i}.{j}.conv1`` ..., ``shortcut.0/1``, ``classifier``) even with instance norm.
``embed`` is the pooled 512-d vector; ``feature_maps`` is the output of each stage.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from condense.runtime.errors import ArchError
from condense.nets.base import Net, make_norm

STAGES = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection: ``[B, c_in, h, w]`` -> ``[B, c, h/s, w/s]``."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, planes, (0, 0))
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes, (0, 0))
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                make_norm(norm, planes, (0, 0)),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(Net):
    """ResNet-18 for inputs ``[B, channels, H, W]`` of any size; see the module docstring."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], *,
                 norm: str = "batch", stem: str = "cifar") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (channels, image_size[0], image_size[1])
        self.stem = stem
        if stem == "imagenet":  # torchvision's: 7x7 stride 2, then 3x3 max-pool stride 2
            self.conv1 = nn.Conv2d(channels, STAGES[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(channels, STAGES[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = make_norm(norm, STAGES[0], (0, 0))
        in_planes = STAGES[0]
        for i, planes in enumerate(STAGES):
            first_stride = 1 if i == 0 else 2
            stage = nn.Sequential(BasicBlock(in_planes, planes, first_stride, norm),
                                  BasicBlock(planes, planes, 1, norm))
            self.add_module(f"layer{i + 1}", stage)
            in_planes = planes
        self.embed_dim = STAGES[-1]
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def check_input(self, x: torch.Tensor) -> None:
        """Only the channel count matters: global pooling takes any image size."""
        if x.dim() != 4 or x.shape[1] != self.input_shape[0]:
            raise ArchError(f"ResNet18 was built for inputs [B, {self.input_shape[0]}, H, W], "
                            f"got a tensor of shape {list(x.shape)}")

    def _stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output: ``[B, C, H, W]`` -> 4 tensors ``[B, 64..512, h_i, w_i]``."""
        self.check_input(x)
        out = F.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            out = F.max_pool2d(out, 3, stride=2, padding=1)
        maps = []
        for stage in self._stages():
            out = stage(out)
            maps.append(out)
        return maps

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled last stage: ``[B, C, H, W]`` -> ``[B, 512]``."""
        return F.adaptive_avg_pool2d(self.feature_maps(x)[-1], 1).flatten(1)

    @property
    def head(self) -> nn.Linear:
        """The final linear layer."""
        return self.classifier


def build_resnet18(channels: int, num_classes: int, image_size: tuple[int, int],
                   **options) -> ResNet18:
    """Registry factory for ``resnet18``."""
    return ResNet18(channels, num_classes, image_size, **options)


DEFAULTS = {"norm": "batch"}
CHOICES = {"norm": ("batch", "instance")}


def build_resnet18_imagenet(channels: int, num_classes: int, image_size: tuple[int, int], **options) -> ResNet18:
    """Registry factory for ``resnet18-imagenet`` (torchvision's stem)."""
    return ResNet18(channels, num_classes, image_size, stem="imagenet", **options)


def from_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ``resnet18`` state_dict renamed for ``resnet18-imagenet``: its blocks'
    ``downsample`` is our ``shortcut``, its ``fc`` our ``classifier``; the rest are equal."""
    out = {}
    for name, t in state.items():
        name = name.replace(".downsample.", ".shortcut.")
        out["classifier." + name[len("fc."):] if name.startswith("fc.") else name] = t
    return out
