"""JAX backend, flax networks: the same flat vector gives the same logits as torch (float64)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from condense.runtime.errors import ArchError  # noqa: E402
from condense.jax.nets import build_jax_net  # noqa: E402
from condense.nets import FlatLayout, build_net  # noqa: E402
from condense.runtime.rng import generator  # noqa: E402

torch.set_num_threads(1)


def rel_err(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("spec, channels, hw", [
    ("convnet:width=8,depth=2", 1, (12, 12)),  # padding 3 on the first conv, odd map sizes
    ("convnet:width=6,depth=3,norm=none,pool=max,act=swish", 3, (16, 16)),
    ("convnet:width=4,depth=2,act=leakyrelu", 3, (9, 11)),
    ("mlp:width=16", 3, (8, 8)),
    ("resnet18:norm=instance", 3, (8, 8)),
])
def test_same_flat_vector_same_logits_and_embeddings(spec, channels, hw):
    with jax.enable_x64(True):
        net = build_net(spec, channels, 5, hw, generator=generator(0)).double()
        twin = build_jax_net(spec, channels, 5, hw)
        layout = FlatLayout.of(net)
        assert twin.layout == layout  # names, shapes, offsets: the canonical layout
        g = torch.Generator().manual_seed(1)
        flat = layout.flatten(net) + 0.1 * torch.randn(layout.numel, generator=g, dtype=torch.float64)
        layout.load_into(net, flat)  # norm scales/biases away from 1/0, so a swapped entry would show
        x = torch.randn(3, channels, *hw, generator=g, dtype=torch.float64)
        params = twin.params(jnp.asarray(flat.numpy()))
        xj = jnp.asarray(x.numpy())
        logits = twin.apply(params, xj)
        assert logits.dtype == jnp.float64
        assert rel_err(logits, net(x).detach()) < 1e-10
        assert rel_err(twin.embed(params, xj), net.embed(x).detach()) < 1e-10
        for a, b in zip(twin.feature_maps(params, xj), net.feature_maps(x)):
            assert rel_err(a, b.detach()) < 1e-10
        np.testing.assert_array_equal(np.asarray(twin.flat(params)), flat.numpy())  # the converter round-trips
        # the converted tree is exactly the tree flax itself would build
        shapes = jax.eval_shape(twin.module.init, jax.random.key(0), jnp.zeros((1, channels, *hw)))["params"]
        assert jax.tree.structure(shapes) == jax.tree.structure(params)
        assert [s.shape for s in jax.tree.leaves(shapes)] == [p.shape for p in jax.tree.leaves(params)]


@pytest.mark.parametrize("spec, message", [
    ("convnet:norm=batch", "no JAX twin"),
    ("resnet18", "no JAX twin"),  # batch norm by default
    ("vgg11", "no JAX twin"),
    ("convnet:depth=6", "vanish"),
])
def test_nets_without_a_twin_or_shape_are_refused(spec, message):
    with pytest.raises(ArchError, match=message):
        build_jax_net(spec, 1, 10, (28, 28))


def test_torch_backend_never_imports_jax():
    code = ("import sys, condense, condense.methods, condense.cli.main, trajectories, evals.harness; "
            "assert not [m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'flax', 'optax'))], 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
