"""The canonical flat parameter layout, and running a network from a flat vector.

A network's parameters, in ``module.named_parameters()`` order, concatenated after
flattening each one (row-major), form one vector of ``numel`` numbers. This is the
row format of expert trajectories and what trajectory matching differentiates
through. :class:`FlatLayout` records the order, names, shapes and offsets, so a vector
can be checked against a network before use and stored next to the numbers (as a
plain dict of lists, e.g. in HDF5 attributes). For the ConvNet this order is the MTT
replay-buffer order.

:func:`functional_call` runs a module with its parameters taken from a flat vector via
``torch.func.functional_call`` (no module state is replaced), so gradients reach both
the vector and the input. A batch of vectors ``[M, numel]`` is run with
``torch.func.vmap``; that needs a module that does not update buffers in place
(BatchNorm in train mode does), and on the CPU vmapped convolutions can be slower
than a loop over models.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from condense.runtime.errors import ArchError, FormatError

ParamSource = nn.Module | Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


@dataclass(frozen=True)
class FlatLayout:
    """Names, shapes and offsets of the parameters in a flat vector of ``numel`` numbers."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numel: int

    def __post_init__(self) -> None:
        expected = _offsets(self.shapes)
        if len(self.names) != len(self.shapes) or self.offsets != expected[:-1] \
                or self.numel != expected[-1] or len(set(self.names)) != len(self.names):
            raise ValueError(f"inconsistent FlatLayout: {len(self.names)} names, "
                             f"{len(self.shapes)} shapes, offsets {self.offsets}, numel {self.numel}")

    @classmethod
    def from_shapes(cls, names: Sequence[str], shapes: Sequence[Sequence[int]]) -> FlatLayout:
        """The layout of parameters ``names`` with ``shapes``, packed in that order."""
        shapes = tuple(tuple(int(s) for s in shape) for shape in shapes)
        offsets = _offsets(shapes)
        return cls(tuple(names), shapes, offsets[:-1], offsets[-1])

    @classmethod
    def of(cls, source: nn.Module | Mapping[str, torch.Tensor]) -> FlatLayout:
        """The layout of a module (``named_parameters()`` order) or of a name -> tensor dict."""
        items = source.named_parameters() if isinstance(source, nn.Module) else source.items()
        pairs = [(name, tuple(t.shape)) for name, t in items]
        return cls.from_shapes([n for n, _ in pairs], [s for _, s in pairs])

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each parameter."""
        return tuple(math.prod(s) for s in self.shapes)

    def flatten(self, source: ParamSource, *, keep_grad: bool = False) -> torch.Tensor:
        """Pack parameters into a new vector ``[numel]``.

        ``source`` is a module, a name -> tensor dict, or a sequence of tensors in layout
        order (e.g. one MTT buffer snapshot); it must match this layout. The result is
        a copy, detached from autograd unless ``keep_grad``.
        """
        tensors = self._tensors(source)
        if not keep_grad:
            tensors = [t.detach() for t in tensors]
        if not tensors:
            return torch.zeros(0)
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``flat`` ``[..., numel]`` into ``{name: [..., *shape]}`` views of ``flat``.

        Being views, gradients with respect to them flow to ``flat``.
        """
        if flat.shape[-1:] != (self.numel,):
            raise ArchError(f"flat parameter vector has shape {list(flat.shape)}, "
                            f"expected [..., {self.numel}] for this network")
        lead = flat.shape[:-1]
        return {name: flat[..., off:off + size].view(*lead, *shape)
                for name, shape, off, size in zip(self.names, self.shapes, self.offsets, self.sizes)}

    @torch.no_grad()
    def load_into(self, module: nn.Module, flat: torch.Tensor) -> nn.Module:
        """Copy ``flat`` ``[numel]`` into ``module``'s parameters in place; returns ``module``."""
        self.check_compatible(FlatLayout.of(module))
        params = dict(module.named_parameters())
        for name, value in self.unflatten(flat).items():
            params[name].copy_(value)
        return module

    def to_json(self) -> dict:
        """A plain dict of lists (JSON-serialisable) that :meth:`from_json` reads back."""
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes],
                "offsets": list(self.offsets), "numel": self.numel}

    @classmethod
    def from_json(cls, data: Mapping | str) -> FlatLayout:
        """Read :meth:`to_json`'s dict (or its JSON text); FormatError if it is malformed."""
        try:
            if isinstance(data, (str, bytes)):
                data = json.loads(data)
            return cls(tuple(str(n) for n in data["names"]),
                       tuple(tuple(int(s) for s in shape) for shape in data["shapes"]),
                       tuple(int(o) for o in data["offsets"]), int(data["numel"]))
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(f"malformed flat parameter layout: {err}") from None

    def check_compatible(self, other: FlatLayout) -> None:
        """Raise ArchError naming the first entry where ``other`` differs from this layout."""
        for i, (a, b) in enumerate(zip(zip(self.names, self.shapes), zip(other.names, other.shapes))):
            if a != b:
                raise ArchError(f"parameter layouts differ at entry {i}: "
                                f"{a[0]} {list(a[1])} vs {b[0]} {list(b[1])}")
        if len(self.names) != len(other.names):
            raise ArchError(f"parameter layouts differ in length: {len(self.names)} "
                            f"vs {len(other.names)} parameters")

    def _tensors(self, source: ParamSource) -> list[torch.Tensor]:
        if isinstance(source, (nn.Module, Mapping)):
            self.check_compatible(FlatLayout.of(source))
            values = source.named_parameters() if isinstance(source, nn.Module) else source.items()
            return [t for _, t in values]
        tensors = list(source)
        if len(tensors) != len(self.names):
            raise ArchError(f"got {len(tensors)} parameter tensors, the layout has {len(self.names)}")
        for i, (t, name, shape) in enumerate(zip(tensors, self.names, self.shapes)):
            if tuple(t.shape) != shape:
                raise ArchError(f"parameter tensor {i} has shape {list(t.shape)}, "
                                f"expected {name} {list(shape)}")
        return tensors


def functional_call(module: nn.Module, flat: torch.Tensor, x: torch.Tensor,
                    buffers: Mapping[str, torch.Tensor] | None = None, *,
                    x_per_model: bool = False) -> torch.Tensor:
    """Run ``module(x)`` with its parameters taken from ``flat``.

    ``flat`` is ``[numel]`` (the module's :class:`FlatLayout`) and the result is what
    ``module(x)`` gives with those parameters, e.g. logits ``[B, K]``, differentiable
    with respect to ``flat`` and ``x``. ``buffers`` optionally replaces some of the
    module's buffers. A batch ``flat`` ``[M, numel]`` runs M models through
    ``torch.func.vmap`` and gives ``[M, B, K]``; ``x`` is shared, or ``[M, B, ...]``
    with one batch per model when ``x_per_model``.
    """
    layout = FlatLayout.of(module)
    extra = dict(buffers or {})

    def run(one_flat: torch.Tensor, one_x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, {**layout.unflatten(one_flat), **extra}, (one_x,))

    if flat.dim() == 1:
        return run(flat, x)
    if flat.dim() == 2:
        return torch.func.vmap(run, in_dims=(0, 0 if x_per_model else None))(flat, x)
    raise ArchError(f"flat parameters must be [numel] or [models, numel], got shape {list(flat.shape)}")


def _offsets(shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Start offset of each shape, then the total: ``(0, n0, n0 + n1, ..., total)``."""
    out = [0]
    for shape in shapes:
        out.append(out[-1] + math.prod(shape))
    return tuple(out)
