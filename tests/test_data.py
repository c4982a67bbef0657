"""Tests of condense.data: readers, registry pipeline, ZCA, toy data and subset selection."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import condense.data.datasets as datasets_mod
import condense.data.readers as readers_mod
import condense.data.zca as zca_mod
from condense.data import (
    ZCA,
    DatasetInfo,
    available,
    balanced_subset,
    class_balanced_indices,
    dataset_info,
    dataset_names,
    load_dataset,
    load_raw,
    make_toy,
    read_idx,
    register_dataset,
    restricted_load,
    stratified_split,
)
from condense.runtime.errors import DataError
from condense.runtime.rng import generator

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Every test gets its own cache and no $CONDENSE_DATA, so nothing leaks between tests."""
    monkeypatch.setenv("CONDENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CONDENSE_DATA", raising=False)


# ----------------------------------------------------------------------------- helpers

def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(dtype).tobytes()


def write_fake_idx_dataset(folder: Path, n_train: int, n_test: int, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        data = idx_bytes(a)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def fake_cifar_arrays(n: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), (np.arange(n) % num_classes).astype(np.int64)


def tiny_convnet(seed: int, channels: int, classes: int, size: int) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, classes),
    )
    g = generator(seed)  # explicit init: the global RNG is never used
    for p in net.parameters():
        if p.ndim > 1:
            nn.init.kaiming_uniform_(p, a=5**0.5, generator=g)
        else:
            nn.init.zeros_(p)
    return net


# ----------------------------------------------------------------------------- toy

def test_toy_is_deterministic_per_seed_and_in_range():
    a, b, c = make_toy(0), make_toy(0), make_toy(1)
    for t1, t2 in zip(a, b):
        assert torch.equal(t1, t2)
    assert not torch.equal(a[0], c[0])
    x_train, y_train, x_test, y_test = a
    assert x_train.shape == (256, 3, 16, 16) and x_test.shape == (128, 3, 16, 16)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.equal(torch.bincount(y_train), torch.full((4,), 64))
    assert torch.equal(torch.bincount(y_test), torch.full((4,), 32))
    assert x_train.min() >= 0 and x_train.max() <= 1


def test_toy_is_class_structured_but_not_identical_images():
    x_train, y_train, x_test, y_test = make_toy(0)
    centroids = torch.stack([x_train[y_train == c].mean(0) for c in range(4)])
    d = ((x_test[:, None] - centroids[None]) ** 2).flatten(2).sum(-1)
    assert (d.argmin(1) == y_test).float().mean() > 0.9  # classes are separable
    # ... but images of a class differ clearly from each other (not one image repeated)
    cls0 = x_train[y_train == 0].flatten(1)
    pair = torch.cdist(cls0, cls0) + torch.eye(len(cls0)) * 1e9
    assert pair.min() > 1.0
    # a single random real image per class is a weaker classifier than the centroids:
    # headroom for distillation methods to beat the random baseline
    accs = []
    for seed in range(5):
        idx = class_balanced_indices(y_train, 1, seed)
        d1 = ((x_test[:, None] - x_train[idx][None]) ** 2).flatten(2).sum(-1)
        accs.append((y_train[idx][d1.argmin(1)] == y_test).float().mean().item())
    assert 0.3 < np.mean(accs) < 0.97


def test_toy_is_learnable_by_a_small_convnet_in_a_few_epochs():
    torch.set_num_threads(2)
    ds = load_dataset("toy", val_size=0)
    net = tiny_convnet(0, 3, 4, 16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = generator(1)
    for _ in range(3):
        perm = torch.randperm(len(ds.y_train), generator=g)
        for i in range(0, len(perm), 32):
            b = perm[i : i + 32]
            loss = nn.functional.cross_entropy(net(ds.x_train[b]), ds.y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (net(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    assert acc > 0.7, acc  # chance is 0.25


def test_toy_registry_pipeline_split_normalisation_and_pixels():
    ds = load_dataset("toy")
    raw = load_raw("toy")
    assert ds.x_val.shape[0] == 24 and ds.x_train.shape[0] == 232 and ds.x_test.shape[0] == 128
    assert torch.equal(torch.bincount(ds.y_val), torch.full((4,), 6))
    assert available("toy")[0]
    # mean/std of the toy info come from its train set, so normalised data is ~N(0, 1) per channel
    m, s = ds.x_train.mean(dim=(0, 2, 3)), ds.x_train.std(dim=(0, 2, 3))
    assert torch.allclose(m, torch.zeros(3), atol=0.05) and torch.allclose(s, torch.ones(3), atol=0.05)
    assert torch.allclose(ds.to_pixels(ds.x_test), raw.x_test, atol=1e-6)
    assert torch.allclose(ds.from_pixels(raw.x_test), ds.x_test, atol=1e-6)
    assert torch.allclose(ds.to_pixels(ds.x_test[0]), raw.x_test[0], atol=1e-6)  # single image [C, H, W]
    assert ds.meta["val_size"] == 24 and ds.meta["normalization"] == "mean_std" and ds.meta["root"] is None
    assert (ds.info.train_size, ds.info.test_size) == (raw.x_train.shape[0], raw.x_test.shape[0])


# ----------------------------------------------------------------------------- fashion-mnist (real files)

needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST IDX files absent from /usr/share/datasets/fashion-mnist (apt install dataset-fashion-mnist)",
)


@needs_fmnist
def test_fashion_mnist_raw_sizes():
    raw = load_raw("fashion-mnist")
    assert raw.x_train.shape == (60000, 1, 28, 28) and raw.x_test.shape == (10000, 1, 28, 28)
    assert raw.y_train.shape == (60000,) and raw.y_test.shape == (10000,)
    assert raw.x_train.min() == 0 and raw.x_train.max() == 1
    assert torch.equal(torch.bincount(raw.y_train), torch.full((10,), 6000))
    info = dataset_info("fashion-mnist")
    assert info.num_classes == 10 and info.shape == (1, 28, 28) and len(info.class_names) == 10
    assert (info.train_size, info.test_size) == (60000, 10000)
    ok, where = available("fashion-mnist")
    assert ok and str(FMNIST) in where


@needs_fmnist
def test_fashion_mnist_validation_split_and_normalisation():
    raw = load_raw("fashion-mnist")
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape[0] == 55000 and ds.x_val.shape[0] == 5000 and ds.x_test.shape[0] == 10000
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # the split is the seeded stratified one: disjoint, covering, balanced
    val_idx, train_idx = stratified_split(raw.y_train, 5000, 0)
    assert len(set(val_idx.tolist()) & set(train_idx.tolist())) == 0
    assert len(val_idx) + len(train_idx) == 60000 and len(set(val_idx.tolist()) | set(train_idx.tolist())) == 60000
    assert torch.equal(torch.bincount(ds.y_val), torch.full((10,), 500))
    mean, std = 0.2861, 0.3530
    assert torch.allclose(ds.x_val, (raw.x_train[val_idx] - mean) / std, atol=1e-6)
    assert torch.allclose(ds.x_train, (raw.x_train[train_idx] - mean) / std, atol=1e-6)
    assert torch.equal(ds.y_val, raw.y_train[val_idx])
    assert abs(ds.x_train.mean().item()) < 0.02 and abs(ds.x_train.std().item() - 1) < 0.02
    assert ds.meta["val_size"] == 5000 and ds.meta["val_seed"] == 0 and ds.meta["root"] == str(FMNIST)
    # deterministic for a seed, different for another
    assert torch.equal(stratified_split(raw.y_train, 5000, 0)[0], val_idx)
    other = stratified_split(raw.y_train, 5000, 1)[0]
    assert not torch.equal(other, val_idx)
    ds1 = load_dataset("fashion-mnist", val_seed=1, limit_train=100)
    assert torch.allclose(ds1.x_val, (raw.x_train[other] - mean) / std, atol=1e-6)
    assert ds1.x_train.shape[0] == 100 and torch.equal(torch.bincount(ds1.y_train), torch.full((10,), 10))


# ----------------------------------------------------------------------------- IDX reader

def test_idx_reader_reads_raw_and_gzip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(a))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(a)))
    assert np.array_equal(read_idx(tmp_path / "a"), a)
    assert np.array_equal(read_idx(tmp_path / "a.gz", ndim=3), a)
    b = np.array([1, -2, 300000], dtype=np.int32)  # big-endian multi-byte values
    (tmp_path / "b").write_bytes(idx_bytes(b, 0x0C))
    assert read_idx(tmp_path / "b").tolist() == [1, -2, 300000]


def test_idx_reader_rejects_bad_files(tmp_path):
    a = np.zeros((10, 28, 28), dtype=np.uint8)
    good = idx_bytes(a)
    cases = {
        "truncated": good[:-5],
        "header": good[:6],
        "trailing": good + b"\x00",
        "magic": b"\x08\x03" + good[2:],
        "typecode": good[:2] + b"\x42" + good[3:],
        "empty": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError):
            read_idx(tmp_path / name)
    (tmp_path / "trunc.gz").write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(DataError, match="trunc.gz"):
        read_idx(tmp_path / "trunc.gz")
    (tmp_path / "ok").write_bytes(good)
    with pytest.raises(DataError, match="dimensions"):
        read_idx(tmp_path / "ok", ndim=1)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "missing")


# ----------------------------------------------------------------------------- ZCA

def naive_kornia_zca(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kornia.enhance.zca_mean(dim=0, unbiased=True) written out in numpy float64."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    mean = flat.mean(0)
    cov = np.cov(flat, rowvar=False)  # unbiased (N - 1)
    u, s, _ = np.linalg.svd(cov)
    t = u @ np.diag(1 / np.sqrt(s + eps)) @ u.T
    t_inv = u @ np.diag(np.sqrt(s + eps)) @ u.T
    return mean, t, t_inv


def small_images(n=300, seed=0) -> torch.Tensor:
    g = generator(seed)
    base = torch.rand(n, 3, 4, 4, generator=g)
    return (base + 0.5 * base.roll(1, dims=3)).clamp(0, 1)  # correlated pixels, like images


def test_zca_matches_naive_kornia_formula():
    x = small_images()
    z = ZCA.fit(x, eps=0.1)
    mean, t, t_inv = naive_kornia_zca(x.numpy(), 0.1)
    assert z.mean.dtype == torch.float32 and z.whiten.shape == (48, 48) and z.eps == 0.1
    np.testing.assert_allclose(z.mean.numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(z.whiten.numpy(), t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z.unwhiten.numpy(), t_inv, rtol=1e-5, atol=1e-5)
    expected = (x.numpy().reshape(300, -1) - mean) @ t
    np.testing.assert_allclose(z.apply(x).numpy().reshape(300, -1), expected, atol=1e-4)
    # the whitened covariance is T Sigma T, and with a tiny eps it is the identity
    w = z.apply(x).reshape(300, -1).double()
    cov = np.cov(x.numpy().reshape(300, -1).astype(np.float64), rowvar=False)
    np.testing.assert_allclose(torch.cov(w.T).numpy(), t @ cov @ t, atol=1e-4)
    w_tiny = ZCA.fit(x, eps=1e-4).apply(x).reshape(300, -1).double()
    assert torch.allclose(torch.cov(w_tiny.T), torch.eye(48, dtype=torch.float64), atol=0.02)


def test_zca_round_trip_is_identity():
    x = small_images()
    z = ZCA.fit(x, eps=0.1)
    assert torch.allclose(z.invert(z.apply(x)), x, atol=1e-5)
    w = torch.randn(5, 3, 4, 4, generator=generator(3))
    assert torch.allclose(z.apply(z.invert(w)), w, atol=1e-4)
    with pytest.raises(DataError):
        z.apply(torch.zeros(2, 1, 4, 4))
    with pytest.raises(DataError):
        ZCA.fit(x, eps=0.0)


def test_zca_cache_hit_and_corrupt_file(tmp_path, monkeypatch):
    x = small_images()
    z1 = ZCA.fit_cached(x, 0.1, key_parts=("toy",))
    files = list((tmp_path / "cache" / "zca").glob("*.npz"))
    assert [f.stem for f in files] == [z1.key]

    real = zca_mod.zca_matrices
    monkeypatch.setattr(zca_mod, "zca_matrices", lambda *a, **k: pytest.fail("refitted despite a cache hit"))
    z2 = ZCA.fit_cached(x, 0.1, key_parts=("toy",))
    for f in ("mean", "whiten", "unwhiten"):
        assert torch.equal(getattr(z1, f), getattr(z2, f))
    assert z2.key == z1.key
    # a different eps, name or content is a different entry
    monkeypatch.setattr(zca_mod, "zca_matrices", real)
    assert ZCA.fit_cached(x, 0.2, key_parts=("toy",)).key != z1.key
    assert ZCA.fit_cached(x[:-1], 0.1, key_parts=("toy",)).key != z1.key

    files[0].write_bytes(b"PK\x03\x04 this is not a zip file")
    with pytest.warns(RuntimeWarning, match="refitting"):
        z3 = ZCA.fit_cached(x, 0.1, key_parts=("toy",))
    assert torch.equal(z3.whiten, z1.whiten)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file is good again
        assert torch.equal(ZCA.fit_cached(x, 0.1, key_parts=("toy",)).whiten, z1.whiten)


def test_zca_dataset_is_fitted_on_train_without_validation():
    ds = load_dataset("toy", zca=True, zca_eps=0.1)
    raw = load_raw("toy")
    _, train_idx = stratified_split(raw.y_train, 24, 0)
    fit_on = raw.x_train[train_idx]
    assert torch.allclose(ds.zca.mean, fit_on.reshape(len(fit_on), -1).mean(0), atol=1e-6)
    assert not torch.allclose(ds.zca.mean, raw.x_train.reshape(256, -1).mean(0), atol=1e-6)
    assert torch.allclose(ds.x_test, ds.zca.apply(raw.x_test), atol=1e-5)  # no mean/std on top
    assert torch.allclose(ds.to_pixels(ds.x_test), raw.x_test, atol=1e-4)
    assert ds.meta["normalization"] == "zca" and ds.meta["zca_eps"] == 0.1 and ds.meta["zca_key"] == ds.zca.key
    assert ds.meta["mean"] is None
    # limit_train does not change the transform (fitted before the limit)
    assert load_dataset("toy", zca=True, limit_train=8).zca.key == ds.zca.key


# ----------------------------------------------------------------------------- subsets

def test_class_balanced_indices_counts_order_determinism():
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 12)[torch.randperm(29, generator=generator(5))]
    state = torch.get_rng_state()
    idx = class_balanced_indices(y, 5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert idx.dtype == torch.int64 and len(idx) == 15 and len(set(idx.tolist())) == 15
    assert y[idx].tolist() == [0] * 5 + [1] * 5 + [2] * 5  # grouped by class, ascending
    assert torch.equal(idx, class_balanced_indices(y, 5, seed=3))
    assert not torch.equal(idx, class_balanced_indices(y, 5, seed=4))
    # class 2's pick does not depend on which other classes are asked for
    assert torch.equal(class_balanced_indices(y, 5, 3, classes=[2]), idx[10:])
    assert len(class_balanced_indices(y, 7, 0)) == 21
    with pytest.raises(DataError, match=r"class 1 has only 7"):
        class_balanced_indices(y, 8, 0)
    with pytest.raises(DataError):
        class_balanced_indices(y, -1, 0)


def test_stratified_split_is_proportional_for_unbalanced_labels():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    val, rest = stratified_split(y, 10, 0)
    assert torch.bincount(y[val]).tolist() == [5, 3, 2]
    assert torch.equal(torch.sort(torch.cat([val, rest])).values, torch.arange(100))
    assert torch.all(val[1:] > val[:-1])  # ascending
    with pytest.raises(DataError):
        stratified_split(y, 98, 0)
    assert len(stratified_split(y, 0, 0)[0]) == 0


def test_limit_train_is_class_balanced_and_seeded():
    a = load_dataset("toy", limit_train=40)
    b = load_dataset("toy", limit_train=40)
    c = load_dataset("toy", limit_train=40, limit_seed=1)
    assert a.x_train.shape[0] == 40 and torch.equal(torch.bincount(a.y_train), torch.full((4,), 10))
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert torch.equal(a.x_val, c.x_val) and a.x_val.shape[0] == 24  # validation untouched
    assert a.meta["limit_train"] == 40 and a.meta["n_train"] == 40
    assert torch.bincount(a.y_train[balanced_subset(a.y_train, 6, 0)]).tolist() == [2, 2, 1, 1]
    with pytest.raises(DataError):
        load_dataset("toy", limit_train=3)


# ----------------------------------------------------------------------------- registry errors and roots

def test_available_for_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    ok, why = available("fashion-mnist", missing)
    assert not ok and str(missing) in why and "CONDENSE_DATA" in why
    with pytest.raises(DataError, match="--data-root") as e:
        load_dataset("fashion-mnist", missing)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    ok, why = available("cifar10")
    assert not ok and str(tmp_path / "cache" / "datasets" / "cifar10") in why


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(DataError) as e:
        load_dataset("imagenet-22k")
    for name in ("fashion-mnist", "cifar10", "toy"):
        assert name in str(e.value)
    with pytest.raises(DataError):
        available("nope")
    assert dataset_info("FashionMNIST").name == "fashion-mnist"  # MTT's spelling works
    assert set(dataset_names()) >= {"fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "tiny-imagenet", "toy"}


def test_condense_data_env_and_idx_layout(tmp_path, monkeypatch):
    arrays = write_fake_idx_dataset(tmp_path / "data" / "mnist", 40, 20, gz=False)
    monkeypatch.setenv("CONDENSE_DATA", str(tmp_path / "data"))
    ok, where = available("mnist")
    assert ok and str(tmp_path / "data" / "mnist") in where
    ds = load_dataset("mnist", val_size=10)
    raw = load_raw("mnist")
    assert raw.x_train.shape == (40, 1, 28, 28)
    assert torch.equal(raw.x_train[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255)
    assert ds.x_train.shape[0] == 30 and ds.x_val.shape[0] == 10 and ds.x_test.shape[0] == 20
    # torchvision's download layout <root>/MNIST/raw is found too
    write_fake_idx_dataset(tmp_path / "tv" / "MNIST" / "raw", 20, 10)
    assert load_raw("mnist", tmp_path / "tv").x_train.shape[0] == 20
    # images and labels that do not belong together
    bad = tmp_path / "bad"
    write_fake_idx_dataset(bad, 20, 10)
    (bad / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(19, np.uint8))))
    with pytest.raises(DataError, match="count"):
        load_raw("mnist", bad)


def test_register_custom_dataset_and_validation():
    info = DatasetInfo("my-set", 2, 1, (4, 4), (0.5,), (0.25,), ("a", "b"), 2, "made up")

    def loader(root):
        x = torch.linspace(0, 1, 8 * 16).reshape(8, 1, 4, 4)
        return x, torch.arange(8) % 2, x[:4].clone(), torch.arange(4) % 2

    register_dataset("my-set", info, loader, needs_files=False, locate=lambda r: True)
    try:
        ds = load_dataset("my-set")
        assert ds.x_train.shape[0] == 6 and ds.x_val.shape[0] == 2
        assert torch.allclose(ds.to_pixels(ds.x_test), loader(None)[2], atol=1e-6)
        with pytest.raises(DataError, match="already registered"):
            register_dataset("my_set", info, loader)
        register_dataset("my-set", info, lambda r: (torch.full((2, 1, 4, 4), 2.0), torch.zeros(2), torch.zeros(0, 1, 4, 4),
                                                    torch.zeros(0)), needs_files=False, replace_existing=True)
        with pytest.raises(DataError, match=r"\[0, 1\]"):
            load_dataset("my-set", val_size=0)
    finally:
        datasets_mod._REGISTRY.pop("my-set", None)
    with pytest.raises(DataError):
        DatasetInfo("x", 10, 3, (32, 32), (0.5,), (0.5,))  # one mean for three channels


def test_download_only_when_asked(tmp_path):
    info = DatasetInfo("dl-set", 2, 1, (2, 2), (0.5,), (0.5,), (), 0)
    calls = []

    def downloader(root: Path) -> None:
        calls.append(root)
        root.mkdir(parents=True)
        (root / "data.npy").write_bytes(b"")

    def loader(root: Path):
        x = torch.zeros(4, 1, 2, 2)
        return x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([0, 1, 0, 1])

    register_dataset("dl-set", info, loader, locate=lambda r: (r / "data.npy").exists(), downloader=downloader,
                     expects="data.npy")
    try:
        with pytest.raises(DataError, match="download=True"):
            load_raw("dl-set")
        assert calls == []
        raw = load_raw("dl-set", download=True)
        assert calls == [tmp_path / "cache" / "datasets" / "dl-set"] and raw.root == calls[0]
        load_raw("dl-set", download=True)  # found now: no second download
        assert len(calls) == 1
        register_dataset("dl-set", info, loader, locate=lambda r: False, replace_existing=True,
                         downloader=lambda r: (_ for _ in ()).throw(ConnectionError("no network")))
        with pytest.raises(DataError, match="no network"):
            load_raw("dl-set", tmp_path / "x", download=True)
    finally:
        datasets_mod._REGISTRY.pop("dl-set", None)


# ----------------------------------------------------------------------------- CIFAR

def write_cifar10_binary(root: Path, per_batch: int = 12, n_test: int = 10) -> tuple[np.ndarray, np.ndarray]:
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 7):
        n = per_batch if i < 6 else n_test
        x, y = fake_cifar_arrays(n, seed=i)
        name = f"data_batch_{i}.bin" if i < 6 else "test_batch.bin"
        (d / name).write_bytes(np.concatenate([y.astype(np.uint8)[:, None], x], axis=1).tobytes())
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def test_cifar10_binary_loader(tmp_path):
    x, y = write_cifar10_binary(tmp_path)
    assert available("cifar10", tmp_path)[0]
    raw = load_raw("cifar10", tmp_path)
    assert raw.x_train.shape == (60, 3, 32, 32) and raw.x_test.shape == (10, 3, 32, 32)
    assert torch.equal(raw.x_train, torch.from_numpy(x[:60]).float().div(255).reshape(60, 3, 32, 32))
    assert torch.equal(raw.y_train, torch.from_numpy(y[:60])) and torch.equal(raw.y_test, torch.from_numpy(y[60:]))
    ds = load_dataset("cifar10", tmp_path, val_size=10)
    assert ds.x_train.shape[0] == 50 and torch.equal(torch.bincount(ds.y_val), torch.ones(10, dtype=torch.int64))
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    assert torch.allclose(ds.x_test, (raw.x_test - mean) / std, atol=1e-5)
    # truncated batch
    f = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="data_batch_3"):
        load_raw("cifar10", tmp_path)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_python_versions_via_restricted_unpickler(tmp_path, protocol):
    d10 = tmp_path / "c10" / "cifar-10-batches-py"
    d10.mkdir(parents=True)
    expected = []
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        x, y = fake_cifar_arrays(6, seed=10 + i)
        batch = {b"batch_label": b"batch", b"labels": y.tolist(), b"data": x, b"filenames": [b"a.png"] * 6}
        (d10 / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        expected.append((x, y))
    raw = load_raw("cifar10", tmp_path / "c10")
    assert raw.x_train.shape == (30, 3, 32, 32) and raw.x_test.shape == (6, 3, 32, 32)
    x_exp = np.concatenate([e[0] for e in expected[:5]]).reshape(30, 3, 32, 32)
    assert torch.equal(raw.x_train, torch.from_numpy(x_exp).float() / 255)
    assert torch.equal(raw.y_test, torch.from_numpy(expected[5][1]))

    d100 = tmp_path / "c100" / "cifar-100-python"
    d100.mkdir(parents=True)
    for name, n in (("train", 200), ("test", 100)):
        x, y = fake_cifar_arrays(n, seed=n, num_classes=100)
        batch = {b"data": x, b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist()}
        (d100 / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    ds = load_dataset("cifar100", tmp_path / "c100", val_size=100)
    assert ds.x_train.shape[0] == 100 and ds.info.num_classes == 100 and len(ds.info.class_names) == 100
    assert torch.equal(torch.bincount(ds.y_val, minlength=100), torch.ones(100, dtype=torch.int64))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    x, y = fake_cifar_arrays(4, 0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(pickle.dumps({b"data": x, b"labels": y.tolist()}))
    (d / "data_batch_2").write_bytes(pickle.dumps({b"data": x, b"labels": y.tolist(), b"x": _Evil()}))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_raw("cifar10", tmp_path)
    assert not marker.exists()
    (tmp_path / "obj").write_bytes(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(DataError):
        restricted_load(tmp_path / "obj")
    (tmp_path / "cut").write_bytes(pickle.dumps({b"data": x})[:-10])
    with pytest.raises(DataError):
        restricted_load(tmp_path / "cut")


# ----------------------------------------------------------------------------- SVHN

def test_svhn_mat_loader(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 30), ("test_32x32.mat", 10)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10, 10 means digit 0
        scipy_io.savemat(tmp_path / name, {"X": x, "y": y})
        if name.startswith("train"):
            x_train = x
    raw = load_raw("svhn", tmp_path)
    assert raw.x_train.shape == (30, 3, 32, 32) and raw.x_test.shape == (10, 3, 32, 32)
    assert raw.y_train.tolist() == [(i % 10 + 1) % 10 for i in range(30)]
    assert 0 in raw.y_train.tolist() and 10 not in raw.y_train.tolist()
    n, c, h, w = 7, 2, 5, 11
    assert raw.x_train[n, c, h, w].item() == pytest.approx(x_train[h, w, c, n] / 255)
    ds = load_dataset("svhn", tmp_path, val_size=10)
    assert ds.x_train.shape[0] == 20
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DataError):
        load_raw("svhn", tmp_path)


# ----------------------------------------------------------------------------- Tiny-ImageNet

def write_tiny_imagenet(root: Path, per_class_train: int = 2) -> list[str]:
    from PIL import Image

    d = root / "tiny-imagenet-200"
    wnids = [f"n{(i * 7919) % 100000:08d}" for i in range(200)]  # not in sorted order
    (d / "val" / "images").mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (d / "words.txt").write_text("".join(f"{w}\tthing {w}, other name\n" for w in wnids))
    colour = {w: (int(w[-3:]) % 256, 255 - int(w[-3:]) % 256, 128) for w in wnids}
    ann = []
    for k, w in enumerate(wnids):
        img_dir = d / "train" / w / "images"
        img_dir.mkdir(parents=True)
        for i in range(per_class_train):
            Image.new("RGB", (64, 64), colour[w]).save(img_dir / f"{w}_{i}.JPEG")
        fname = f"val_{k}.JPEG"
        if k == 0:  # a greyscale original, as a few Tiny-ImageNet images are
            Image.new("L", (64, 64), 77).save(d / "val" / "images" / fname)
        else:
            Image.new("RGB", (64, 64), colour[w]).save(d / "val" / "images" / fname)
        ann.append(f"{fname}\t{w}\t0\t0\t63\t63")
    (d / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return wnids


def test_tiny_imagenet_folder_loader_and_decode_cache(tmp_path, monkeypatch):
    wnids = write_tiny_imagenet(tmp_path / "data")
    assert available("tiny-imagenet", tmp_path / "data")[0]
    raw = load_raw("tiny-imagenet", tmp_path / "data")
    assert raw.x_train.shape == (400, 3, 64, 64) and raw.x_test.shape == (200, 3, 64, 64)
    order = sorted(wnids)  # ImageFolder's class order, as MTT uses
    assert torch.equal(torch.bincount(raw.y_train), torch.full((200,), 2))
    w = wnids[5]
    label = order.index(w)
    first = (raw.y_train == label).nonzero()[0, 0]
    expect = torch.tensor([int(w[-3:]) % 256, 255 - int(w[-3:]) % 256, 128]) / 255
    assert torch.allclose(raw.x_train[first].mean(dim=(1, 2)), expect, atol=3 / 255)  # JPEG is lossy
    grey = raw.x_test[raw.y_test == order.index(wnids[0])][0]
    assert torch.allclose(grey, torch.full_like(grey, 77 / 255), atol=2 / 255)  # L -> RGB
    assert raw.class_names[label] == f"thing {w}"

    monkeypatch.setattr(readers_mod, "decode_images", lambda *a, **k: pytest.fail("decoded again despite cache"))
    again = load_raw("tiny-imagenet", tmp_path / "data")
    assert torch.equal(again.x_train, raw.x_train) and torch.equal(again.y_test, raw.y_test)
    ds = load_dataset("tiny-imagenet", tmp_path / "data", val_size=200)
    assert ds.x_train.shape[0] == 200 and ds.x_val.shape[0] == 200 and ds.info.class_names[label] == f"thing {w}"
