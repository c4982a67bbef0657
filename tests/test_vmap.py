"""Seeds at once (evals/vmap.py): K runs stacked as one grouped network equal K runs alone."""
from __future__ import annotations

import pytest
import torch

from condense.runtime.errors import ConfigError
from condense.nets import build_net
from condense.runtime.rng import generator
from condense.synset import LabelSpec
from condense.train import STREAM_INIT, TrainProtocol, accuracy, evaluate, train_model
from evals import vmap
from evals.vmap import StackedConvNet, plan_stack, stack_reason, stacked_accuracy, train_stacked, train_stacked_nets

torch.set_num_threads(1)  # equality claims hold at a fixed thread count
ARCH = "convnet:width=8,depth=2"
SEED = 7


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(22, 3, 16, 16, generator=g)
    y = torch.arange(22) % 4
    xt = torch.randn(60, 3, 16, 16, generator=g)
    yt = torch.arange(60) % 4
    return x, y, xt, yt


def _net(arch, r, channels=3, size=(16, 16), dtype=torch.float32):
    return build_net(arch, channels, 4, size, generator=generator(SEED, r, 0, 0, STREAM_INIT)).to(dtype)


def _assert_same_params(a, b, rel):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        scale = float(q.detach().abs().max()) or 1.0
        assert float((p.detach() - q.detach()).abs().max()) <= rel * scale, name


@pytest.mark.parametrize("arch,dsa,spec", [
    (ARCH, True, None),
    (ARCH, False, None),
    (ARCH, True, LabelSpec(kind="logits", loss="kl", temperature=2.0)),
    ("convnet:width=8,depth=2,norm=layer,pool=max,act=leakyrelu", True, LabelSpec(kind="regression", loss="mse")),
    ("convnet:width=8,depth=2,norm=none,pool=none,act=swish", False, LabelSpec(kind="probabilities", loss="kl")),
])
def test_stacked_nets_equal_runs_alone(data, arch, dsa, spec):
    x, y, xt, yt = data
    if spec is not None and spec.kind != "hard":
        g = torch.Generator().manual_seed(1)
        y = torch.randn(x.shape[0], 4, generator=g)
        if spec.kind == "probabilities":
            y = y.softmax(1)
    protocol = TrainProtocol(epochs=3, batch_size=8, dsa=dsa, decay_at=0.5)
    runs = [4, 0, 2]  # arbitrary order
    nets = [_net(arch, r) for r in runs]
    stack = train_stacked_nets(nets, x, y, protocol, seed=SEED, runs=runs, lr=0.05, label_spec=spec)
    stacked_accs = stacked_accuracy(stack, xt, yt)
    for net, r, acc in zip(nets, runs, stacked_accs):
        ref = _net(arch, r)
        train_model(ref, x, y, protocol, seed=SEED, run=r, lr=0.05, label_spec=spec)
        _assert_same_params(net, ref, 1e-5)
        assert acc == accuracy(ref, xt, yt) == accuracy(net, xt, yt)


def test_stacked_nets_follow_asts_decay_restart(data):
    x, y, _, _ = data
    protocol = TrainProtocol(epochs=3, batch_size=8, dsa=False, decay_epoch=2, decay_factor=0.6, decay_restart=True)
    runs = [1, 3]
    nets = [_net(ARCH, r) for r in runs]
    train_stacked_nets(nets, x, y, protocol, seed=SEED, runs=runs, lr=0.05)
    for net, r in zip(nets, runs):
        ref = _net(ARCH, r)
        train_model(ref, x, y, protocol, seed=SEED, run=r, lr=0.05)
        _assert_same_params(net, ref, 1e-5)


def test_float64_and_one_channel_input():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 1, 12, 12, generator=g, dtype=torch.float64)
    y = torch.arange(12) % 4
    arch = "convnet:width=4,depth=2"
    protocol = TrainProtocol(epochs=2, batch_size=5)
    runs = [1, 3]
    nets = [_net(arch, r, 1, (12, 12), torch.float64) for r in runs]
    train_stacked_nets(nets, x, y, protocol, seed=SEED, runs=runs, lr=0.1)
    for net, r in zip(nets, runs):
        ref = _net(arch, r, 1, (12, 12), torch.float64)
        train_model(ref, x, y, protocol, seed=SEED, run=r, lr=0.1)
        _assert_same_params(net, ref, 1e-10)


def test_train_stacked_equals_evaluate_and_k1(data):
    x, y, xt, yt = data
    protocol = TrainProtocol(epochs=2, batch_size=16, lr=0.03)
    runs = [2, 0]
    want = [evaluate(x, y, ARCH, protocol, SEED, run=r, test=(xt, yt), num_classes=4, lr=0.5) for r in runs]
    assert train_stacked(x, y, ARCH, protocol, SEED, runs, test=(xt, yt), num_classes=4, lr=0.5) == want
    assert train_stacked(x, y, ARCH, protocol, SEED, runs[:1], test=(xt, yt), num_classes=4, lr=0.5) == want[:1]
    # max_stack=1: each run trained alone by train_model, then tested stacked
    assert train_stacked(x, y, ARCH, protocol, SEED, runs, test=(xt, yt), num_classes=4, lr=0.5,
                         max_stack=1) == want
    assert train_stacked(x, y, ARCH, protocol, SEED, [], test=(xt, yt), num_classes=4) == []


def test_large_batches_train_sequentially(data, monkeypatch):
    x, y, xt, yt = data
    assert plan_stack(10, 256, 8) == 8
    assert plan_stack(500, 256, 8) == 1
    assert plan_stack(100, 256, 8) == 1
    assert plan_stack(10, 256, 8, max_stack=3) == 3
    assert plan_stack(500, 256, 8, device="cuda") == 8
    protocol = TrainProtocol(epochs=1, batch_size=64)
    calls = []
    monkeypatch.setattr(vmap, "train_stacked_nets", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(vmap, "_CPU_MAX_BATCH", 8)  # 22 images, batch 22 > 8: sequential
    want = [evaluate(x, y, ARCH, protocol, SEED, run=r, test=(xt, yt), num_classes=4) for r in (0, 1)]
    assert train_stacked(x, y, ARCH, protocol, SEED, [0, 1], test=(xt, yt), num_classes=4) == want
    assert calls == []


def test_stacked_eval_chunks_agree(data):
    x, y, xt, yt = data
    nets = [_net(ARCH, r) for r in range(3)]
    stack = StackedConvNet.of(nets)
    want = [accuracy(n, xt, yt) for n in nets]
    assert stacked_accuracy(stack, xt, yt) == want
    assert stacked_accuracy(stack, xt, yt, batch_size=7) == want
    logits = stack(torch.cat([xt[:5]] * 3, dim=1))
    for k, n in enumerate(nets):
        assert torch.allclose(logits[:, k], n(xt[:5]), atol=1e-5)


def test_stack_reason():
    assert stack_reason("convnet") is None
    assert stack_reason("convnet:norm=layer,pool=max,act=sigmoid,depth=2,width=16") is None
    for arch in ("convnet:norm=batch", "resnet18", "vgg11", "alexnet", "mlp"):
        reason = stack_reason(arch)
        assert isinstance(reason, str) and "\n" not in reason and reason
    assert "batch" in stack_reason("convnet:norm=batch")
    assert "resnet18" in stack_reason("resnet18")
    assert stack_reason("nosuchnet") is not None
    with pytest.raises(ConfigError, match="resnet18"):
        train_stacked(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64), "resnet18", TrainProtocol(epochs=1),
                      0, [0], test=(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.int64)), num_classes=2)
