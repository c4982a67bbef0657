"""Parameter initialisation drawn from an explicit generator.

PyTorch's layers initialise themselves from the global RNG when constructed; condense
never touches the global RNG, so :func:`condense.nets.build_net` constructs networks on
the ``meta`` device (no storage, no random draws), materialises them on the CPU and
then calls :func:`init_parameters`, which reproduces PyTorch's default formulas with
draws from the given ``torch.Generator``:

- ``Conv*d`` and ``Linear``: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which
  is what ``kaiming_uniform_(a=sqrt(5))`` plus the default bias rule amount to;
- norm layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm): weight 1, bias 0,
  running mean 0, running variance 1, batch counter 0.

Draws happen in ``named_modules()`` order, weight before bias, so the same generator
state always gives the same network. A user's own layer type is initialised by giving
it a ``condense_init(generator)`` method that fills its direct parameters and buffers;
a parameter or buffer condense cannot initialise raises :class:`ArchError` rather than
being left as uninitialised memory.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from condense.runtime.errors import ArchError

_NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def fresh_generator() -> torch.Generator:
    """A CPU generator seeded from OS entropy, for callers that pass no generator."""
    g = torch.Generator()
    g.seed()
    return g


@torch.no_grad()
def uniform_fan_in(t: torch.Tensor, fan_in: int, generator: torch.Generator) -> None:
    """Fill ``t`` in place with U(-1/sqrt(fan_in), 1/sqrt(fan_in)) draws from ``generator``."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    t.uniform_(-bound, bound, generator=generator)


def _fan_in(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    w = module.weight  # conv weight: [out, in/groups, *kernel]
    return w.shape[1] * math.prod(w.shape[2:])


@torch.no_grad()
def _init_norm(module: nn.Module) -> None:
    if getattr(module, "weight", None) is not None:
        module.weight.fill_(1.0)
    if getattr(module, "bias", None) is not None:
        module.bias.zero_()
    if isinstance(module, _NormBase):
        # zeros the mean and counter, sets the variance to 1; no-op without running stats
        module.reset_running_stats()


def _init_module(name: str, module: nn.Module, generator: torch.Generator) -> None:
    if hasattr(module, "condense_init"):
        module.condense_init(generator)
        return
    if isinstance(module, (_ConvNd, nn.Linear)):
        fan_in = _fan_in(module)
        uniform_fan_in(module.weight, fan_in, generator)
        if module.bias is not None:
            uniform_fan_in(module.bias, fan_in, generator)
        return
    if isinstance(module, _NORM_TYPES):
        _init_norm(module)
        return
    own = [n for n, _ in module.named_parameters(recurse=False)]
    own += [n for n, _ in module.named_buffers(recurse=False)]
    if own:
        where = name or "<root>"
        raise ArchError(
            f"cannot initialise {', '.join(own)} of {type(module).__name__} at '{where}': "
            "give that module a condense_init(generator) method"
        )


def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every parameter and buffer of ``module`` in place; returns ``module``.

    ``generator`` must be a CPU generator; it is advanced by the draws.
    """
    if generator.device.type != "cpu":
        raise ValueError(f"network init needs a CPU generator, got one on {generator.device}")
    for name, sub in module.named_modules():
        _init_module(name, sub, generator)
    return module
