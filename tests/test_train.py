"""The one training loop and evaluate(): losses, schedule, determinism, learning on toy data."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from condense.data import load_dataset
from condense.runtime.errors import ConfigError
from condense.nets import build_net
from condense.runtime.rng import generator
from condense.synset import LabelSpec, SynSet
from condense.train import STREAM_ORDER, TrainProtocol, evaluate, evaluate_synset, label_loss, lr_at, train_model

torch.set_num_threads(1)  # determinism claims hold at a fixed thread count
ARCH = "convnet:width=16"


@pytest.fixture(scope="module")
def toy():
    return load_dataset("toy")


def test_label_losses_against_naive_formulas():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0])
    assert torch.allclose(label_loss(logits, y, LabelSpec()), F.cross_entropy(logits, y))
    t = 2.0
    p = torch.softmax(targets / t, 1)
    naive = sum(float((p[i] * (p[i].log() - torch.log_softmax(logits[i] / t, 0))).sum()) for i in range(5)) / 5 * t * t
    kl = label_loss(logits, targets, LabelSpec(kind="logits", loss="kl", temperature=t))
    assert float(kl) == pytest.approx(naive, rel=1e-5)
    assert float(label_loss(targets, targets, LabelSpec(kind="logits", loss="kl", temperature=t))) == pytest.approx(0, abs=1e-6)
    probs = label_loss(logits, p, LabelSpec(kind="probabilities", loss="kl", temperature=t))
    assert float(probs) == pytest.approx(naive, rel=1e-5)
    assert torch.allclose(label_loss(logits, targets, LabelSpec(kind="regression", loss="mse")), F.mse_loss(logits, targets))


def test_lr_schedule_decays_at_half():
    p = TrainProtocol(epochs=10)
    assert [lr_at(p, 1.0, e) for e in range(10)] == [1.0] * 5 + [pytest.approx(0.1)] * 5


def test_protocol_validation():
    for bad in (dict(epochs=0), dict(batch_size=0), dict(lr=-1.0), dict(decay_at=2.0), dict(epochs=10, decay_epoch=10),
                dict(decay_epoch=-1)):
        with pytest.raises(ConfigError):
            TrainProtocol(**bad).validate()


def test_training_lowers_the_loss_and_calls_back(toy):
    model = build_net(ARCH, 3, 4, (16, 16), generator=generator(0))
    seen = []
    losses = train_model(model, toy.x_train, toy.y_train, TrainProtocol(epochs=6, batch_size=32), seed=0,
                         on_epoch=lambda e, m, l: seen.append((e, l)))
    assert [e for e, _ in seen] == list(range(6)) and [l for _, l in seen] == losses
    assert losses[-1] < 0.5 * losses[0]


def test_evaluate_is_deterministic_and_leaves_global_rng_alone(toy):
    proto = TrainProtocol(epochs=5, batch_size=32)
    state = torch.get_rng_state()
    a = evaluate(toy.x_train, toy.y_train, ARCH, proto, seed=1, test=(toy.x_test, toy.y_test), num_classes=4)
    b = evaluate(toy.x_train, toy.y_train, ARCH, proto, seed=1, test=(toy.x_test, toy.y_test), num_classes=4)
    assert torch.equal(state, torch.get_rng_state())
    assert a == b
    assert a > 0.6, "a few epochs on the toy training set should beat chance (0.25) clearly"


def test_runs_and_seeds_give_different_networks(toy):
    proto = TrainProtocol(epochs=1, batch_size=64, dsa=True)
    weights = []
    for seed, run in ((0, 0), (0, 1), (1, 0)):
        model = build_net(ARCH, 3, 4, (16, 16), generator=generator(seed, run, 0, 0, 0))
        train_model(model, toy.x_train, toy.y_train, proto, seed=seed, run=run)
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_soft_labels_train_and_differ_from_hard(toy):
    idx = torch.arange(0, 40)
    images, classes = toy.x_train[idx], toy.y_train[idx]
    logits = 3 * F.one_hot(classes, 4).float() + torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    proto = TrainProtocol(epochs=5, batch_size=16)
    test = (toy.x_test, toy.y_test)
    hard = SynSet.hard(images, classes, dataset="toy", num_classes=4, method="t")
    soft = hard.with_labels(logits, LabelSpec(kind="logits", loss="kl", temperature=2.0))
    model_h = build_net(ARCH, 3, 4, (16, 16), generator=generator(0))
    model_s = build_net(ARCH, 3, 4, (16, 16), generator=generator(0))
    train_model(model_h, images, classes, proto, seed=0)
    train_model(model_s, images, logits, proto, seed=0, label_spec=soft.label_spec)
    assert not torch.equal(model_h.classifier.weight, model_s.classifier.weight)
    assert 0.0 <= evaluate_synset(soft, ARCH, proto, 0, test=test) <= 1.0


def test_learned_lr_is_used_unless_overridden(toy):
    s = SynSet.hard(toy.x_train[:8], toy.y_train[:8].sort().values, dataset="toy", num_classes=4, method="t")
    s.classes = s.labels = torch.arange(4).repeat_interleave(2)
    proto = TrainProtocol(epochs=2, batch_size=8, dsa=False)
    test = (toy.x_test, toy.y_test)
    base = evaluate_synset(s, ARCH, proto, 0, test=test)
    s.lr = 10.0  # absurd on purpose: if it is used, training diverges and accuracy changes
    assert evaluate_synset(s, ARCH, proto, 0, test=test) != base
    assert evaluate_synset(s, ARCH, TrainProtocol(epochs=2, batch_size=8, dsa=False, lr=0.01), 0, test=test) == base


@pytest.mark.parametrize("share", ["image", "batch"])
def test_training_draws_dsa_as_the_protocol_says(toy, monkeypatch, share):
    """Evaluation and expert recording augment as the references train (per-image parameters, one
    group per step) unless the protocol asks for the old one-draw-per-batch semantics."""
    import condense.train as train

    seen = []
    real_apply = train.apply_dsa
    monkeypatch.setattr(train, "apply_dsa", lambda x, d: seen.append((x.shape[0], d)) or real_apply(x, d))
    model = build_net(ARCH, 3, 4, (16, 16), generator=generator(0))
    proto = TrainProtocol(epochs=1, batch_size=32, dsa_share=share)
    train_model(model, toy.x_train[:64], toy.y_train[:64], proto, seed=3)
    assert len(seen) == 2
    for t, (b, d) in enumerate(seen):
        assert d.per_image == (share == "image") and d.n == (b if share == "image" else 1)
        assert bool((d.active == d.active[:1]).all())  # one group for the step's batch
        expected = train.sample_dsa(proto.dsa_config(), b, (3, 16, 16), generator(3, 0, 0, t, train.STREAM_DSA))
        assert torch.equal(d.scale, expected.scale)


def test_protocol_refuses_an_unknown_dsa_share():
    with pytest.raises(ConfigError):
        TrainProtocol(dsa_share="pixel").validate()


def test_decay_epoch_and_restart_equal_a_rebuilt_optimizer(toy):
    """AST's experts: lr x0.6 from a given epoch, the optimizer rebuilt there (momentum lost),
    against a naive loop that rebuilds torch's SGD at that epoch."""
    proto = TrainProtocol(epochs=4, batch_size=64, momentum=0.9, weight_decay=1e-3, dsa=False, decay_epoch=3,
                          decay_factor=0.6, decay_restart=True)
    assert [lr_at(proto, 1.0, e) for e in range(4)] == [1.0, 1.0, 1.0, pytest.approx(0.6)]
    x, y = toy.x_train[:192], toy.y_train[:192]

    def fresh():
        return build_net(ARCH, 3, 4, (16, 16), generator=generator(0, 0, 0, 0, 0)).double()

    ours = fresh()
    train_model(ours, x.double(), y, proto, seed=3, lr=0.05)
    naive = fresh()
    opt = torch.optim.SGD(naive.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    naive.train()
    for epoch in range(4):
        if epoch == 3:
            opt = torch.optim.SGD(naive.parameters(), lr=0.05 * 0.6, momentum=0.9, weight_decay=1e-3)
        order = torch.randperm(192, generator=generator(3, 0, epoch, 0, STREAM_ORDER))
        for start in range(0, 192, 64):
            idx = order[start:start + 64]
            loss = F.cross_entropy(naive(x[idx].double()), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    assert torch.allclose(flat(ours), flat(naive), atol=1e-10)
    kept = fresh()
    train_model(kept, x.double(), y, TrainProtocol(**{**proto.__dict__, "decay_restart": False}), seed=3, lr=0.05)
    assert not torch.allclose(flat(kept), flat(naive), atol=1e-6), "keeping the momentum must differ"


def test_protocol_dict_keeps_old_keys_unless_the_ast_schedule_is_used():
    from dataclasses import asdict

    from condense.train import protocol_dict
    assert "decay_epoch" not in protocol_dict(TrainProtocol()) and "decay_restart" not in protocol_dict(TrainProtocol())
    ast = TrainProtocol(decay_epoch=7, decay_restart=True)
    assert protocol_dict(ast) == {k: v for k, v in asdict(ast).items() if k != "mixup"}  # mixup only when on
    assert TrainProtocol(**protocol_dict(TrainProtocol())) == TrainProtocol()
