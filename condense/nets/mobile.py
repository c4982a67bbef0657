"""MobileNetV2 and EfficientNet-B0, torchvision's (the teachers INFER's ensembles add to ResNet-18).

``mobilenetv2`` and ``efficientnet-b0`` are ``torchvision.models.mobilenet_v2`` and
``efficientnet_b0`` with K classes: the same modules under the same names (``features.*``,
``classifier.1``), so ``condense teacher --weights`` imports torchvision's ImageNet state_dicts
as they are. Option ``stem``: ``imagenet`` (default; torchvision's, 32x down-sampling) or
``cifar``, the small-image variants INFER's CIFAR teachers use (kuangliu's pytorch-cifar): the
stem convolution at stride 1, and for MobileNetV2 also the first 24-channel block (8x down-sampling:
4x4 maps from 32x32 images). A 1-channel dataset gets a 1-channel stem. Activations and dropout
run out of place (the recovery hooks read BatchNorm inputs; nothing may overwrite them).
``embed`` is the pooled last feature map; ``feature_maps`` the output of every stage of ``features``.
"""
from __future__ import annotations

import torch
from torch import nn

from condense.nets.base import Net


class TorchvisionNet(Net):
    """A torchvision classifier of the form ``features`` -> global average pool -> ``classifier``
    (dropout, linear), for inputs ``[B, channels, H, W]``."""

    def __init__(self, model: nn.Module, channels: int, num_classes: int, image_size: tuple[int, int],
                 stride_one: list[nn.Conv2d]) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (channels, image_size[0], image_size[1])
        self.features, self.classifier = model.features, model.classifier
        for conv in stride_one:
            conv.stride = (1, 1)
        stem = self.features[0][0]
        if channels != stem.in_channels:
            self.features[0][0] = nn.Conv2d(channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                                            bias=False)
        for m in self.modules():
            if hasattr(m, "inplace"):
                m.inplace = False
        self.embed_dim = self.head.in_features

    @property
    def head(self) -> nn.Linear:
        return self.classifier[-1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        out = []
        for stage in self.features:
            x = stage(x)
            out.append(x)
        return out


def build_mobilenetv2(channels: int, num_classes: int, image_size: tuple[int, int], *, stem: str = "imagenet"
                      ) -> TorchvisionNet:
    """Registry factory for ``mobilenetv2``."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(num_classes=num_classes)
    small = [model.features[0][0], model.features[2].conv[1][0]] if stem == "cifar" else []
    return TorchvisionNet(model, channels, num_classes, image_size, small)


def build_efficientnet_b0(channels: int, num_classes: int, image_size: tuple[int, int], *, stem: str = "imagenet"
                          ) -> TorchvisionNet:
    """Registry factory for ``efficientnet-b0``."""
    from torchvision.models import efficientnet_b0

    model = efficientnet_b0(num_classes=num_classes)
    return TorchvisionNet(model, channels, num_classes, image_size, [model.features[0][0]] if stem == "cifar" else [])


DEFAULTS = {"stem": "imagenet"}
CHOICES = {"stem": ("imagenet", "cifar")}
