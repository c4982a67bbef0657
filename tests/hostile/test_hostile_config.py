"""Hostile settings, flags and preset files: each is refused in one line before any work starts,
and nothing is written."""
from __future__ import annotations

import dataclasses
import time
import types
import typing
from pathlib import Path

import pytest

from condense.config.declare import declared, hints
from condense.config.presets import MAX_BYTES
from condense.runtime.errors import ConfigError

from .conftest import cli, cli_proc, refused


def _configs() -> dict[str, tuple[type, tuple[str, ...]]]:
    """Every configuration a user reaches, with the command line that builds it."""
    from condense.labels.run import LabelsConfig
    from condense.labels.squeeze import TeacherConfig
    from condense.methods import get_method, method_names
    from condense.workflows.pipeline import RunConfig
    from evals.grid import EvalConfig
    from trajectories.record import BufferConfig

    out = {f"synth {m}": (get_method(m).config, ("synth", m)) for m in method_names()}
    out.update({"buffer": (BufferConfig, ("buffer",)), "teacher": (TeacherConfig, ("teacher",)),
                "labels": (LabelsConfig, ("labels", "in.h5")), "eval": (EvalConfig, ("eval",)),
                "run": (RunConfig, ("run",))})
    return out


# Numeric settings that may take any value, and why. A new numeric setting without bounds fails the
# walk below until it declares them or is listed here with its reason.
UNBOUNDED: dict[str, str] = {}


def _numeric(hint) -> type | None:
    """int or float when the field holds numbers (alone, optional or in a list), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType, list, tuple):
        kinds = {_numeric(a) for a in typing.get_args(hint) if a is not type(None)}
        return next(iter(kinds)) if len(kinds) == 1 else None
    return hint if hint in (int, float) else None


def _numeric_settings():
    for command, (cls, argv) in _configs().items():
        types_ = hints(cls)
        for f in dataclasses.fields(cls):
            kind = _numeric(types_[f.name])
            if kind is not None:
                yield command, argv, cls, f, kind


def test_every_numeric_setting_declares_its_bounds():
    missing = [f"{cls.__name__}.{f.name}" for _, _, cls, f, _ in _numeric_settings()
               if f.name not in UNBOUNDED and all(getattr(declared(f), b) is None for b in ("gt", "ge", "lt", "le"))]
    assert not missing, f"numeric settings without declared bounds: {missing}"
    assert sum(1 for _ in _numeric_settings()) > 100  # the walk found the configurations at all


def _outside(f, kind) -> list[tuple[str, str]]:
    """(value just outside a declared bound, the bound's side) for each bound of ``f``."""
    meta, step = declared(f), (1 if kind is int else 1e-6)
    out = []
    if meta.gt is not None:
        out.append((meta.gt, "low"))
    if meta.ge is not None:
        out.append((meta.ge - step, "low"))
    if meta.lt is not None:
        out.append((meta.lt, "high"))
    if meta.le is not None:
        out.append((meta.le + step, "high"))
    return [(str(int(v)) if kind is int else repr(float(v)), side) for v, side in out]


CASES = [pytest.param(argv, declared(f).flag_of(f.name), value, id=f"{command}:{f.name}:{side}")
         for command, argv, cls, f, kind in _numeric_settings() if command != "run" or f.name != "steps"
         for value, side in _outside(f, kind)]


@pytest.mark.parametrize("argv, flag, value", CASES)
def test_a_value_just_outside_a_bound_is_refused_naming_the_flag(argv, flag, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relative default outputs (runs/...) would land here
    res = cli(capsys, *argv, f"{flag}={value}")  # one word: argparse reads "-1e-06" alone as an option
    line = refused(res, flag, "must be")
    assert line.startswith(f"condense {argv[0]}")
    assert not any(tmp_path.iterdir()), sorted(map(str, tmp_path.rglob("*")))


def _nothing_written(folder: Path, before: set[str]) -> None:
    after = {str(p) for p in folder.rglob("*")}
    assert after == before, f"written: {sorted(after - before)}"


def _state(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")}


# (argv, needles): {tmp} is the test's folder, {set} a valid set file.
FLAG_CASES = [
    # numbers
    (("synth", "dm", "--lr-img", "-1", "--out", "{tmp}/o.h5"), ("--lr-img", "positive")),
    (("synth", "dm", "--lr-img", "nan", "--out", "{tmp}/o.h5"), ("--lr-img", "finite")),
    (("synth", "gm", "--lr-net", "inf", "--out", "{tmp}/o.h5"), ("--lr-net", "finite")),
    (("synth", "tm", "--syn-steps", "100000000", "--out", "{tmp}/o.h5"), ("--syn-steps",)),
    (("synth", "rded", "--factor", "1000", "--out", "{tmp}/o.h5"), ("--factor",)),
    (("synth", "frepo", "--pool-size", "0", "--out", "{tmp}/o.h5"), ("--pool-size",)),
    (("synth", "dam", "--ipc", "100000000", "--out", "{tmp}/o.h5"), ("--ipc",)),
    (("synth", "sre2l", "--jitter", "-4", "--out", "{tmp}/o.h5"), ("--jitter",)),
    (("synth", "random", "--seed", "99999999999999999999999", "--out", "{tmp}/o.h5"), ("--seed", "range")),
    (("synth", "dm", "--ipc", "abc", "--out", "{tmp}/o.h5"), ("--ipc", "invalid int")),
    (("buffer", "--momentum", "-0.5", "--out", "{tmp}/experts"), ("--momentum",)),
    (("buffer", "--momentum", "1", "--out", "{tmp}/experts"), ("--momentum", "[0, 1)")),
    (("teacher", "--weight-decay", "-1", "--out", "{tmp}/t.h5"), ("--weight-decay", ">= 0")),
    (("teacher", "--lr", "0", "--out", "{tmp}/t.h5"), ("--lr",)),
    (("labels", "{set}", "--threads", "-3", "--out", "{tmp}/l.h5"), ("--threads",)),
    (("labels", "{set}", "--view-epochs", "1000000000", "--views", "per-epoch", "--out", "{tmp}/l.h5"),
     ("--view-epochs",)),
    (("eval", "{set}", "--scores", "--full-accuracy", "-50", "--json", "{tmp}/r.json"), ("--full-accuracy",)),
    (("eval", "{set}", "--runs", "100000000", "--json", "{tmp}/r.json"), ("--runs",)),
    (("run", "--runs", "0", "--out", "{tmp}/run"), ("--runs",)),
    (("show", "{set}", "--out", "{tmp}/g.png", "--max-per-class", "0"), ("--max-per-class",)),
    # choices
    (("synt",), ("unknown command", "did you mean synth")),
    (("synth", "dmm"), ("unknown method", "did you mean dm")),
    (("synth",), ("give a method",)),
    (("labels", "{set}", "--views", "statik", "--out", "{tmp}/l.h5"), ("--views", "did you mean static")),
    (("eval", "--baseline", "randm", "--dataset", "toy", "--json", "{tmp}/r.json"), ("--baseline", "random")),
    (("buffer", "--dtype", "float7", "--out", "{tmp}/experts"), ("--dtype",)),
    (("synth", "dm", "--backend", "nosuch", "--out", "{tmp}/o.h5"), ("nosuch",)),
    # options a command does not take, or would ignore
    (("synth", "dm", "--ipcc", "1", "--out", "{tmp}/o.h5"), ("--ipcc", "did you mean --ipc")),
    (("synth", "dm", "--dsa-share", "view", "--out", "{tmp}/o.h5"), ("--dsa-share", "an option of condense synth")),
    (("eval", "{set}", "--dataset", "toy", "--json", "{tmp}/r.json"), ("--dataset", "set file")),
    (("eval", "{set}", "--ipc", "3", "--json", "{tmp}/r.json"), ("--ipc", "--baseline")),
    (("eval", "{set}", "--full-accuracy", "50", "--json", "{tmp}/r.json"), ("--full-accuracy", "--scores")),
    (("eval", "{set}", "--experts", "3", "--json", "{tmp}/r.json"), ("--experts", "buffer")),
    (("eval", "--baseline", "full", "--dataset", "toy", "--ipc", "2", "--json", "{tmp}/r.json"), ("--ipc",)),
    (("teacher", "--info", "{tmp}/t.h5", "--epochs", "3"), ("--epochs", "--info")),
    (("labels", "{set}", "--info", "--out", "{tmp}/l.h5"), ("--out", "--info")),
    (("buffer", "--import-mtt", "{tmp}/a.pt", "--experts", "3", "--out", "{tmp}/experts"), ("--experts", "--import-mtt")),
    (("convert", "{set}", "{tmp}/o.pt", "--dataset", "toy"), ("--dataset", "export")),
    (("convert", "{set}", "{tmp}/o.pt", "{tmp}/p.pt"), ("unexpected argument",)),
    (("show", "{tmp}/store", "--out", "{tmp}/g.png", "--max-per-class", "3"), ("--max-per-class", "store")),
    (("show", "{set}"), ("required", "--out")),
    (("datasets", "--bogus"), ("--bogus",)),
    (("datasets", "extra"), ("unexpected argument", "extra")),
    (("run", "--iters", "3", "--out", "{tmp}/run"), ("--iters",)),
    (("synth", "dm", "--log", "nosuch", "--ipc", "0", "--out", "{tmp}/o.h5"), ("--ipc",)),
]


@pytest.mark.parametrize("argv, needles", FLAG_CASES, ids=lambda v: " ".join(v)[:60] if isinstance(v, tuple) else None)
def test_a_hostile_flag_is_one_line_and_nothing_is_written(argv, needles, capsys, tmp_path, monkeypatch, toy_set):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    before = _state(tmp_path)
    argv = [a.format(tmp=tmp_path, set=toy_set) for a in argv]
    line = refused(cli(capsys, *argv), *needles)
    assert len(line) < 600, line
    _nothing_written(tmp_path, before)


def _preset(tmp_path: Path, text: str | bytes, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _alias_bomb() -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\nsynth:\n  method: dm\n  lr_img: *a9\n"


# (command argv before --preset, preset text, needles)
PRESET_CASES = [
    (("synth",), "synth:\n  method: dm\n  lr_img: [1, 2]\n", ("lr_img", "float")),
    (("synth", "dm"), "synth:\n  ipc: {a: 1}\n", ("ipc", "int")),
    (("synth",), "synth:\n  method: [dm]\n", ("method",)),
    (("synth",), "synth: [1, 2]\n", ("synth", "mapping")),
    (("synth",), "- 1\n- 2\n", ("mapping",)),
    (("buffer",), "buffer:\n  momentum: -1\n", ("--momentum",)),
    (("buffer",), "buffer:\n  epochs: '10'\n", ("epochs", "int")),
    (("teacher",), "teacher:\n  lr: {a: 1}\n", ("lr", "float")),
    (("teacher",), "teacher:\n  epochs: [1]\n", ("epochs", "int")),
    (("eval",), "eval:\n  runs: .nan\n", ("runs", "int")),
    (("eval",), "eval:\n  also_lr: .inf\n", ("--also-lr", "finite")),
    (("run",), "run:\n  steps: [synth]\n  out: {a: 1}\n", ("out", "str")),
    (("synth",), "synth:\n  method: dm\n  ipc: " + "9" * 5000 + "\n", ("cannot be read",)),
    (("synth",), "synth:\n  method: dm\n  " + "k" * 1000 + ": 1\n", ("unknown option",)),
    (("synth",), "synth:\n  method: dm\n  lr_img: ab\n  out: o.h5\n  init: " + "x" * 5000 + "\n", ("lr_img",)),
    (("synth",), _alias_bomb(), ("aliases",)),
    (("synth",), "synth:\n  method: dm\n  lr_img: " + "[" * 5000 + "]" * 5000 + "\n", ("nested deeper",)),
    (("synth",), "synth: !!python/object/apply:os.system ['touch {tmp}/pwned']\n", ("not valid YAML",)),
    (("synth",), "synth: !!python/name:os.system\n", ("not valid YAML",)),
    (("synth",), b"synth:\n  method: \xff\xfe\n", ("UTF-8",)),
    (("synth",), "synth:\n  method: dm\n  out: [unclosed\n", ("not valid YAML",)),
    (("synth",), "synth: &a\n  method: dm\n  x: *a\n", ("unknown option 'x'",)),
]


@pytest.mark.parametrize("argv, text, needles", PRESET_CASES,
                         ids=lambda v: (v if isinstance(v, str) else repr(v))[:40].replace("\n", " ")
                         if not isinstance(v, tuple) else " ".join(v))
def test_a_hostile_preset_is_one_short_line_and_nothing_is_written(argv, text, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if isinstance(text, str):
        text = text.replace("{tmp}", str(tmp_path))
    path = _preset(tmp_path, text)
    before = _state(tmp_path)
    line = refused(cli(capsys, *argv, "--preset", path, "--out" if argv[0] != "eval" else "--json", tmp_path / "o"),
                   *needles)
    # a user's value is quoted at most 80 characters long, so a hostile one cannot flood the line
    assert len(line) < 500, line
    _nothing_written(tmp_path, before)


def test_an_alias_bomb_is_refused_quickly_in_a_child_process(tmp_path):
    path = _preset(tmp_path, _alias_bomb())
    start = time.monotonic()
    res = cli_proc("synth", "--preset", path, "--out", tmp_path / "o.h5", timeout=60)
    refused(res, "aliases")
    assert time.monotonic() - start < 30
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.run").exists()


def test_a_preset_over_the_size_limit_is_refused_before_it_is_parsed(capsys, tmp_path):
    # valid YAML all the way: only its size is wrong, so only the size check can refuse it
    path = _preset(tmp_path, "synth:\n  method: dm\n" + "# padding\n" * (MAX_BYTES // 10 + 1))
    refused(cli(capsys, "synth", "--preset", path, "--out", tmp_path / "o.h5"), "larger than")
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.run").exists()


def test_the_python_tag_ran_nothing(capsys, tmp_path):
    path = _preset(tmp_path, f"synth: !!python/object/apply:os.system ['touch {tmp_path}/pwned']\n")
    refused(cli(capsys, "synth", "--preset", path))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("fields, needle", [
    ({"ipc": [1]}, "ipc"), ({"lr_img": "x"}, "lr_img"), ({"out": [1]}, "out"), ({"lr_img": float("inf")}, "--lr-img"),
    ({"iters": 2**70}, "--iters"), ({"ipc": {"a": 1}}, "ipc"), ({"dsa_strategy": ["color"] * 10_000}, "dsa_strategy"),
])
def test_python_api_keywords_of_the_wrong_type_are_config_errors(fields, needle, tmp_path, monkeypatch):
    from condense import synthesize

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        synthesize("dm", **fields)
    assert needle in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 300
    assert not any(tmp_path.iterdir())
