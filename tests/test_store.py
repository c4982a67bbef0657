"""The trajectory store: rows in, rows out, crash safety, identity, and the promised errors."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from condense.runtime.errors import CondenseError, FormatError
from condense.nets import FlatLayout, build_net
from trajectories import open_store
from trajectories.store import ExpertWriter, expert_path, prepare_store, seal_experts

EPOCHS = 3


def meta(**over):
    net = build_net("convnet:width=4", 3, 4, (16, 16))
    layout = FlatLayout.of(net)
    m = {"dataset": "toy", "arch": "convnet:width=4", "layout": layout.to_json(), "n_params": layout.numel,
         "epochs": EPOCHS, "dtype": "float32", "protocol": {"lr": 0.01}, "config": {"out": "x"}}
    m.update(over)
    return m


def rows(index: int, n: int) -> torch.Tensor:
    return torch.randn(EPOCHS + 1, n, generator=torch.Generator().manual_seed(index))


def write_expert(folder, index: int) -> torch.Tensor:
    n = open_store(folder).n_params
    data = rows(index, n)
    w = ExpertWriter(folder, index, attrs={"seed": 0})
    for e in range(EPOCHS + 1):
        w.write_epoch(e, data[e], test_acc=0.1 * e, train_loss=float("nan") if e == 0 else 1.0 / e)
    w.finish()
    return data


@pytest.fixture
def store_dir(tmp_path):
    folder = tmp_path / "store"
    assert prepare_store(folder, meta(), 3) == [0, 1, 2]
    return folder


def test_rows_round_trip_and_one_row_reads(store_dir):
    written = [write_expert(store_dir, i) for i in range(3)]
    store = open_store(store_dir)
    assert len(store) == 3 and store.epochs == EPOCHS
    for i, data in enumerate(written):
        assert torch.equal(store.expert(i), data)
        assert torch.equal(store.epoch(i, 2), data[2])
    assert np.allclose(store.test_acc(1), [0, 0.1, 0.2, 0.3])
    assert np.isnan(store.train_loss(1)[0]) and store.train_loss(1)[2] == 0.5
    assert [t.shape for t in store] == [(EPOCHS + 1, store.n_params)] * 3
    with h5py.File(expert_path(store_dir, 0)) as f:
        assert f["params"].chunks == (1, store.n_params), "one epoch must be one chunk, read alone"
    assert store.layout == FlatLayout.from_json(meta()["layout"])
    with pytest.raises(IndexError):
        store.epoch(0, EPOCHS + 1)
    with pytest.raises(IndexError):
        store.expert(3)


def test_rows_are_copies_not_aliases(store_dir):
    live = torch.zeros(open_store(store_dir).n_params)
    w = ExpertWriter(store_dir, 0)
    for e in range(EPOCHS + 1):
        live.fill_(float(e))  # the same tensor, changed in place as training would
        w.write_epoch(e, live)
    w.finish()
    assert open_store(store_dir).expert(0)[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_float16_store(tmp_path):
    prepare_store(tmp_path / "s", meta(dtype="float16"), 1)
    data = write_expert(tmp_path / "s", 0)
    back = open_store(tmp_path / "s").expert(0)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, data, atol=4e-3, rtol=1e-3)


def test_unfinished_expert_is_invisible_and_cleaned_on_resume(store_dir):
    write_expert(store_dir, 0)
    w = ExpertWriter(store_dir, 1)
    w.write_epoch(0, rows(1, w.n_params)[0])
    assert not list(store_dir.glob(".expert_00001*")), "an unfinished expert is only in memory"
    (store_dir / ".expert_00001.h5.tmp-99999-0").write_bytes(b"\x89HDF")  # a write killed half way
    assert len(open_store(store_dir)) == 1
    assert list(store_dir.glob(".expert_00001.h5.tmp-*"))
    assert prepare_store(store_dir, meta(), 3) == [1, 2]
    assert not list(store_dir.glob(".expert_*")), "stale temporary files are removed on resume"
    assert len(open_store(store_dir)) == 1


def test_finish_requires_every_epoch_and_abort_removes_the_file(store_dir):
    w = ExpertWriter(store_dir, 0)
    w.write_epoch(0, rows(0, w.n_params)[0])
    with pytest.raises(RuntimeError, match="never written"):
        w.finish()
    assert not list(store_dir.glob(".expert_*")) and len(open_store(store_dir)) == 0


def test_resume_may_add_experts_but_refuses_other_settings(store_dir):
    write_expert(store_dir, 0)
    assert prepare_store(store_dir, meta(config={"out": "elsewhere"}), 5) == [1, 2, 3, 4]
    assert json.loads((store_dir / "manifest.json").read_text())["experts_planned"] == 5
    with pytest.raises(CondenseError, match=r"differs in: arch.*protocol|differs in: protocol"):
        prepare_store(store_dir, meta(protocol={"lr": 0.1}), 3)
    assert len(open_store(store_dir)) == 1, "a refused resume must not touch finished experts"


def test_resume_across_a_trajectory_neutral_protocol_key_keeps_the_store_identity(tmp_path):
    folder = tmp_path / "store"
    prepare_store(folder, meta(protocol={"lr": 0.01, "test_batch_size": 1024}), 2)
    key = json.loads((folder / "manifest.json").read_text())["store_key"]
    write_expert(folder, 0)
    # A newer version batching test accuracy differently resumes the same store ...
    assert prepare_store(folder, meta(protocol={"lr": 0.01, "test_batch_size": 128}), 2) == [1]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["store_key"] == key and manifest["protocol"]["test_batch_size"] == 1024
    write_expert(folder, 1)
    assert len(open_store(folder)) == 2, "experts of both runs carry the store's key"
    # ... but a change that shapes the trajectory is still refused.
    with pytest.raises(CondenseError, match="differs in: protocol"):
        prepare_store(folder, meta(protocol={"lr": 0.02, "test_batch_size": 128}), 2)


def test_non_store_folder_is_refused(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CondenseError, match="not empty and not a trajectory store"):
        prepare_store(tmp_path / "busy", meta(), 1)


def test_unwritable_output_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CondenseError, match="cannot write"):
        prepare_store(tmp_path / "file" / "store", meta(), 1)


def test_disk_full_while_writing_keeps_finished_experts(store_dir, monkeypatch):
    write_expert(store_dir, 0)
    w = ExpertWriter(store_dir, 1)
    for e in range(w.params.shape[0]):
        w.write_epoch(e, torch.zeros(w.n_params))

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("condense.runtime.files.os.write", full)
    with pytest.raises(CondenseError, match="cannot write expert 1 .*No space left on device"):
        w.finish()
    store = open_store(store_dir)
    assert len(store) == 1 and not list(store_dir.glob(".expert_*"))


def test_bad_stores_give_one_clear_error(tmp_path, store_dir):
    with pytest.raises(FormatError, match="not a folder"):
        open_store(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no manifest.json"):
        open_store(tmp_path / "empty")
    manifest = store_dir / "manifest.json"
    good = manifest.read_text()
    manifest.write_text("{not json")
    with pytest.raises(FormatError, match="unreadable manifest"):
        open_store(store_dir)
    manifest.write_text(json.dumps(dict(json.loads(good), version=99)))
    with pytest.raises(FormatError, match="version 99 is not supported"):
        open_store(store_dir)
    manifest.write_text(good)

    write_expert(store_dir, 0)
    path = expert_path(store_dir, 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(FormatError, match="expert_00000.h5"):
        open_store(store_dir).epoch(0, 1)
    path.write_bytes(data)
    with h5py.File(path, "a") as f:
        f.attrs["store_key"] = "someone-else"
    with pytest.raises(FormatError, match="belongs to another store"):
        open_store(store_dir).expert(0)


def _as_written_by_0_1(folder) -> None:
    """Remove the protocol's dsa_share from a manifest, as condense 0.1 wrote it (key kept)."""
    manifest = folder / "manifest.json"
    m = json.loads(manifest.read_text())
    m["protocol"].pop("dsa_share", None)
    manifest.write_text(json.dumps(m))


@pytest.mark.parametrize("old_protocol, source, new_share, resumes", [
    ({"lr": 0.01, "dsa": True}, "recorded", "batch", True),    # 0.1's experts drew once per batch
    ({"lr": 0.01, "dsa": True}, "recorded", "image", False),   # not mixed with per-image experts
    ({"lr": 0.01, "dsa": True}, "mtt-import", "image", True),  # MTT's buffer.py drew per image
    ({"lr": 0.01, "dsa": False}, "recorded", "image", True),   # without DSA the share means nothing
])
def test_a_store_of_condense_0_1_reads_its_dsa_share_and_resumes_only_with_it(tmp_path, old_protocol, source,
                                                                              new_share, resumes):
    folder = tmp_path / "store"
    prepare_store(folder, meta(protocol=old_protocol, source=source), 2)
    write_expert(folder, 0)
    _as_written_by_0_1(folder)
    store = open_store(folder)
    assert store.dsa_share == (None if not old_protocol["dsa"] else "image" if source == "mtt-import" else "batch")
    new = meta(protocol={**old_protocol, "dsa_share": new_share}, source=source)
    if resumes:
        assert prepare_store(folder, new, 2) == [1]
        assert len(open_store(folder)) == 1
    else:
        with pytest.raises(CondenseError, match="DSA share 'batch'"):
            prepare_store(folder, new, 2)


def test_resume_records_a_damaged_expert_again(store_dir):
    for i in range(3):
        write_expert(store_dir, i)
    seal_experts(store_dir)
    sums = json.loads((store_dir / "manifest.json").read_text())["checksums"]
    assert sorted(sums) == ["expert_00000.h5", "expert_00001.h5", "expert_00002.h5"]
    flipped = store_dir / "expert_00001.h5"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit of rot in the parameters: still a valid HDF5 file
    flipped.write_bytes(bytes(data))
    (store_dir / "expert_00002.h5").write_bytes(b"")  # cut to nothing
    notes = []
    assert prepare_store(store_dir, meta(), 3, note=notes.append) == [1, 2]
    assert any("expert_00001.h5: damaged (its checksum differs" in n for n in notes), notes
    assert len(open_store(store_dir)) == 1
    assert sorted(json.loads((store_dir / "manifest.json").read_text())["checksums"]) == ["expert_00000.h5"]


def test_unsealed_expert_is_checked_by_reading(store_dir):
    write_expert(store_dir, 0)
    (store_dir / "expert_00001.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    notes = []
    assert prepare_store(store_dir, meta(), 2, note=notes.append) == [1]
    assert any("expert_00001.h5: damaged" in n for n in notes), notes
