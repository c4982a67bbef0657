"""Soft labels: teachers, per-view labels that match their views, codecs, the projector,
storage accounting and the evaluation of every codec (toy data)."""
from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
import torch

from condense.augment import DSAConfig, apply_dsa, select_draw, view_draw
from condense.cli.main import main
from condense.codecs import LabelContext, decode_labels, encode_labels
from condense.data import load_dataset
from condense.data.subset import class_balanced_indices
from condense.runtime.errors import ConfigError, FormatError
from condense.labels import compress, load_teacher, relabel
from condense.labels.projector import ProjectorFit
from condense.synset import LabelSpec, load_synset, real_subset
from condense.train import Batch, TrainProtocol, evaluate, plain_step, train_model

ARCH = "convnet:width=8"
VIEWS = 4
STRATEGY = "color_crop_cutout_flip_scale_rotate"


def topk_error_bound(p: torch.Tensor, k: int, bits: int) -> torch.Tensor:
    """Per-label L-infinity error bound of the ``topk`` codec for probabilities ``p`` [..., K]
    (condense.codecs' docstring): d = 1 / (2 (2^bits - 1)) on a kept entry, p_(k+1) + k d / (K - k)
    on any other."""
    d = 0.5 / ((1 << bits) - 1)
    num = p.shape[-1]
    if k >= num:
        return torch.full(p.shape[:-1], d)
    nxt = torch.topk(p, k + 1, dim=-1).values[..., k]
    return torch.maximum(torch.full_like(nxt, d), nxt + k * d / (num - k))


@pytest.fixture(scope="module")
def toy():
    return load_dataset("toy")


@pytest.fixture(scope="module")
def hard(toy):
    return real_subset(toy, class_balanced_indices(toy.y_train, 3, 5), "random", config={"arch": ARCH})


@pytest.fixture(scope="module")
def per_view(hard, store_path):
    return relabel(hard, load_teacher(store_path, hard), views="per-epoch", epochs=VIEWS, temperature=2.0, view_seed=11)


def test_a_per_view_label_is_the_teachers_prediction_on_exactly_that_view(hard, store_path, per_view):
    teacher = load_teacher(store_path, hard)
    assert per_view.labels.shape == (VIEWS, 12, 4) and per_view.label_spec.view_mode == "per-view"
    cfg = DSAConfig(strategy=STRATEGY)
    for e in range(VIEWS):
        for i in (0, 5, 11):  # regenerate image i's view of epoch e on its own, from the recorded seed
            draw = select_draw(view_draw(cfg, 11, e, 12, hard.image_shape), torch.tensor([i]))
            view = apply_dsa(hard.images[i:i + 1], draw)
            torch.testing.assert_close(per_view.labels[e, i], teacher.logits(view, 2.0)[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(per_view.labels[0], per_view.labels[1]), "views of two epochs must differ"


def test_training_sees_each_image_as_the_view_its_label_belongs_to(per_view):
    seen = []

    def spy(model, batch: Batch, loss_fn, optimizer, epoch):
        seen.append((epoch, batch))
        return plain_step(model, batch, loss_fn, optimizer, epoch)

    s = per_view
    from condense.nets import build_net
    net = build_net(ARCH, 3, 4, (16, 16))
    train_model(net, s.images, s.labels, TrainProtocol(epochs=VIEWS, batch_size=5), seed=3, run=1,
                label_spec=s.label_spec, step=spy)
    cfg = DSAConfig(strategy=STRATEGY)
    for epoch, batch in seen:
        idx = torch.stack([(s.images == x).flatten(1).all(1).nonzero()[0, 0] for x in batch.x_clean])
        want = apply_dsa(s.images[idx], select_draw(view_draw(cfg, 11, epoch, 12, s.image_shape), idx))
        torch.testing.assert_close(batch.x, want)
        torch.testing.assert_close(batch.y, s.labels[epoch][idx])
    assert len(seen) == VIEWS * 3  # 12 images in batches of 5: the batch size does not matter


def test_per_view_training_refuses_what_would_misalign(per_view):
    from condense.nets import build_net
    net = build_net(ARCH, 3, 4, (16, 16))
    s = per_view
    for proto, message in ((TrainProtocol(epochs=VIEWS + 1), "cover 4 epochs"),
                           (TrainProtocol(epochs=2, dsa=False), "without DSA"),
                           (TrainProtocol(epochs=2, dsa_strategy="flip"), "made for DSA strategy")):
        with pytest.raises(ConfigError, match=message):
            train_model(net, s.images, s.labels, proto, seed=0, label_spec=s.label_spec)


def test_committee_averages_probabilities(hard, store_path):
    one = [load_teacher(store_path, hard, expert=i).logits(hard.images, 2.0) for i in (0, 1)]
    both = load_teacher(store_path, hard, committee=2).logits(hard.images, 2.0)
    want = torch.stack([torch.softmax(z / 2.0, -1) for z in one]).mean(0)
    torch.testing.assert_close(torch.softmax(both / 2.0, -1), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("codec", ["none", "fp16", "topk:k=1,bits=4", "topk:k=3,bits=4", "topk:k=2,bits=8",
                                   "topk:k=2,bits=16", "lowrank:rank=1", "lowrank:rank=2,bits=32"])
def test_every_codec_round_trips_within_its_bound_and_counts_its_bytes(per_view, codec, tmp_path):
    s = per_view
    c = compress(s, codec)
    c.save(tmp_path / "c.h5")
    back = load_synset(tmp_path / "c.h5")
    assert torch.equal(back.labels, c.labels) and back.label_spec == c.label_spec
    with h5py.File(tmp_path / "c.h5") as f:
        stored = sum(int(f["labels"][k][()].nbytes) for k in f["labels"])
    sb = back.storage_bytes()
    assert sb["labels"] + sb["label_generator"] == stored and sb["labels_uncompressed"] == VIEWS * 12 * 4 * 4
    assert sb["total"] == sb["images"] + stored
    p = torch.softmax(s.labels / 2.0, -1)
    name = codec.split(":")[0]
    if name == "none":
        assert torch.equal(c.labels, s.labels)
    elif name == "fp16":
        assert ((c.labels - s.labels).abs() <= 2.0 ** -11 * s.labels.abs()).all()  # float16's relative rounding
    elif name == "topk":
        k, bits = (int(v.split("=")[1]) for v in codec.split(":")[1].split(","))
        assert c.label_spec.kind == "probabilities"
        err = (c.labels - p).abs().amax(-1)
        assert (err <= topk_error_bound(p, k, bits) + 1e-6).all()
        torch.testing.assert_close(c.labels.sum(-1), torch.ones(VIEWS, 12), atol=k * 0.5 / ((1 << bits) - 1) + 1e-6,
                                   rtol=0)
    else:
        rank = int(codec.split("rank=")[1].split(",")[0])
        m = s.labels.double().reshape(VIEWS, -1)
        sv = torch.linalg.svdvals(m - m.mean(0))
        err = torch.linalg.norm((c.labels.double() - s.labels.double()).reshape(VIEWS, -1))
        best = sv[rank:].square().sum().sqrt()  # Eckart-Young: the discarded energy
        assert err <= best * (1 + 1e-3) + (5e-3 if "bits=32" not in codec else 1e-4) * m.norm()


def _unaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` at an odd address (numpy marks it unaligned)."""
    raw = np.empty(a.nbytes + 1, np.uint8)[1:]
    out = raw.view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _strided(a: np.ndarray) -> np.ndarray:
    """A non-contiguous view holding the same values as ``a``."""
    return np.repeat(a[..., None], 2, axis=-1)[..., 0]


@pytest.mark.parametrize("codec", ["fp16", "topk:k=2,bits=8", "lowrank:rank=2,bits=32", "lowrank:rank=1"])
def test_decoding_does_not_depend_on_the_arrays_layout(per_view, codec):
    c = compress(per_view, codec)
    ctx = c.label_context()
    assert not _unaligned(np.zeros(8, np.float32)).flags.aligned and not _strided(np.zeros((3, 4))).flags.c_contiguous
    for copy in (_unaligned, _strided, lambda a: a.astype(a.dtype.newbyteorder(">"))):
        arrays = {k: copy(np.asarray(v)) for k, v in c.label_payload.items()}
        assert torch.equal(decode_labels(c.label_spec.codec, arrays, tuple(c.labels.shape), ctx), c.labels)


def test_projector_decoding_does_not_depend_on_the_images_layout(per_view):
    c = compress(per_view, "projector:rank=2", ProjectorFit(steps=5, batch=16))
    strided = torch.from_numpy(_strided(c.images.numpy()))
    ctx = LabelContext(strided, c.label_spec, c.num_classes)
    assert not strided.is_contiguous()
    assert torch.equal(decode_labels(c.label_spec.codec, c.label_payload, tuple(c.labels.shape), ctx), c.labels)


def test_full_rank_lowrank_is_exact_and_4_bit_packing_keeps_odd_k(per_view):
    c = compress(per_view, f"lowrank:rank={VIEWS},bits=32")  # rank = rows: nothing discarded
    torch.testing.assert_close(c.labels, per_view.labels, rtol=1e-4, atol=1e-4)
    probs = torch.softmax(per_view.labels / 2.0, -1)
    top = compress(per_view, "topk:k=3,bits=4")
    kept = torch.topk(probs, 3, -1)
    got = top.labels.gather(-1, kept.indices)
    assert (got - kept.values).abs().max() <= 0.5 / 15 + 1e-6


def test_static_soft_labels_and_learned_labels_compress_like_any_other(hard, store_path):
    st = relabel(hard, load_teacher(store_path, hard), views="static")
    assert st.labels.shape == (12, 4) and st.label_spec.view_mode == "static"
    learned = hard.with_labels(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)),
                               LabelSpec(kind="logits", loss="kl"))  # DATM-style learned logits
    for s in (st, learned):
        for codec in ("topk:k=2", "lowrank:rank=2", "fp16"):
            assert compress(s, codec).labels.shape == (12, 4)


def test_projector_learns_the_labels_and_regenerates_them_deterministically(per_view, tmp_path):
    c = compress(per_view, "projector:rank=2,width=8,depth=2", ProjectorFit(steps=60, batch=48, lr=1e-2))
    fit = c.provenance["label_codecs"][-1]
    assert fit["label_error_after"] < 0.5 * fit["label_error_before"]
    sb = c.storage_bytes()
    assert sb["labels"] == 0 and sb["label_generator"] > 0  # at toy size it is not smaller than the labels
    c.save(tmp_path / "p.h5")
    a, b = load_synset(tmp_path / "p.h5"), load_synset(tmp_path / "p.h5")
    assert torch.equal(a.labels, b.labels) and torch.equal(a.labels, c.labels)
    assert a.labels.shape == per_view.labels.shape and a.label_spec.kind == "logits"
    a.save(tmp_path / "again.h5")  # saving a loaded projector set writes the same weights, no retraining
    with h5py.File(tmp_path / "p.h5") as f, h5py.File(tmp_path / "again.h5") as g:
        assert all(np.array_equal(f["labels"][k][()], g["labels"][k][()]) for k in f["labels"])


def test_soft_labels_of_every_codec_train_and_differ_from_hard_labels(toy, per_view):
    proto = TrainProtocol(epochs=VIEWS)
    test = (toy.x_test, toy.y_test)

    def curve(s, labels=None, spec=None):
        h: list[float] = []
        evaluate(s.images, s.labels if labels is None else labels, ARCH, proto, 0, test=test, num_classes=4,
                 label_spec=s.label_spec if spec is None else spec, history=h)
        return h

    hard_curve = curve(per_view, per_view.classes, LabelSpec())
    for codec in ("none", "fp16", "topk:k=2", "lowrank:rank=2", "projector:rank=1,width=8,depth=2"):
        c = compress(per_view, codec, ProjectorFit(steps=5, batch=24))
        h = curve(c)
        assert all(np.isfinite(h)) and h != hard_curve


def test_eval_report_carries_label_bytes(per_view, tmp_path):
    c = compress(per_view, "topk:k=2,bits=8")
    path = c.save(tmp_path / "t.h5")
    assert main(["eval", str(path), "--runs", "1", "--epochs", "2", "--json", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["storage_bytes"]["labels"] == VIEWS * 12 * (2 + 2)  # uint8 index + uint8 value, k = 2
    assert doc["storage_bytes"]["labels_uncompressed"] == VIEWS * 12 * 4 * 4
    assert {r["variant"] for r in doc["results"] if r["synset"]} == {"set", "hard"}  # the gap of every soft set
    assert any(sc["score"] == "hard_label_gap" for sc in doc["scores"])


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_cli_makes_compresses_and_describes_labels(hard, store_path, tmp_path, capsys):
    src = str(hard.save(tmp_path / "set.h5"))
    before = sha(src)
    assert main(["labels", src, "--teacher", store_path, "--views", "per-epoch", "--view-epochs", "3",
                 "--temperature", "2", "--out", str(tmp_path / "soft.h5")]) == 0
    assert main(["labels", str(tmp_path / "soft.h5"), "--codec", "topk:k=1,bits=4", "--out", str(tmp_path / "t.h5")]) == 0
    capsys.readouterr()
    assert main(["labels", "--info", str(tmp_path / "t.h5")]) == 0
    out = capsys.readouterr().out
    assert "codec: topk:k=1,bits=4" in out and "% of the uncompressed labels (576 B)" in out
    assert sha(src) == before


@pytest.mark.parametrize("extra, message", [
    (["--codec", "zip:k=1"], "unknown label codec 'zip'"),
    (["--codec", "topk:k=9"], "k=9 exceeds the 4 classes"),
    (["--codec", "topk:k=2,bits=5"], "bits must be one of 4, 8, 16"),
    (["--codec", "lowrank:rank=0"], "rank must be >= 1"),
    (["--codec", "lowrank:rank=99"], "rank=99 exceeds"),
    (["--codec", "topk:depth=2"], "bad parameter"),
    (["--teacher", "TEACHER", "--committee", "3"], "holds 2 finished experts"),
    (["--teacher", "TEACHER", "--teacher-epoch", "7"], "--teacher-epoch must be in 0..4"),
])
def test_bad_input_is_one_line_and_leaves_the_input_untouched(per_view, store_path, tmp_path, capsys, extra, message):
    src = str(per_view.save(tmp_path / "soft.h5"))
    before = sha(src)
    extra = [store_path if a == "TEACHER" else a for a in extra]
    code = main(["labels", src, *extra, "--out", str(tmp_path / "o.h5")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert sha(src) == before and not (tmp_path / "o.h5").exists()


def test_a_teacher_of_another_dataset_or_shape_is_refused(store_path, toy):
    fm = real_subset(toy, class_balanced_indices(toy.y_train, 1, 0), "random")
    with pytest.raises(ConfigError, match="trained on toy, the set is mnist"):
        load_teacher(store_path, fm.__class__(**{**fm.__dict__, "dataset": "mnist"}))
    small = fm.__class__(**{**fm.__dict__, "images": fm.images[:, :, :8, :8]})
    with pytest.raises(ConfigError, match="takes images of shape"):
        load_teacher(store_path, small)


def test_a_corrupt_label_block_is_one_format_error(per_view, tmp_path):
    path = compress(per_view, "topk:k=2").save(tmp_path / "t.h5")
    with h5py.File(path, "a") as f:
        del f["labels"]["values"]
    with pytest.raises(FormatError, match="missing its array"):
        load_synset(path)
    path = compress(per_view, "projector:rank=1,width=8,depth=2", ProjectorFit(steps=1)).save(tmp_path / "p.h5")
    with h5py.File(path, "a") as f:
        w = f["labels"]["classifier.weight.left"][()]
        del f["labels"]["classifier.weight.left"]
        f["labels"].create_dataset("classifier.weight.left", data=w[:, :0])
    with pytest.raises(FormatError, match="corrupt label block"):
        load_synset(path)
    ctx = LabelContext(per_view.images, per_view.label_spec, 4)
    arrays = encode_labels("lowrank:rank=1", per_view.labels, ctx)
    with pytest.raises(FormatError, match="do not fit"):
        decode_labels("lowrank:rank=2", arrays, tuple(per_view.labels.shape), ctx)
