"""The evaluation harness: the numbers equal condense.train.evaluate run by run, the grid resumes,
baselines and robustness variants are what they say, bad input is one line."""
from __future__ import annotations

import json

import pytest
import torch

from condense.cli.main import main
from condense.data import load_dataset
from condense.data.subset import class_balanced_indices
from condense.synset import LabelSpec, SynSet, real_subset
from condense.train import TrainProtocol, evaluate
from evals import EvalConfig, run_eval
from evals.report import paired

torch.set_num_threads(1)
ARCH = "convnet:width=8,depth=2"
QUIET = {"note": lambda s: None, "bars": False}


@pytest.fixture(scope="module")
def toy():
    return load_dataset("toy")


@pytest.fixture()
def hard_set(toy, tmp_path):
    s = real_subset(toy, class_balanced_indices(toy.y_train, 2, 123), "herding", config={"arch": ARCH})
    return str(s.save(tmp_path / "hard.h5")), s


@pytest.fixture()
def soft_set(toy, tmp_path):
    s = real_subset(toy, class_balanced_indices(toy.y_train, 2, 7), "tm", config={"arch": ARCH})
    logits = torch.nn.functional.one_hot(s.labels, 4).double() * 3 + torch.randn(len(s.labels), 4,
                                                                                   generator=torch.Generator().manual_seed(0))
    s = s.with_labels(logits.float(), LabelSpec(kind="logits", loss="kl", temperature=2.0))
    return str(s.save(tmp_path / "soft.h5")), s


def cfg_for(tmp_path, **kw) -> EvalConfig:
    """Most tests compare rows with TrainProtocol(epochs=3): condense's schedule (the reference's is tested apart)."""
    return EvalConfig(**{"runs": 2, "epochs": 3, "json": str(tmp_path / "r.json"), "schedule": "condense", **kw})


def test_rows_equal_evaluate_run_by_run_and_the_random_baseline(toy, hard_set, tmp_path):
    path, s = hard_set
    doc = run_eval(cfg_for(tmp_path), [path], **QUIET)
    proto = TrainProtocol(epochs=3)
    test = (toy.x_test, toy.y_test)
    want = [100 * evaluate(s.images, s.labels, ARCH, proto, 0, test=test, num_classes=4, run=r) for r in range(2)]
    set_row = next(r for r in doc["results"] if r["synset"] == path)
    assert set_row["accs"] == pytest.approx(want, abs=1e-9)
    assert set_row["arch"] == ARCH and set_row["method"] == "herding" and set_row["ipc"] == 2
    assert set_row["storage_bytes"] == s.storage_bytes() == doc["storage_bytes"]
    rnd = next(r for r in doc["results"] if r["baseline"] == "random")
    assert rnd["synset"] is None and rnd["ipc"] == 2
    want_rnd = []
    for r in range(2):  # run r trains on the subset of seed 0 + r
        idx = class_balanced_indices(toy.y_train, 2, r)
        want_rnd.append(100 * evaluate(toy.x_train[idx], toy.y_train[idx], ARCH, proto, 0, test=test, num_classes=4, run=r))
    assert rnd["accs"] == pytest.approx(want_rnd, abs=1e-9)
    score = next(x for x in doc["scores"] if x["score"] == "vs_random")
    assert score["mean"] == pytest.approx(sum(want) / 2 - sum(want_rnd) / 2)
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk["results"][0]["accs"] == doc["results"][0]["accs"] and "curves" not in on_disk["results"][0]


def test_split_val_measures_on_the_validation_split_and_keeps_test_keys(toy, hard_set, tmp_path):
    path, s = hard_set
    val = run_eval(cfg_for(tmp_path / "v", split="val", random_baseline=False), [path], **QUIET)
    proto = TrainProtocol(epochs=3)
    want = [100 * evaluate(s.images, s.labels, ARCH, proto, 0, test=(toy.x_val, toy.y_val), num_classes=4, run=r)
            for r in range(2)]
    assert val["results"][0]["accs"] == pytest.approx(want, abs=1e-9)
    assert val["protocol"]["split"] == "val" and val["results"][0]["split"] == "val"
    test = run_eval(cfg_for(tmp_path / "t", random_baseline=False), [path], **QUIET)
    assert test["results"][0]["accs"] != val["results"][0]["accs"]  # 24 val images vs 128 test images
    from evals.grid import job_key
    from evals.protocol import Source, job_kwargs
    src = Source("synset", "toy")
    kw = job_kwargs(src, ARCH, "set", proto, 0, [0], False)
    assert "split" not in kw  # job logs written before --split existed keep their keys
    assert job_key(job_kwargs(src, ARCH, "set", proto, 0, [0], False, split="val")) != job_key(kw)
    with pytest.raises(Exception, match="--split must be one of test, val"):
        run_eval(cfg_for(tmp_path, split="train"), [path], **QUIET)
    no_val = load_dataset("toy", val_size=0)
    s0 = real_subset(no_val, class_balanced_indices(no_val.y_train, 2, 1), "herding", config={"arch": ARCH})
    with pytest.raises(Exception, match="--split val: toy has no validation split here"):
        run_eval(cfg_for(tmp_path, split="val"), [str(s0.save(tmp_path / "noval.h5"))], **QUIET)  # before any job


def test_robustness_variants_train_what_they_say(toy, soft_set, tmp_path):
    path, s = soft_set
    doc = run_eval(cfg_for(tmp_path, robustness=True, random_baseline=False), [path], **QUIET)
    by_variant = {r["variant"]: r for r in doc["results"]}
    assert set(by_variant) == {"set", "hard", "no-dsa"}
    test = (toy.x_test, toy.y_test)
    hard = [100 * evaluate(s.images, s.labels.argmax(1), ARCH, TrainProtocol(epochs=3), 0, test=test, num_classes=4,
                           run=r) for r in range(2)]
    plain = [100 * evaluate(s.images, s.labels, ARCH, TrainProtocol(epochs=3, dsa=False), 0, test=test, num_classes=4,
                            run=r, label_spec=s.label_spec) for r in range(2)]
    assert by_variant["hard"]["accs"] == pytest.approx(hard, abs=1e-9)
    assert by_variant["no-dsa"]["accs"] == pytest.approx(plain, abs=1e-9)
    names = {x["score"] for x in doc["scores"]}
    assert names == {"hard_label_gap", "augmentation_gain"}


def test_a_killed_grid_resumes_without_rerunning_finished_jobs(hard_set, tmp_path, monkeypatch):
    path, _ = hard_set
    cfg = cfg_for(tmp_path, runs=3)
    first = run_eval(cfg, [path], **QUIET)
    log = tmp_path / "r.json.run" / "jobs.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 6  # 3 runs of the set + 3 of the random baseline
    log.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])  # "killed": two jobs lost, one line cut short
    import evals.protocol as protocol

    calls = []
    real = protocol.run_job
    monkeypatch.setattr(protocol, "run_job", lambda **kw: calls.append(kw) or real(**kw))
    again = run_eval(cfg, [path], **QUIET)
    assert len(calls) == 2
    assert again["results"] == first["results"]


def test_a_changed_file_is_not_taken_from_the_log(toy, hard_set, tmp_path):
    path, s = hard_set
    cfg = cfg_for(tmp_path, random_baseline=False)
    before = run_eval(cfg, [path], **QUIET)["results"][0]["accs"]
    s2 = real_subset(toy, class_balanced_indices(toy.y_train, 2, 999), "herding", config={"arch": ARCH})
    s2.save(path)
    after = run_eval(cfg, [path], **QUIET)["results"][0]["accs"]
    assert after != before


def test_full_data_baseline_row(tmp_path):
    doc = run_eval(cfg_for(tmp_path, baseline="full", dataset="toy", archs=[ARCH], runs=1, epochs=2), [], **QUIET)
    (row,) = doc["results"]
    assert row["synset"] is None and row["baseline"] == "full" and row["epochs"] == 2 and 0 <= row["accs"][0] <= 100


def test_full_data_baseline_defaults_to_20_epochs_and_keeps_given_ones():
    from evals.grid import plan

    base = {"baseline": "full", "dataset": "toy", "archs": [ARCH], "runs": 1, "schedule": "condense"}
    assert plan(EvalConfig(**base), [])[0].protocol.epochs == 20
    assert plan(EvalConfig(**base, epochs=300), [])[0].protocol.epochs == 300  # given explicitly: kept
    # the reference's "20 epochs" are its loop's 21
    assert plan(EvalConfig(**{**base, "schedule": "reference"}), [])[0].protocol.epochs == 21


def test_reference_schedule_trains_as_evaluate_synset_does(toy, hard_set, tmp_path):
    """The default schedule is the reference code's loop: E + 1 epochs, a fresh SGD (no momentum) at
    lr x0.1 after epoch E // 2 + 1; its jobs never mix with condense's."""
    path, s = hard_set
    epochs = 4
    doc = run_eval(cfg_for(tmp_path, epochs=epochs, schedule="reference", random_baseline=False), [path], **QUIET)
    row = doc["results"][0]
    assert row["epochs"] == epochs + 1 and doc["protocol"]["decay_restart"] is True
    assert doc["protocol"]["decay_epoch"] == epochs // 2 + 2

    # epochs 0 .. E // 2 + 1 at lr, then a new optimiser at 0.1 lr (the restart itself is checked against a
    # rebuilt SGD in test_train)
    want = []
    for r in range(2):
        proto = TrainProtocol(epochs=epochs + 1, decay_epoch=epochs // 2 + 2, decay_restart=True)
        want.append(100 * evaluate(s.images, s.labels, ARCH, proto, 0, test=(toy.x_test, toy.y_test), num_classes=4,
                                   run=r))
    assert row["accs"] == pytest.approx(want, abs=1e-9)
    condense_doc = run_eval(cfg_for(tmp_path, epochs=epochs, random_baseline=False,
                                    json=str(tmp_path / "c.json")), [path], **QUIET)
    assert condense_doc["results"][0]["epochs"] == epochs
    assert condense_doc["results"][0]["accs"] != row["accs"]


def test_a_failing_job_is_reported_and_the_others_finish(hard_set, tmp_path, monkeypatch):
    path, _ = hard_set
    import evals.protocol as protocol
    from condense.runtime.errors import CondenseError

    real = protocol.run_job

    def flaky(**kw):
        if kw["source"]["kind"] == "random" and kw["runs"] == [1]:
            raise RuntimeError("boom")
        return real(**kw)

    monkeypatch.setattr(protocol, "run_job", flaky)
    with pytest.raises(CondenseError, match="1 evaluation job"):
        run_eval(cfg_for(tmp_path), [path], **QUIET)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [r["synset"] for r in doc["results"]] == [path]  # the complete group is reported
    assert "boom" in doc["failed_jobs"][0]


def test_paired_difference():
    d = paired([70.0, 72.0, 71.0], [60.0, 61.0, 65.0])
    assert d["mean"] == pytest.approx(9.0)


def test_cli_eval_table_json_and_plots(hard_set, tmp_path, capsys):
    path, _ = hard_set
    out = tmp_path / "res.json"
    code = main(["eval", path, "--arch", ARCH, "--arch", "convnet:width=4,depth=1", "--runs", "2", "--epochs", "2",
                 "--json", str(out), "--plots", str(tmp_path / "plots"), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert "random real" in text and "hard.h5" in text and "vs random" in text
    doc = json.loads(out.read_text())
    assert {r["arch"] for r in doc["results"]} == {ARCH, "convnet:width=4,depth=1"}
    assert len(doc["results"]) == 4
    assert (tmp_path / "plots" / "accuracy.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "curves.png").stat().st_size > 1000


def test_one_run_has_no_interval_and_the_table_says_so():
    from evals.report import table

    row = {"synset": "a.h5", "method": "dm", "ipc": 1, "arch": "convnet", "variant": "set", "mean": 60.0,
           "std": 0.0, "ci95": float("nan"), "runs": 1, "baseline": None, "storage_bytes": {}}
    score = {"synset": "a.h5", "arch": "convnet", "score": "vs_random", "mean": 2.5, "std": 0.0, "ci95": float("nan")}
    text = table([row], [score])
    assert "nan" not in text and text.splitlines()[2].rstrip().endswith("+2.50")


@pytest.mark.parametrize("argv,message", [
    (["eval", "{set}", "--runs", "0"], "--runs must be positive"),
    (["eval", "{set}", "--arch", "convnet:depth=9"], "cannot train on toy images"),
    (["eval", "{set}", "--arch", "nosuchnet"], "--arch nosuchnet"),
    (["eval", "{set}", "--devices", "cuda:7"], "cuda"),
    (["eval", "missing.h5"], "no such synthetic-set file"),
    (["eval"], "give synthetic-set files"),
    (["eval", "--baseline", "random", "--dataset", "toy"], "--baseline random needs --ipc"),
    (["eval", "--baseline", "random", "--dataset", "toy", "--ipc", "2", "--ipc", "0"], "--ipc must be positive, at most 10000, got 0"),
    (["eval", "{set}", "--lrs-weight", "1.5"], "--lrs-weight must be in [0, 1], got 1.5"),
])
def test_bad_input_is_one_line(hard_set, tmp_path, capsys, argv, message):
    path, _ = hard_set
    argv = [a.replace("{set}", path) for a in argv] + ["--json", str(tmp_path / "x.json"), "--no-progress"]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_set_of_an_unavailable_dataset_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONDENSE_DATA", str(tmp_path / "empty"))
    s = SynSet.hard(torch.zeros(10, 3, 32, 32), torch.arange(10), dataset="cifar10", num_classes=10, method="dm")
    path = str(s.save(tmp_path / "c10.h5"))
    assert main(["eval", path, "--json", str(tmp_path / "x.json"), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip()
    assert "dataset 'cifar10' is not available here" in err and len(err.splitlines()) == 1


def test_vmap_seeds_gives_the_runs_numbers_and_falls_back_with_a_message(hard_set, tmp_path):
    path, _ = hard_set
    plain = run_eval(cfg_for(tmp_path, random_baseline=False), [path], **QUIET)["results"][0]
    notes: list[str] = []
    cfg = cfg_for(tmp_path, random_baseline=False, vmap_seeds=True, json=str(tmp_path / "v.json"))
    stacked = run_eval(cfg, [path], note=notes.append, bars=False)["results"][0]
    assert stacked["accs"] == pytest.approx(plain["accs"], abs=0.8)  # within one test image of 128
    assert not any("--vmap-seeds" in n for n in notes)
    bn = "convnet:width=8,depth=2,norm=batch"
    cfg = cfg_for(tmp_path, random_baseline=False, vmap_seeds=True, archs=[bn], json=str(tmp_path / "b.json"))
    rows = run_eval(cfg, [path], note=notes.append, bars=False)["results"]
    assert len(rows[0]["accs"]) == 2
    assert any(n.startswith(f"--vmap-seeds: {bn}:") and "one by one" in n for n in notes)


def test_also_lr_adds_a_fixed_lr_row_for_a_set_with_a_learned_lr(toy, tmp_path):
    from dataclasses import replace

    s = real_subset(toy, class_balanced_indices(toy.y_train, 2, 5), "tm", config={"arch": ARCH})
    learned = replace(s, lr=0.05)
    path = str(learned.save(tmp_path / "learned.h5"))
    plain = str(s.save(tmp_path / "plain.h5"))
    doc = run_eval(cfg_for(tmp_path, also_lr=0.01, random_baseline=False), [path, plain], **QUIET)
    rows = {(r["synset"], r["variant"]): r for r in doc["results"]}
    assert (plain, "fixed-lr") not in rows  # no learned lr: nothing to compare
    own, fixed = rows[(path, "set")], rows[(path, "fixed-lr")]
    assert own["lr"] is None and fixed["lr"] == 0.01 and own["dsa_share"] == fixed["dsa_share"] == "image"
    test = (toy.x_test, toy.y_test)
    for row, lr in ((own, 0.05), (fixed, 0.01)):
        want = [100 * evaluate(s.images, s.labels, ARCH, TrainProtocol(epochs=3, lr=lr), 0, test=test, num_classes=4,
                               run=r) for r in range(2)]
        assert row["accs"] == pytest.approx(want, abs=1e-9)
    gain = next(x for x in doc["scores"] if x["score"] == "learned_lr_gain")
    assert gain["mean"] == pytest.approx(paired(own["accs"], fixed["accs"])["mean"])


def test_dsa_share_reaches_the_training_and_the_rows(toy, hard_set, tmp_path):
    path, s = hard_set
    doc = run_eval(cfg_for(tmp_path, dsa_share="batch", random_baseline=False), [path], **QUIET)
    row = doc["results"][0]
    want = [100 * evaluate(s.images, s.labels, ARCH, TrainProtocol(epochs=3, dsa_share="batch"), 0,
                           test=(toy.x_test, toy.y_test), num_classes=4, run=r) for r in range(2)]
    assert row["dsa_share"] == "batch" and row["accs"] == pytest.approx(want, abs=1e-9)
    assert doc["protocol"]["dsa_share"] == "batch"


def test_the_schedule_benchmark_pairs_both_schedules_run_by_run(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("schedule_effect", "benchmarks/schedule_effect.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--out", str(tmp_path), "--dataset", "toy", "--arch", ARCH, "--ipc", "1", "--runs", "2",
                       "--epochs", "3"]) == 0
    accs = json.loads((tmp_path / "schedule_effect.json").read_text())
    ref, own = accs["reference"]["1"], accs["condense"]["1"]
    table = (tmp_path / "schedule_effect.md").read_text()
    diff = sum(a - b for a, b in zip(ref, own)) / 2
    assert f"| 1 | {sum(ref) / 2:.2f}" in table and f"{diff:+.2f} ±" in table
    reports = {s: json.loads((tmp_path / f"{s}.json").read_text())["results"][0]["epochs"] for s in accs}
    assert reports == {"reference": 4, "condense": 3}
