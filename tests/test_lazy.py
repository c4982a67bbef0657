"""Datasets read from their files as needed (ImageNet-1k): the lazy image split, torchvision teachers,
and the decoupled commands on such a dataset, at toy size (a registered 4-class image folder)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from condense.data import load_dataset
from condense.data.datasets import DatasetInfo, register_dataset
from condense.data.lazy import LazyImages, decode_resized, read_image_folder
from condense.runtime.errors import ConfigError, DataError

CPU = torch.device("cpu")
QUIET = dict(progress=lambda s: None, bars=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """4 classes x (6 train, 2 val) small JPEGs of different sizes, registered as 'lazytoy' (16 px)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    for split, n in (("train", 6), ("val", 2)):
        for k in range(4):
            d = root / split / f"n{k:08d}"
            d.mkdir(parents=True)
            for j in range(n):
                base = np.zeros((20 + 3 * j, 24, 3), dtype=np.uint8) + np.uint8(40 + 50 * k)
                a = np.clip(base + rng.randint(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"img{j}.JPEG")
    register_dataset("lazytoy", DatasetInfo("lazytoy", 4, 3, (16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (), 0),
                     lambda r: read_image_folder(r, "lazytoy", 16, 18), default_root=root, replace_existing=True)
    return root


def test_a_lazy_split_decodes_only_what_is_indexed_and_refuses_whole_split_use(folder):
    ds = load_dataset("lazytoy")
    assert isinstance(ds.x_train, LazyImages) and ds.x_train.shape == (24, 3, 16, 16) and len(ds.x_test) == 8
    assert ds.y_train.tolist() == [k for k in range(4) for _ in range(6)]
    assert ds.info.class_names == ("n00000000", "n00000001", "n00000002", "n00000003")
    x = ds.x_train[torch.tensor([7, 0])]
    manual = torch.from_numpy(decode_resized(ds.x_train.files[7], 16, 18)).float() / 255
    torch.testing.assert_close(x[0], (manual - 0.5) / 0.25)
    assert ds.x_train[2:5].shape == (3, 3, 16, 16) and ds.x_train[3].shape == (3, 16, 16)
    with pytest.raises(DataError, match="read from its files as needed"):
        ds.x_train.to(CPU)
    small = load_dataset("lazytoy", limit_train=8)
    assert isinstance(small.x_train, LazyImages) and len(small.x_train) == 8
    with pytest.raises(DataError, match="ZCA"):
        load_dataset("lazytoy", zca=True)


def test_torchvision_resnet18_imports_as_a_teacher_with_the_same_outputs(folder, tmp_path, capsys):
    import torchvision

    from condense.cli.main import main
    from condense.labels.teacher_file import load_teacher_file

    tv = torchvision.models.resnet18(num_classes=4).eval()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "teacher.h5"
    assert main(["teacher", "--dataset", "lazytoy", "--arch", "resnet18-imagenet", "--weights",
                 str(tmp_path / "r18.pth"), "--out", str(out)]) == 0
    t = load_teacher_file(out)
    x = load_dataset("lazytoy").x_test[0:4]
    with torch.no_grad():
        torch.testing.assert_close(t.net(x), tv(x))
    assert 0 <= t.accuracy <= 100 and t.config["weights_sha256"]
    capsys.readouterr()
    assert main(["teacher", "--dataset", "lazytoy", "--arch", "resnet18", "--weights", str(tmp_path / "r18.pth"),
                 "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "conv1.weight has shape (64, 3, 7, 7)" in err[0]
    torch.save({"not": "weights", "x": [1, 2]}, tmp_path / "bad.pth")
    assert main(["teacher", "--dataset", "lazytoy", "--arch", "resnet18-imagenet", "--weights",
                 str(tmp_path / "bad.pth"), "--out", str(tmp_path / "y.h5")]) == 2


def test_rded_labels_and_fair_scores_run_on_a_lazy_dataset(folder, tmp_path):
    from condense.labels.run import LabelsConfig, run_labels
    from condense.labels.squeeze import TeacherConfig, train_teacher
    from condense.methods.rded import RDEDConfig, run_rded
    from evals import EvalConfig, run_eval

    teacher = str(tmp_path / "teacher.h5")
    with pytest.raises(DataError, match="read from its files"):  # training a teacher needs the split in memory
        train_teacher(TeacherConfig(dataset="lazytoy", arch="convnet:norm=batch,width=8", epochs=1, out=teacher),
                      CPU, progress=False)
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), tmp_path / "r18.pth")
    train_teacher(TeacherConfig(dataset="lazytoy", arch="resnet18-imagenet", weights=str(tmp_path / "r18.pth"),
                                out=teacher), CPU, progress=False)
    s = run_rded(RDEDConfig(teacher=teacher, ipc=1, arch="convnet:width=8", factor=2, num_crop=2, candidates=4,
                            out=str(tmp_path / "rded.h5")), CPU, **QUIET)
    assert s.images.shape == (4, 3, 16, 16)
    soft = str(tmp_path / "soft.h5")
    run_labels(LabelsConfig(synset=s.config["out"], views="per-epoch", view_epochs=2, view_strategy="rrc+flip",
                            out=soft), progress=lambda m: None, bars=False)
    with pytest.raises(ConfigError, match="--full-accuracy"):
        run_eval(EvalConfig(runs=1, epochs=2, scores=True, json=str(tmp_path / "a.json")), [soft], note=lambda m: None,
                 bars=False)
    doc = run_eval(EvalConfig(runs=2, epochs=2, scores=True, full_accuracy=69.76, json=str(tmp_path / "b.json")),
                   [soft], note=lambda m: None, bars=False)
    got = {r["score"] for r in doc["scores"]}
    assert {"hlr", "ior", "lrs", "ars"} <= got and doc["protocol"]["full_accuracy_given"] == 69.76
    hard = next(r for r in doc["results"] if r["variant"] == "hard")
    hlr = next(r for r in doc["scores"] if r["score"] == "hlr")
    assert hlr["mean"] == pytest.approx(69.76 - sum(hard["accs"]) / 2)
    assert json.loads(json.dumps(doc))  # plain data
