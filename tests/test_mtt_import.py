"""Importing MTT replay buffers (replay_buffer_*.pt) into a trajectory store."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from condense.data import dataset_info
from condense.runtime.errors import CondenseError, FormatError
from condense.nets import FlatLayout, build_net
from condense.runtime.rng import generator
from trajectories.mtt_import import import_mtt
from trajectories.record import BufferConfig, record_store
from trajectories.store import open_store

torch.set_num_threads(1)
ARCH = "convnet:width=8"
QUIET = {"progress": lambda s: None}


def _net(arch=ARCH, dataset="toy", seed=0):
    info = dataset_info(dataset)
    return build_net(arch, info.channels, info.num_classes, info.image_size, generator=generator(seed))


def fake_expert(seed: int, snapshots: int = 3, arch=ARCH, dataset="toy") -> list[list[torch.Tensor]]:
    """An MTT-style expert: snapshot 0 = a real net's parameters(), then random drifts (copies)."""
    net = _net(arch, dataset, seed)
    g = torch.Generator().manual_seed(1000 + seed)
    out = [[p.detach().clone() for p in net.parameters()]]
    for _ in range(snapshots - 1):
        out.append([t + 0.01 * torch.randn(t.shape, generator=g) for t in out[-1]])
    return out


def write_buffers(folder, files=2, experts=2, snapshots=3, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    paths, originals = [], []
    for f in range(files):
        buf = [fake_expert(10 * f + k, snapshots, **kw) for k in range(experts)]
        originals += buf
        path = folder / f"replay_buffer_{f}.pt"
        torch.save(buf, path)
        paths.append(path)
    return paths, originals


@pytest.fixture(scope="module")
def layout():
    return FlatLayout.of(_net())


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mtt")
    paths, originals = write_buffers(tmp / "buffers")
    out = tmp / "store"
    n = import_mtt(paths, out, dataset="toy", arch=ARCH, **QUIET)
    return paths, originals, out, n


def test_import_stores_every_snapshot_exactly(imported, layout):
    paths, originals, out, n = imported
    assert n == 4
    store = open_store(out)
    assert len(store) == 4 and store.epochs == 2 and store.n_params == layout.numel
    for i, expert in enumerate(originals):
        rows = [layout.flatten(snap) for snap in expert]
        for e, row in enumerate(rows):
            assert torch.equal(store.epoch(i, e), row)
        assert torch.equal(store.expert(i), torch.stack(rows))
        assert np.isnan(store.test_acc(i)).all()
        attrs = store.expert_attrs(i)
        assert attrs["source_file"] == f"replay_buffer_{i // 2}.pt" and attrs["source_index"] == i % 2


def test_manifest_records_source_and_files(imported):
    from condense.synset import file_sha256

    paths, _, out, _ = imported
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["source"] == "mtt-import" and meta["dataset"] == "toy"
    assert meta["data"]["val_size"] == 0 and meta["epochs"] == 2 and meta["seed"] is None
    assert meta["imported_from"] == [{"file": p.name, "sha256": file_sha256(p), "experts": 2} for p in paths]
    assert meta["protocol"]["lr"] == 0.01 and meta["protocol"]["momentum"] == 0.0


def test_rerun_resumes_and_another_file_set_is_refused(imported, tmp_path):
    paths, _, out, _ = imported
    assert import_mtt(paths, out, dataset="toy", arch=ARCH, **QUIET) == 0
    # Remove one expert: the rerun writes exactly that one back.
    victim = sorted(out.glob("expert_*.h5"))[2]
    before = open_store(out).expert(2)
    victim.unlink()
    assert import_mtt(paths, out, dataset="toy", arch=ARCH, **QUIET) == 1
    assert torch.equal(open_store(out).expert(2), before)
    # Another order renumbers experts: refused, not mixed.
    with pytest.raises(CondenseError, match="imported_from"):
        import_mtt(paths[::-1], out, dataset="toy", arch=ARCH, **QUIET)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_pickled_object_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "replay_buffer_0.pt"
    torch.save([fake_expert(0), _Evil(marker)], path)
    with pytest.raises(FormatError, match="refusing to unpickle") as err:
        import_mtt([path], tmp_path / "store", dataset="toy", arch=ARCH, **QUIET)
    assert "\n" not in str(err.value)
    assert not marker.exists() and not (tmp_path / "store").exists()
    # The file really is malicious: a plain (unsafe) load would have run its code.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_missing_and_junk_files_are_format_errors(tmp_path):
    with pytest.raises(FormatError, match="no such"):
        import_mtt([tmp_path / "nope.pt"], tmp_path / "s", dataset="toy", arch=ARCH, **QUIET)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(FormatError, match="junk.pt"):
        import_mtt([junk], tmp_path / "s", dataset="toy", arch=ARCH, **QUIET)
    bad = tmp_path / "dict.pt"
    torch.save({"a": torch.zeros(2)}, bad)
    with pytest.raises(FormatError, match="list of experts"):
        import_mtt([bad], tmp_path / "s", dataset="toy", arch=ARCH, **QUIET)


def test_wrong_arch_or_dataset_names_the_mismatch(tmp_path):
    # A width-16 buffer imported as width 8: the first conv weight differs.
    path = tmp_path / "replay_buffer_0.pt"
    torch.save([fake_expert(0, arch="convnet:width=16")], path)
    with pytest.raises(FormatError) as err:
        import_mtt([path], tmp_path / "store", dataset="toy", arch=ARCH, **QUIET)
    msg = str(err.value)
    assert "replay_buffer_0.pt" in msg and "expert 0" in msg and "epoch 0" in msg and "tensor 0" in msg
    assert "[8, 3, 3, 3]" in msg and "[16, 3, 3, 3]" in msg
    assert not (tmp_path / "store").exists()
    # A toy (3 channels, 16x16) buffer imported as fashion-mnist (1 channel, 28x28, 10 classes).
    torch.save([fake_expert(0)], path)
    with pytest.raises(FormatError, match=r"tensor 0 .*expected shape \[8, 1, 3, 3\].*found \[8, 3, 3, 3\]"):
        import_mtt([path], tmp_path / "store", dataset="fashion-mnist", arch=ARCH, **QUIET)
    # A missing tensor.
    exp = fake_expert(0)
    exp[1] = exp[1][:-1]
    torch.save([exp], path)
    with pytest.raises(FormatError, match="expert 0, epoch 1: 13 parameter tensors"):
        import_mtt([path], tmp_path / "store", dataset="toy", arch=ARCH, **QUIET)


def test_inconsistent_snapshot_counts_are_refused_before_writing(tmp_path):
    a, b = tmp_path / "replay_buffer_0.pt", tmp_path / "replay_buffer_1.pt"
    torch.save([fake_expert(0, 3)], a)
    torch.save([fake_expert(1, 4)], b)
    with pytest.raises(FormatError, match="replay_buffer_1.pt.*4 snapshots"):
        import_mtt([a, b], tmp_path / "store", dataset="toy", arch=ARCH, **QUIET)
    assert not (tmp_path / "store").exists()  # file 0 was fine, but nothing was written
    torch.save([fake_expert(0, 3), fake_expert(1, 2)], a)
    with pytest.raises(FormatError, match="expert 1 has 2 snapshots but expert 0 has 3"):
        import_mtt([a], tmp_path / "store", dataset="toy", arch=ARCH, **QUIET)


def test_aliased_cpu_buffer_is_refused(tmp_path):
    # MTT on a CPU: every snapshot is the live weights (all equal).
    snap = fake_expert(0)[0]
    path = tmp_path / "replay_buffer_0.pt"
    torch.save([[snap, snap, snap]], path)
    with pytest.raises(FormatError, match="alias"):
        import_mtt([path], tmp_path / "store", dataset="toy", arch=ARCH, **QUIET)
    assert list((tmp_path / "store").glob("expert_*")) == []


def test_float16_store(tmp_path, layout):
    paths, originals = write_buffers(tmp_path / "b", files=1, experts=1)
    assert import_mtt(paths, tmp_path / "store", dataset="toy", arch=ARCH, dtype="float16", **QUIET) == 1
    store = open_store(tmp_path / "store")
    ref = torch.stack([layout.flatten(s) for s in originals[0]])
    got = store.expert(0)
    assert got.dtype == torch.float32 and not torch.equal(got, ref)
    assert torch.allclose(got, ref, rtol=1e-3, atol=1e-4)


def test_round_trip_with_a_recorded_store(tmp_path, layout):
    cfg = BufferConfig(dataset="toy", arch=ARCH, experts=1, epochs=1, limit_train=32, val_size=0,
                       devices=["cpu"], out=str(tmp_path / "recorded"))
    record_store(cfg, progress=lambda s: None, bars=False)
    rec = open_store(tmp_path / "recorded")
    traj = rec.expert(0)
    buffer = [[[t.clone() for t in rec.layout.unflatten(row).values()] for row in traj]]
    path = tmp_path / "replay_buffer_0.pt"
    torch.save(buffer, path)
    assert import_mtt([path], tmp_path / "imported", dataset="toy", arch=ARCH, **QUIET) == 1
    imp = open_store(tmp_path / "imported")
    assert imp.layout == rec.layout and imp.epochs == rec.epochs == 1
    assert torch.equal(imp.expert(0), traj)
    assert all(math.isnan(a) for a in imp.test_acc(0))
