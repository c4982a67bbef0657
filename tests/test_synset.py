"""The synthetic-set file: round trips, .pt export/import, and the promised errors."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from condense.data import ZCA
from condense.data.transform import PixelTransform
from condense.runtime.errors import ConfigError, FormatError
from condense.layouts import export_pt, import_pt
from condense.synset import FORMAT_VERSION, LabelSpec, SynSet, load_synset

NORM = PixelTransform(kind="normalize", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def make_set(n_classes: int = 3, ipc: int = 2, soft: bool = False, lr: float | None = 0.02) -> SynSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_classes * ipc, 3, 8, 8, generator=g)
    classes = torch.arange(n_classes).repeat_interleave(ipc)
    s = SynSet.hard(images, classes, dataset="toy", num_classes=n_classes, method="test", transform=NORM, lr=lr,
                    config={"iters": 5, "nested": {"a": [1, 2]}}, provenance={"seed": 3}, data={"val_size": 10})
    if soft:
        s = s.with_labels(torch.randn(n_classes * ipc, n_classes, generator=g),
                          LabelSpec(kind="logits", loss="kl", temperature=2.0))
    return s


def assert_same(a: SynSet, b: SynSet) -> None:
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.classes, b.classes)
    assert torch.equal(a.labels, b.labels)
    assert a.labels.dtype == b.labels.dtype
    assert (a.dataset, a.num_classes, a.method, a.ipc, a.lr) == (b.dataset, b.num_classes, b.method, b.ipc, b.lr)
    assert a.label_spec == b.label_spec
    assert a.transform.describe() == b.transform.describe()
    assert a.config == b.config and a.provenance == b.provenance and a.data == b.data


@pytest.mark.parametrize("soft", [False, True])
def test_write_read_round_trip(tmp_path, soft):
    s = make_set(soft=soft)
    s.save(tmp_path / "s.h5")
    back = load_synset(tmp_path / "s.h5")
    assert_same(s, back)
    assert back.ipc == 2 and back.image_shape == (3, 8, 8)
    assert not list(tmp_path.glob(".*tmp*")), "the temporary file must be renamed away"


def test_zca_transform_round_trip_and_pixels(tmp_path):
    d = 3 * 8 * 8
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    whiten = (q @ torch.diag(torch.linspace(0.5, 2.0, d, dtype=torch.float64)) @ q.T)
    zca = PixelTransform(kind="zca", zca=ZCA(torch.full((d,), 0.3), whiten.float(), torch.linalg.inv(whiten).float(),
                                             eps=0.1, key="abc"))
    pixels = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    s = SynSet.hard(zca.from_pixels(pixels), torch.arange(3).repeat_interleave(2), dataset="toy", num_classes=3,
                    method="test", transform=zca)
    s.save(tmp_path / "z.h5")
    back = load_synset(tmp_path / "z.h5")
    assert torch.equal(back.transform.zca.whiten, zca.zca.whiten) and back.transform.zca.key == "abc"
    torch.testing.assert_close(back.to_pixels(), pixels, atol=1e-4, rtol=0)


def test_normalize_to_pixels_inverts_from_pixels():
    p = torch.rand(4, 3, 5, 5)
    torch.testing.assert_close(NORM.to_pixels(NORM.from_pixels(p)), p)
    x = NORM.from_pixels(p)
    torch.testing.assert_close(x[:, 1], (p[:, 1] - 0.4) / 0.25)


def test_storage_bytes_counts_stored_arrays(tmp_path):
    s = make_set(soft=True)
    sb = s.storage_bytes()
    assert sb["images"] == 6 * 3 * 8 * 8 * 4
    assert sb["labels"] == 6 * 3 * 4
    half = s.with_labels(s.labels, LabelSpec(kind="logits", loss="kl", codec="fp16"))
    assert half.storage_bytes()["labels"] == 6 * 3 * 2
    half.save(tmp_path / "h.h5")
    with h5py.File(tmp_path / "h.h5") as f:
        assert f["labels/data"].dtype == np.float16
    torch.testing.assert_close(load_synset(tmp_path / "h.h5").labels, s.labels, atol=2e-3, rtol=1e-3)


def test_export_import_pt_round_trip(tmp_path):
    s = make_set()
    export_pt(s, tmp_path / "s.pt")
    payload = torch.load(tmp_path / "s.pt", weights_only=True)
    assert set(payload) == {"image_syn", "label_syn", "syn_lr"}
    back = import_pt(tmp_path / "s.pt", dataset="toy", num_classes=3, image_shape=(3, 8, 8), transform=NORM)
    assert torch.equal(back.images, s.images) and torch.equal(back.labels, s.labels)
    assert back.lr == pytest.approx(0.02) and back.method == "imported"
    assert len(back.provenance["sha256"]) == 64


def test_import_soft_labels_as_logits(tmp_path):
    s = make_set(soft=True, lr=None)
    export_pt(s, tmp_path / "soft.pt")
    back = import_pt(tmp_path / "soft.pt", dataset="toy", num_classes=3, image_shape=(3, 8, 8), transform=NORM)
    assert back.label_spec.kind == "logits" and back.lr is None
    # the layouts hold logits at temperature 1: the set's logits / T, the same soft targets
    assert back.label_spec.temperature == 1.0 and torch.equal(back.classes, s.classes)
    torch.testing.assert_close(back.labels, s.labels / s.label_spec.temperature)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_import_refuses_pickled_objects(tmp_path):
    torch.save({"image_syn": torch.zeros(3, 3, 8, 8), "label_syn": torch.arange(3), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(FormatError, match="weights-only"):
        import_pt(tmp_path / "evil.pt", dataset="toy", num_classes=3, image_shape=(3, 8, 8), transform=NORM)


def test_import_refuses_wrong_shapes(tmp_path):
    torch.save({"image_syn": torch.zeros(3, 1, 8, 8), "label_syn": torch.arange(3)}, tmp_path / "a.pt")
    with pytest.raises(FormatError, match="do not fit"):
        import_pt(tmp_path / "a.pt", dataset="toy", num_classes=3, image_shape=(3, 8, 8), transform=NORM)
    torch.save({"images": torch.zeros(3, 3, 8, 8)}, tmp_path / "b.pt")
    with pytest.raises(FormatError, match="label_syn"):
        import_pt(tmp_path / "b.pt", dataset="toy", num_classes=3, image_shape=(3, 8, 8), transform=NORM)


# --- bad files: one clear FormatError each ------------------------------------------------------

def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        load_synset(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"definitely not hdf5")
    with pytest.raises(FormatError, match="not a readable HDF5"):
        load_synset(tmp_path / "junk.h5")


def test_truncated_file(tmp_path):
    make_set().save(tmp_path / "s.h5")
    data = (tmp_path / "s.h5").read_bytes()
    (tmp_path / "t.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        load_synset(tmp_path / "t.h5")


def test_foreign_format_and_unknown_version(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(FormatError, match="not a condense synthetic set"):
        load_synset(tmp_path / "other.h5")
    make_set().save(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f.attrs["version"] = FORMAT_VERSION + 1
    with pytest.raises(FormatError, match=f"version {FORMAT_VERSION + 1} is not supported"):
        load_synset(tmp_path / "s.h5")


@pytest.mark.parametrize("corrupt, message", [
    (lambda f: f.__delitem__("classes"), "missing 'classes'"),
    (lambda f: (f.__delitem__("classes"), f.create_dataset("classes", data=np.zeros(5, np.int64))),
     r"'classes' has shape \[5\], expected \[6\]"),
    (lambda f: (f.__delitem__("labels/data"), f.create_dataset("labels/data", data=np.zeros(6, np.int64) + 7)),
     "hard labels must lie"),
    (lambda f: f["images"].__setitem__((0, 0, 0, 0), np.nan), "NaN"),
    (lambda f: f.attrs.__setitem__("ipc", 5), r"'images' has shape \[6, .*\], expected \[15, "),
    (lambda f: f["labels"].attrs.__setitem__("codec", "zip9"), "unknown label codec"),
    (lambda f: f["labels"].attrs.__setitem__("kind", "fuzzy"), "unknown label kind"),
])
def test_inconsistent_files(tmp_path, corrupt, message):
    make_set().save(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "a") as f:
        corrupt(f)
    with pytest.raises(FormatError, match=message):
        load_synset(tmp_path / "s.h5")


def test_unbalanced_set_is_refused_on_save(tmp_path):
    s = make_set()
    s.classes[0] = 1
    with pytest.raises(FormatError, match="class-balanced"):
        s.save(tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()


def test_failed_save_keeps_previous_file(tmp_path):
    good = make_set()
    good.save(tmp_path / "s.h5")
    bad = make_set()
    bad.images[0, 0, 0, 0] = float("inf")
    with pytest.raises(FormatError):
        bad.save(tmp_path / "s.h5")
    assert_same(load_synset(tmp_path / "s.h5"), good)


# ----------------------------------------------------------------------------- as_dataset


def test_as_dataset_hard_labels_are_class_indices():
    s = make_set()
    x, y = s.as_dataset()[3]
    assert torch.equal(x, s.images[3]) and y.dtype == torch.int64 and int(y) == int(s.classes[3])
    assert len(s.as_dataset()) == 6


def test_as_dataset_soft_logits_decode_through_the_codec_to_probabilities(tmp_path):
    s = make_set(soft=True)
    s.with_labels(s.labels, LabelSpec(kind="logits", loss="kl", temperature=2.0, codec="fp16")).save(tmp_path / "s.h5")
    back = load_synset(tmp_path / "s.h5")
    ys = torch.stack([y for _, y in back.as_dataset()])
    expected = torch.softmax(s.labels.half().float() / 2.0, dim=-1)  # what fp16 stored, at the set's temperature
    assert ys.dtype == torch.float32 and torch.allclose(ys, expected, atol=1e-6)
    assert torch.allclose(ys.sum(1), torch.ones(6))
    hard = torch.stack([y for _, y in back.as_dataset(hard=True)])
    assert torch.equal(hard, back.labels.argmax(1))


def test_as_dataset_per_view_labels_need_a_choice():
    s = make_set(soft=True)
    views = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(1))
    pv = s.with_labels(views, LabelSpec(kind="logits", loss="kl", view_mode="per-view", view_seed=0,
                                        view_strategy="flip"))
    with pytest.raises(ConfigError, match=r"per view .*mean_views=True"):
        pv.as_dataset()
    ys = torch.stack([y for _, y in pv.as_dataset(mean_views=True)])
    assert torch.allclose(ys, torch.softmax(views.mean(0), dim=-1))
    assert torch.equal(torch.stack([y for _, y in pv.as_dataset(hard=True)]), views.mean(0).argmax(1))


def test_as_dataset_regression_targets_as_stored_or_their_classes():
    s = make_set()
    targets = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    r = s.with_labels(targets, LabelSpec(kind="regression", loss="mse"))
    assert torch.equal(torch.stack([y for _, y in r.as_dataset()]), targets)
    assert torch.equal(torch.stack([y for _, y in r.as_dataset(hard=True)]), s.classes)
