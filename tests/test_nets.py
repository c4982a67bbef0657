"""Tests of condense.nets: specs, registry, architectures, init, flat layouts."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from condense.runtime import rng
from condense.runtime.errors import ArchError, FormatError
from condense.nets import (ArchSpec, FlatLayout, available_archs, build_net, functional_call,
                           parse_arch, register_arch)
from condense.nets import specs as specs_module
from condense.nets.base import batch_independent
from condense.nets.pool import AvgPool2x2, avg_pool_2x2

# (channels, H, W, classes) of the registered datasets, plus the toy set
SHAPES = [(1, 28, 28, 10), (3, 32, 32, 10), (3, 32, 32, 100), (3, 64, 64, 200), (3, 16, 16, 4)]
# small variants where the arch has a size option; resnet18/vgg11 have none
SMALL = ["convnet:width=8", "resnet18", "resnet18:norm=instance", "vgg11", "vgg11:norm=batch",
         "alexnet", "mlp:width=16"]


def _build(spec, shape, seed=0):
    c, h, w, k = shape
    return build_net(spec, c, k, (h, w), generator=rng.generator(seed))


def _input(shape, batch=2, seed=1):
    c, h, w, _ = shape
    return torch.randn(batch, c, h, w, generator=rng.generator(seed))


def _supports(spec, shape):
    # VGG-11's five poolings leave nothing of a 16x16 image
    return not (spec.startswith("vgg11") and shape[1] < 28)


# ---------------------------------------------------------------- architectures

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("spec", SMALL)
def test_forward_backward_every_arch_and_dataset_shape(spec, shape):
    if not _supports(spec, shape):
        with pytest.raises(ArchError, match="vanish"):
            _build(spec, shape)
        return
    net = _build(spec, shape)
    x = _input(shape).requires_grad_()
    logits = net(x)
    assert logits.shape == (2, shape[3])
    assert net.num_classes == shape[3]
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("shape", [(1, 28, 28, 10), (3, 32, 32, 10)], ids=["fmnist", "cifar10"])
def test_default_convnet_forward(shape):
    net = _build("convnet", shape)
    assert str(net.spec) == "convnet:act=relu,depth=3,norm=instance,pool=avg,width=128"
    assert net(_input(shape)).shape == (2, 10)
    assert net.embed_dim == 128 * 4 * 4


@pytest.mark.parametrize("name", ["convnet", "resnet18", "vgg11", "alexnet", "mlp"])
def test_default_configs_forward(name):
    net = _build(name, (3, 32, 32, 10))
    assert net.spec == parse_arch(name)
    out = net(_input((3, 32, 32, 10)))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("spec,shape", [
    ("convnet:depth=5", (3, 16, 16, 4)),
    ("convnet:depth=6", (1, 28, 28, 10)),
    ("vgg11", (3, 16, 16, 4)),
    ("alexnet", (3, 4, 4, 4)),
])
def test_impossible_shape_raises(spec, shape):
    with pytest.raises(ArchError, match=r"cannot take .* feature maps vanish"):
        _build(spec, shape)


def test_convnet_depth3_on_toy_shape_works():
    net = _build("convnet:width=8,depth=3", (3, 16, 16, 4))
    assert [tuple(m.shape) for m in net.feature_maps(_input((3, 16, 16, 4)))] == \
        [(2, 8, 8, 8), (2, 8, 4, 4), (2, 8, 2, 2)]


def test_convnet_fashion_mnist_matches_mtt_layout():
    net = _build("convnet:width=32,depth=3", (1, 28, 28, 10))
    assert sum(p.numel() for p in net.parameters()) == 24_138
    expected = [((32, 1, 3, 3), "conv"), ((32,), "conv"), ((32,), "norm"), ((32,), "norm"),
                ((32, 32, 3, 3), "conv"), ((32,), "conv"), ((32,), "norm"), ((32,), "norm"),
                ((32, 32, 3, 3), "conv"), ((32,), "conv"), ((32,), "norm"), ((32,), "norm"),
                ((10, 512), "fc"), ((10,), "fc")]
    owners = {id(p): type(m) for m in net.modules() for p in m.parameters(recurse=False)}
    kinds = {nn.Conv2d: "conv", nn.GroupNorm: "norm", nn.Linear: "fc"}
    got = [(tuple(p.shape), kinds[owners[id(p)]]) for p in net.parameters()]
    assert got == expected
    # the reference's state-dict names, so its checkpoints load unchanged
    assert [n for n, _ in net.named_parameters()][:5] == [
        "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
        "features.4.weight"]
    # first conv pads by 3: a 28x28 image is treated as 32x32
    assert net.features[0].padding == (3, 3)
    layout = FlatLayout.of(net)
    assert layout.numel == 24_138 and layout.names[-2:] == ("classifier.weight", "classifier.bias")


@pytest.mark.parametrize("spec,shape,count", [
    ("convnet:width=32", (3, 32, 32, 10), 24_714),
    ("resnet18", (3, 32, 32, 10), 11_173_962),  # the reference's ResNet18BN
    ("vgg11", (3, 32, 32, 10), 9_231_114),
    ("alexnet", (3, 32, 32, 10), 1_872_202),
    ("alexnet", (1, 28, 28, 10), 1_865_802),
    ("mlp", (1, 28, 28, 10), 118_282),
])
def test_parameter_counts_match_the_reference(spec, shape, count):
    assert sum(p.numel() for p in _build(spec, shape).parameters()) == count


def test_classifier_inputs_follow_the_image_size():
    assert _build("vgg11", (3, 64, 64, 200)).embed_dim == 512 * 2 * 2
    assert _build("alexnet", (3, 64, 64, 200)).embed_dim == 192 * 8 * 8
    assert _build("convnet:width=8", (3, 64, 64, 200)).embed_dim == 8 * 8 * 8
    assert _build("resnet18", (3, 64, 64, 200)).embed_dim == 512


@pytest.mark.parametrize("spec,n_maps", [("convnet:width=8", 3), ("convnet:width=8,depth=2", 2),
                                         ("resnet18", 4), ("vgg11", 5), ("alexnet", 3),
                                         ("mlp:width=16", 2), ("mlp:width=16,depth=4", 3)])
def test_embed_and_feature_maps(spec, n_maps):
    shape = (3, 32, 32, 10)
    net = _build(spec, shape).eval()
    x = _input(shape, batch=3)
    emb = net.embed(x)
    assert emb.shape == (3, net.embed_dim)
    assert isinstance(net.head, nn.Linear) and net.head.in_features == net.embed_dim
    assert torch.equal(net.head(emb), net(x))
    assert list(net.modules())[-1] is net.head  # the last layer, named as in the reference
    maps = net.feature_maps(x)
    assert len(maps) == n_maps
    assert all(m.shape[0] == 3 for m in maps)
    if not spec.startswith("mlp"):
        sizes = [m.shape[-1] for m in maps]
        assert sizes == sorted(sizes, reverse=True) and all(m.dim() == 4 for m in maps)


def test_wrong_input_shape_is_a_clear_error():
    net = _build("convnet:width=8", (1, 28, 28, 10))
    with pytest.raises(ArchError, match=r"built for inputs \[B, 1, 28, 28\]"):
        net(torch.zeros(2, 1, 32, 32))
    resnet = _build("resnet18:norm=instance", (3, 32, 32, 10))
    assert resnet(torch.zeros(2, 3, 40, 40)).shape == (2, 10)  # global pooling takes any size
    with pytest.raises(ArchError):
        resnet(torch.zeros(2, 1, 32, 32))


@pytest.mark.parametrize("norm,kind", [("instance", nn.GroupNorm), ("batch", nn.BatchNorm2d),
                                       ("layer", nn.LayerNorm)])
def test_convnet_norms_and_pools(norm, kind):
    net = _build(f"convnet:width=8,norm={norm},pool=max", (3, 32, 32, 10))
    assert isinstance(net.features[1], kind) and isinstance(net.features[3], nn.MaxPool2d)
    if norm == "instance":
        assert net.features[1].num_groups == 8
    none = _build("convnet:width=8,norm=none,pool=none,depth=2", (3, 16, 16, 4))
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in none.modules())
    assert none.embed_dim == 8 * 16 * 16


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 2, 7, 9), (1, 1, 2, 2), (4, 5, 6, 6, 4)])
def test_fast_pool_equals_avg_pool2d_with_gradients(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    flat = x.flatten(0, -4) if x.dim() > 4 else x
    ref = nn.functional.avg_pool2d(flat, 2).reshape(*shape[:-2], shape[-2] // 2, shape[-1] // 2)
    torch.testing.assert_close(avg_pool_2x2(x), ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(avg_pool_2x2(x), x, g)[0], torch.autograd.grad(ref, x, g)[0])
    small = torch.randn(2, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(avg_pool_2x2, (small,)) and torch.autograd.gradgradcheck(avg_pool_2x2, (small,))


def test_fast_pool_under_vmap_and_in_the_convnet():
    xs = torch.randn(3, 2, 4, 8, 8)
    torch.testing.assert_close(torch.func.vmap(avg_pool_2x2)(xs),
                               nn.functional.avg_pool2d(xs.flatten(0, 1), 2).unflatten(0, (3, 2)))
    net = _build("convnet:width=8,depth=2", (3, 16, 16, 4))
    assert isinstance(net.features[3], AvgPool2x2) and not list(net.features[3].parameters())
    x = torch.randn(5, 3, 16, 16)
    slow = nn.Sequential(*[nn.AvgPool2d(2, 2) if isinstance(m, AvgPool2x2) else m for m in net.features])
    torch.testing.assert_close(net.embed(x), slow(x).flatten(1))


def test_batch_independent():
    assert batch_independent(_build("convnet:width=8", (3, 32, 32, 10)))
    bn = _build("convnet:width=8,norm=batch", (3, 32, 32, 10))
    assert not batch_independent(bn.train()) and batch_independent(bn.eval())


# ---------------------------------------------------------------- initialisation

@pytest.mark.parametrize("spec", ["convnet:width=8,norm=batch", "resnet18:norm=instance",
                                  "alexnet", "mlp:width=16"])
def test_same_seed_same_weights_different_seed_different(spec):
    shape = (3, 32, 32, 10)
    a, b, c = _build(spec, shape, 0), _build(spec, shape, 0), _build(spec, shape, 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_build_never_touches_the_global_rng():
    before = torch.get_rng_state()
    _build("convnet:width=8", (3, 32, 32, 10))
    build_net("mlp:width=8", 3, 10, (8, 8))  # generator=None: OS-seeded, still not global
    assert torch.equal(before, torch.get_rng_state())


def test_no_generator_gives_fresh_weights():
    a = build_net("mlp:width=8", 3, 10, (8, 8))
    b = build_net("mlp:width=8", 3, 10, (8, 8))
    assert not torch.equal(a.fc_1.weight, b.fc_1.weight)


def test_init_follows_pytorch_default_formulas():
    net = _build("convnet:width=64,norm=batch", (3, 32, 32, 10))
    conv, bn = net.features[4], net.features[5]
    bound = 1 / math.sqrt(64 * 9)
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.99 * bound
    assert conv.bias.abs().max() <= bound
    # U(-b, b) has std b/sqrt(3)
    assert abs(conv.weight.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    fc = net.classifier
    assert fc.weight.abs().max() <= 1 / math.sqrt(fc.in_features)
    assert torch.equal(bn.weight, torch.ones(64)) and torch.equal(bn.bias, torch.zeros(64))
    assert torch.equal(bn.running_mean, torch.zeros(64))
    assert torch.equal(bn.running_var, torch.ones(64))
    assert bn.num_batches_tracked.item() == 0


def test_init_refuses_a_parameter_it_does_not_know(user_arch):
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.empty(3))

        def forward(self, x):
            return x * self.gain

    user_arch("scaled", lambda c, k, size: nn.Sequential(Scale(), nn.Flatten(),
                                                         nn.Linear(c * size[0] * size[1], k)), {})
    with pytest.raises(ArchError, match=r"cannot initialise gain of Scale at '0'.*condense_init"):
        build_net("scaled", 3, 10, (4, 4), generator=rng.generator(0))


# ---------------------------------------------------------------- specs and registry

@pytest.mark.parametrize("text", ["convnet", "convnet:width=32,depth=3", "convnet:norm=batch,pool=max",
                                  "resnet18", "resnet18:norm=instance", "vgg11", "alexnet", "mlp",
                                  "mlp:width=256", " ConvNet : Width=32 , NORM=Layer "])
def test_spec_round_trip(text):
    spec = parse_arch(text)
    assert isinstance(spec, ArchSpec)
    assert parse_arch(str(spec)) == spec
    assert str(parse_arch(str(spec))) == str(spec)


def test_spec_is_canonical_and_typed():
    spec = parse_arch("convnet:width=32,depth=3")
    assert str(spec) == "convnet:act=relu,depth=3,norm=instance,pool=avg,width=32"
    assert spec.options["width"] == 32 and isinstance(spec.options["width"], int)
    assert parse_arch("convnet:depth=3,width=32") == spec
    assert hash(parse_arch("convnet:depth=3,width=32")) == hash(spec)
    assert str(parse_arch("resnet18")) == "resnet18:norm=batch"
    assert str(parse_arch("vgg11")) == "vgg11:norm=instance"
    assert str(parse_arch("mlp")) == "mlp:depth=3,width=128"
    assert spec.replace(width=64).options["width"] == 64
    assert parse_arch(ArchSpec("convnet", {"width": 16})) == parse_arch("convnet:width=16")
    assert set(available_archs()) >= {"convnet", "resnet18", "vgg11", "alexnet", "mlp"}


@pytest.mark.parametrize("text,pattern", [
    ("", r"empty architecture spec; available: .*convnet"),
    ("convnot", r"unknown architecture 'convnot'; available: alexnet, convnet, convnet-circular, .*efficientnet-b0, mlp, "
                r"mobilenetv2, resnet18, resnet18-imagenet, vgg11"),
    ("convnet:widht=3", r"convnet has no option 'widht'; valid options: act, depth, norm, pool, width"),
    ("convnet:width=abc", r"width='abc' is not a valid int"),
    ("convnet:width=0", r"width=0 must be an integer from 1"),
    ("convnet:norm=group", r"norm=group is not one of: instance, batch, layer, none"),
    ("resnet18:norm=layer", r"norm=layer is not one of: batch, instance"),
    ("convnet:width", r"bad option 'width' .* expected key=value"),
    ("convnet:width=3,width=4", r"option 'width' given twice"),
    ("mlp:depth=1", r"depth=1 must be an integer from 2"),
])
def test_spec_errors(text, pattern):
    with pytest.raises(ArchError, match=pattern):
        parse_arch(text)


def test_spec_errors_are_one_line():
    with pytest.raises(ArchError) as info:
        build_net("convnet:depth=9", 3, 10, (32, 32))
    assert "\n" not in str(info.value)


def test_arch_spec_replace_validates():
    with pytest.raises(ArchError):
        parse_arch("convnet").replace(norm="fancy")
    with pytest.raises(ArchError):
        parse_arch("convnet").replace(width="wide")


@pytest.fixture
def user_arch():
    added = []

    def add(name, factory, defaults, **kw):
        register_arch(name, factory, defaults, **kw)
        added.append(name)

    yield add
    for name in added:
        specs_module._REGISTRY.pop(name, None)


def test_register_user_arch(user_arch):
    class Tiny(nn.Module):
        def __init__(self, c, k, size, hidden, act):
            super().__init__()
            self.num_classes = k
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * size[0] * size[1], hidden),
                                      nn.Tanh() if act == "tanh" else nn.ReLU())
            self.head = nn.Linear(hidden, k)

        def forward(self, x):
            return self.head(self.body(x))

    user_arch("tiny", lambda c, k, size, **o: Tiny(c, k, size, **o), {"hidden": 8, "act": "tanh"},
              choices={"act": ("tanh", "relu")})
    assert "tiny" in available_archs()
    assert str(parse_arch("tiny:hidden=4")) == "tiny:act=tanh,hidden=4"
    net = build_net("tiny:hidden=4", 1, 3, (5, 5), generator=rng.generator(7))
    again = build_net("tiny:hidden=4", 1, 3, (5, 5), generator=rng.generator(7))
    assert net.head.weight.shape == (3, 4)
    assert torch.equal(net.head.weight, again.head.weight)
    assert net(torch.zeros(2, 1, 5, 5)).shape == (2, 3)
    with pytest.raises(ArchError, match="act=sigmoid is not one of: tanh, relu"):
        parse_arch("tiny:act=sigmoid")
    with pytest.raises(ArchError, match="already registered"):
        register_arch("tiny", lambda *a, **k: None, {})
    with pytest.raises(ArchError, match="bad architecture name"):
        register_arch("Bad Name", lambda *a, **k: None, {})


def test_user_module_with_condense_init(user_arch):
    class Gain(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.empty(4))

        def condense_init(self, generator):
            with torch.no_grad():
                self.gain.normal_(generator=generator)

        def forward(self, x):
            return x.flatten(1)[:, :4] * self.gain

    user_arch("gain", lambda c, k, size: Gain(), {})
    a = build_net("gain", 1, 4, (2, 2), generator=rng.generator(3))
    b = build_net("gain", 1, 4, (2, 2), generator=rng.generator(3))
    assert torch.equal(a.gain, b.gain) and a.gain.abs().sum() > 0


def test_build_net_rejects_bad_shapes():
    with pytest.raises(ArchError, match="at least one channel"):
        build_net("convnet", 0, 10, (32, 32))
    with pytest.raises(ArchError, match="image_size"):
        build_net("convnet", 3, 10, (32,))


# ---------------------------------------------------------------- flat layout

def _convnet_fmnist():
    return _build("convnet:width=8", (1, 28, 28, 10))


def test_flatten_unflatten_round_trip():
    net = _convnet_fmnist()
    layout = FlatLayout.of(net)
    flat = layout.flatten(net)
    assert flat.shape == (layout.numel,) and not flat.requires_grad
    params = layout.unflatten(flat)
    assert list(params) == [n for n, _ in net.named_parameters()]
    for name, p in net.named_parameters():
        assert torch.equal(params[name], p.detach())
        assert params[name].untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    # flatten copies: editing the vector leaves the module alone
    flat.zero_()
    assert net.classifier.weight.abs().sum() > 0
    # the same numbers from a list in parameters() order (an MTT buffer snapshot)
    snapshot = [p.detach().clone() for p in net.parameters()]
    assert torch.equal(layout.flatten(snapshot), layout.flatten(net))
    assert layout.offsets[1] == net.features[0].weight.numel()


def test_flatten_keep_grad_and_unflatten_views_carry_gradients():
    net = _convnet_fmnist()
    layout = FlatLayout.of(net)
    kept = layout.flatten(net, keep_grad=True)
    kept.sum().backward()
    assert torch.equal(net.classifier.bias.grad, torch.ones(10))
    flat = layout.flatten(net).requires_grad_()
    (layout.unflatten(flat)["classifier.bias"] * 2).sum().backward()
    grad = layout.unflatten(flat.grad)
    assert torch.equal(grad["classifier.bias"], torch.full((10,), 2.0))
    assert grad["features.0.weight"].abs().sum() == 0


def test_unflatten_batched_and_wrong_size():
    layout = FlatLayout.of(_convnet_fmnist())
    batch = torch.randn(3, layout.numel)
    parts = layout.unflatten(batch)
    assert parts["features.0.weight"].shape == (3, 8, 1, 3, 3)
    assert torch.equal(parts["classifier.bias"][2], batch[2, -10:])
    with pytest.raises(ArchError, match=rf"expected \[..., {layout.numel}\]"):
        layout.unflatten(torch.zeros(layout.numel + 1))


def test_layout_json_round_trip_and_compatibility():
    layout = FlatLayout.of(_convnet_fmnist())
    stored = json.loads(json.dumps(layout.to_json()))
    assert FlatLayout.from_json(stored) == layout
    assert FlatLayout.from_json(json.dumps(stored)) == layout
    layout.check_compatible(FlatLayout.from_json(stored))
    wider = FlatLayout.of(_build("convnet:width=16", (1, 28, 28, 10)))
    with pytest.raises(ArchError, match=r"differ at entry 0: features.0.weight \[8, 1, 3, 3\] vs "
                                        r"features.0.weight \[16, 1, 3, 3\]"):
        layout.check_compatible(wider)
    no_norm = FlatLayout.of(_build("convnet:width=8,norm=none", (1, 28, 28, 10)))
    with pytest.raises(ArchError, match="differ at entry 2"):
        layout.check_compatible(no_norm)
    with pytest.raises(ArchError, match="differ in length"):
        layout.check_compatible(FlatLayout.from_shapes(layout.names[:3], layout.shapes[:3]))
    with pytest.raises(FormatError):
        FlatLayout.from_json({"names": ["a"], "shapes": [[2]], "offsets": [0], "numel": 3})
    with pytest.raises(FormatError):
        FlatLayout.from_json({"names": ["a"]})
    with pytest.raises(ArchError):
        layout.flatten(_build("convnet:width=16", (1, 28, 28, 10)))


def test_load_into_sets_module_parameters():
    net, other = _convnet_fmnist(), _build("convnet:width=8", (1, 28, 28, 10), seed=5)
    layout = FlatLayout.of(net)
    layout.load_into(other, layout.flatten(net))
    assert torch.equal(layout.flatten(other), layout.flatten(net))


@pytest.mark.parametrize("spec,shape", [("convnet:width=8", (1, 28, 28, 10)),
                                        ("convnet:width=8,norm=batch,pool=max", (3, 32, 32, 10)),
                                        ("resnet18:norm=instance", (3, 16, 16, 4)),
                                        ("alexnet", (3, 32, 32, 10)),
                                        ("mlp:width=16", (3, 32, 32, 10))])
def test_functional_call_equals_module_call(spec, shape):
    net = _build(spec, shape)
    layout = FlatLayout.of(net)
    x = _input(shape, batch=4)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = net(x1)
    expected.square().sum().backward()
    flat = layout.flatten(net).requires_grad_()
    got = functional_call(net, flat, x2)
    assert torch.equal(got, expected)
    got.square().sum().backward()
    assert torch.equal(x2.grad, x1.grad) and x2.grad.abs().sum() > 0
    module_grad = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    assert torch.equal(flat.grad, module_grad)


def test_functional_call_uses_flat_not_module_weights():
    net = _convnet_fmnist()
    layout = FlatLayout.of(net)
    x = _input((1, 28, 28, 10))
    other = layout.flatten(_build("convnet:width=8", (1, 28, 28, 10), seed=9))
    out = functional_call(net, other, x)
    assert not torch.allclose(out, net(x))
    assert torch.equal(out, _build("convnet:width=8", (1, 28, 28, 10), seed=9)(x))


def test_functional_call_batched_over_models():
    nets = [_build("convnet:width=8", (1, 28, 28, 10), seed=s) for s in range(3)]
    layout = FlatLayout.of(nets[0])
    flats = torch.stack([layout.flatten(n) for n in nets]).requires_grad_()
    x = _input((1, 28, 28, 10), batch=4)
    out = functional_call(nets[0], flats, x)
    assert out.shape == (3, 4, 10)
    for i, n in enumerate(nets):
        assert torch.allclose(out[i], n(x), atol=1e-5)
    out.sum().backward()
    assert flats.grad.shape == flats.shape and (flats.grad.abs().sum(1) > 0).all()
    per_model = torch.stack([_input((1, 28, 28, 10), batch=4, seed=s) for s in range(3)])
    out = functional_call(nets[0], flats, per_model, x_per_model=True)
    assert torch.allclose(out[2], nets[2](per_model[2]), atol=1e-5)


@pytest.mark.parametrize("name, tv", [("mobilenetv2", "mobilenet_v2"), ("efficientnet-b0", "efficientnet_b0")])
def test_torchvision_teachers_are_torchvisions_networks_and_import_their_weights(name, tv, tmp_path):
    import torchvision

    from condense.labels.squeeze import TeacherConfig, train_teacher
    from condense.labels.teacher_file import load_teacher_file

    ref = getattr(torchvision.models, tv)(num_classes=4).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    train_teacher(TeacherConfig(dataset="toy", arch=name, weights=str(tmp_path / "w.pth"), out=str(tmp_path / "t.h5")),
                  torch.device("cpu"), progress=False)
    net = load_teacher_file(tmp_path / "t.h5").net.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x))
    assert not any(getattr(m, "inplace", False) for m in net.modules())  # BN inputs stay readable by hooks
    small = build_net(f"{name}:stem=cifar", 1, 10, (32, 32))
    assert small(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert small.feature_maps(torch.randn(1, 1, 32, 32))[-1].shape[-1] == (4 if name == "mobilenetv2" else 2)
