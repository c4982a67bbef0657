"""Networks (torch): spec strings, a registry, the field's architectures, flat layouts.

    from condense import nets, rng
    net = nets.build_net("convnet:width=32", channels=1, num_classes=10,
                         image_size=(28, 28), generator=rng.generator(0))
    layout = nets.FlatLayout.of(net)            # MTT buffer order for the ConvNet
    logits = nets.functional_call(net, layout.flatten(net), x)

Built-in architectures: ``convnet`` (``convnet-circular``: circular padding), ``resnet18`` (``resnet18-imagenet``: torchvision's stem), ``vgg11``, ``alexnet``, ``mlp``, ``mobilenetv2``, ``efficientnet-b0`` (torchvision's);
for clips [B, T, C, H, W]: ``convnet3d`` and ``convnet-frames``
(see their modules for options and the choices made); add your own with
:func:`register_arch`.
"""
from __future__ import annotations

from condense.nets import alexnet, convnet, mlp, mobile, resnet, vgg, video
from condense.nets.base import Net
from condense.nets.flat import FlatLayout, functional_call
from condense.nets.specs import ArchSpec, available_archs, build_net, parse_arch, parse_arch_flag, register_arch

__all__ = [
    "ArchSpec", "FlatLayout", "Net", "available_archs", "build_net", "functional_call",
    "parse_arch", "parse_arch_flag", "register_arch",
]

# overwrite=True: re-importing this package (e.g. importlib.reload) must not fail
for _name, _module, _factory in (
    ("convnet", convnet, convnet.build_convnet),
    ("convnet-circular", convnet, convnet.build_convnet_circular),
    ("resnet18", resnet, resnet.build_resnet18),
    ("resnet18-imagenet", resnet, resnet.build_resnet18_imagenet),
    ("vgg11", vgg, vgg.build_vgg11),
    ("alexnet", alexnet, alexnet.build_alexnet),
    ("mlp", mlp, mlp.build_mlp),
    ("mobilenetv2", mobile, mobile.build_mobilenetv2),
    ("efficientnet-b0", mobile, mobile.build_efficientnet_b0),
):
    register_arch(_name, _factory, _module.DEFAULTS, choices=_module.CHOICES, overwrite=True)
del _name, _module, _factory
register_arch("convnet3d", video.build_convnet3d, video.CONVNET3D_DEFAULTS, choices=video.CONVNET3D_CHOICES,
              overwrite=True)
register_arch("convnet-frames", video.build_convnet_frames, convnet.DEFAULTS, choices=convnet.CHOICES, overwrite=True)
