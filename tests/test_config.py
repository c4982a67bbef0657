"""Presets and configuration layering."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from condense.config import load_preset, make_config, preset_names, preset_section
from condense.runtime.errors import ConfigError
from condense.labels.run import LabelsConfig
from condense.labels.squeeze import TeacherConfig
from condense.methods import get_method
from evals.grid import EvalConfig
from condense.workflows.pipeline import RunConfig, step_config, step_kind
from trajectories.record import BufferConfig
from evals.stats import summarize

# Which dataclass validates each preset section (by kind: the name up to the first '-'); a new command
# adds its row. synth: the config of its method.
SECTIONS = {"run": RunConfig, "buffer": BufferConfig, "teacher": TeacherConfig, "synth": None, "labels": LabelsConfig,
            "eval": EvalConfig}


@dataclass
class Cfg:
    name: str = "a"
    steps: int = 3
    lr: float = 0.1
    flag: bool = False
    sizes: list[int] = field(default_factory=lambda: [1])
    maybe: float | None = None


def test_layers_later_wins_and_none_means_unset():
    cfg = make_config(Cfg, {"steps": 5, "lr": 1}, {"steps": None, "name": "b"})
    assert (cfg.name, cfg.steps, cfg.lr) == ("b", 5, 1.0)
    assert isinstance(cfg.lr, float)
    assert make_config(Cfg, {"maybe": 2}).maybe == 2.0


def test_unknown_key_and_wrong_type_are_refused():
    with pytest.raises(ConfigError, match="unknown option 'stpes'"):
        make_config(Cfg, {"stpes": 5})
    with pytest.raises(ConfigError, match="'steps' must be int"):
        make_config(Cfg, {"steps": "many"})
    with pytest.raises(ConfigError, match="'flag' must be bool"):
        make_config(Cfg, {"flag": "yes"})
    with pytest.raises(ConfigError, match="'sizes' must be int"):
        make_config(Cfg, {"sizes": [1, 2.5]})


def test_dashes_in_keys_are_accepted():
    assert make_config(EvalConfig, {"data-root": "/x"}).data_root == "/x"


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_loads_and_validates(name):
    data = load_preset(name)
    assert data.get("description") and data.get("source"), "presets say what they are and where values come from"
    sections = [k for k in data if k not in ("description", "source")]
    assert sections, "a preset configures at least one command"
    for section in sections:
        assert step_kind(section) in SECTIONS, f"no config class registered for section {section!r}"
        values = dict(preset_section(name, section))
        if section == "run":
            cfg = make_config(RunConfig, values, where=name)
            cfg.validate()
            assert all(step in data for step in cfg.steps), "every step of a pipeline has its section"
            continue
        if step_kind(section) == "synth" and section != "synth":
            cfg = step_config("synth", values, name)[1]
            if getattr(cfg, "trajectories", None) == "":  # a pipeline's tm reads its buffer step's store
                cfg.trajectories = "<the buffer step's store>"
            if hasattr(cfg, "teacher") and cfg.teacher is None:  # sre2l, rded: the pipeline's teacher step
                cfg.teacher = "<the teacher step's file>"
            cfg.validate()
            continue
        if step_kind(section) == "labels":  # a pipeline's labels step names a set step run before it
            steps = data["run"]["steps"]
            assert step_kind(values["set"]) in ("synth", "labels") and steps.index(values["set"]) < steps.index(section)
            cfg = step_config("labels", values, name)[1]
            cfg.synset, cfg.out = "<the set>", cfg.out or "<out>"
            cfg.validate()
            continue
        if step_kind(section) == "eval" and "sets" in values:  # a pipeline's eval names set steps run before it
            steps = data["run"]["steps"]
            assert all(step_kind(s) in ("synth", "labels") and steps.index(s) < steps.index(section)
                       for s in values.pop("sets"))
        cls = SECTIONS[step_kind(section)] or get_method(values.pop("method")).config
        make_config(cls, values, where=name).validate()


def test_unknown_preset_and_missing_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope/x'"):
        load_preset("nope/x")
    with pytest.raises(ConfigError, match="no 'synth' section"):
        preset_section("fashion-mnist/smoke", "synth")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_preset(str(bad))


def test_summarize_against_hand_computation():
    s = summarize([70.0, 72.0, 74.0])
    assert s["mean"] == pytest.approx(72.0)
    assert s["std"] == pytest.approx((8 / 3) ** 0.5)
    # t(0.975, 2) = 4.302652729911275; sample std = 2
    assert s["ci95"] == pytest.approx(4.302652729911275 * 2 / 3 ** 0.5)


PLUGIN = '''
from dataclasses import asdict

from condense.config import configclass, setting
from condense.config.parts import Data, Run
from condense.methods import MethodEntry, register_method
from condense.methods.baselines import run_baseline, BaselineConfig


@configclass(Data, Run, part="mine", drop=("val_size", "zca", "trajectories", "teacher"),
             defaults={"out": "runs/mine.h5"})
class MineConfig:
    strength: float = setting(0.5, "how hard the images are pushed", gt=0, le=1)


def run_mine(cfg, device, **kw):
    base = BaselineConfig(**{k: v for k, v in asdict(cfg).items() if k != "strength"})
    return run_baseline(base, device, selection="random", **kw)


register_method(MethodEntry("mine", MineConfig, run_mine, "a plugin's method"))
'''


def test_a_plugin_method_gets_its_subcommand_flags_and_checks_from_its_config(tmp_path, monkeypatch, capsys):
    import sys

    from condense.cli.main import main

    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    monkeypatch.delitem(sys.modules, "my_plugin", raising=False)  # test_cli imports a plugin of that name too
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CONDENSE_PLUGINS", "my_plugin")
    try:
        with pytest.raises(SystemExit):
            main(["synth", "mine", "--help"])
        out = capsys.readouterr().out
        flat = " ".join(out.split())  # help text wraps where it likes
        assert "mine options:" in out and "--strength X" in out and "(positive, at most 1; default 0.5)" in flat
        assert "--iters" not in out  # not composed with the iterations part: no option without an effect
        assert main(["synth", "mine", "--strength", "2"]) == 2
        assert capsys.readouterr().err.strip() == "condense synth: error: --strength must be positive, at most 1, got 2"
        out_file = tmp_path / "m.h5"
        assert main(["synth", "mine", "--dataset", "toy", "--strength", "0.2", "--out", str(out_file),
                     "--device", "cpu", "--no-progress"]) == 0
        assert out_file.exists()
    finally:
        from condense.methods import _METHODS

        _METHODS.pop("mine", None)
        sys.modules.pop("my_plugin", None)


def test_a_mistyped_preset_key_names_the_nearest_valid_ones(tmp_path):
    from condense.methods.dm import DMConfig

    with pytest.raises(ConfigError) as e:
        make_config(DMConfig, {"lr_imgs": 1.0}, where="preset 'x.yaml'")
    assert str(e.value) == "unknown option 'lr_imgs' in preset 'x.yaml' for dm; did you mean lr_img?"
    with pytest.raises(ConfigError, match=r"--batch-real must be positive, at most 100000, got 0"):
        make_config(DMConfig, {"batch_real": 0})


def test_no_setting_is_declared_by_two_configs():
    """Each field is declared once: in a shared part, or as the own field of exactly one config."""
    import dataclasses

    from condense.config import declared
    from condense.config.parts import ALL
    from condense.methods import method_names

    configs = {get_method(m).config for m in method_names()} | {c for c in SECTIONS.values() if c}
    own: dict[str, list[str]] = {}
    shared = {f.name for p in ALL for f in dataclasses.fields(p)}
    for cls in configs:
        part = getattr(cls, "__config_part__", None)
        assert part, f"{cls.__name__} is not composed with configclass"
        for f in dataclasses.fields(cls):
            assert declared(f).help, f"{cls.__name__}.{f.name} has no help"
            if declared(f).part == part and f.name not in getattr(cls.__mro__[1], "__dataclass_fields__", {}):
                own.setdefault(f.name, []).append(cls.__name__)
    twice = {k: v for k, v in own.items() if len(v) > 1 or k in shared}
    assert not twice, twice


def test_the_options_page_is_generated_from_the_declarations():
    """docs/OPTIONS.md is `python -m condense.workflows.options_page`'s output: it cannot drift from the flags."""
    from pathlib import Path

    from condense.workflows.options_page import options_page

    page = (Path(__file__).parents[1] / "docs" / "OPTIONS.md").read_text()
    assert page == options_page(), "regenerate: python -m condense.workflows.options_page --write"
    assert "| `--lr-img` | synthesis | `100.0` | positive | learning rate of the images |" in page


def test_every_generated_block_of_the_docs_is_up_to_date():
    """The option tables and preset lists between `<!-- options: X -->` / `<!-- presets: X -->` markers in docs/
    are regenerated from the declarations and the shipped presets; an edited flag or preset shows up here."""
    from condense.workflows.options_page import DOCS, REGENERATE, generated_pages, stale_pages

    marked = [p for p in generated_pages() if p.name != "OPTIONS.md"]
    assert len(marked) >= 6, f"the method pages should carry generated option tables, found {marked}"
    stale = [str(p.relative_to(DOCS.parent)) for p in stale_pages()]
    assert not stale, f"out of date: {', '.join(stale)}; regenerate: {REGENERATE}"


def test_a_marked_block_is_regenerated_in_place():
    """Only the text between the markers changes; an unknown name is a clear error, not an empty table."""
    from condense.workflows.options_page import regenerate

    page = "# Title\n\nbefore\n<!-- options: gm -->\nold table\n<!-- /options -->\nafter\n"
    new = regenerate(page)
    assert new.startswith("# Title\n\nbefore\n<!-- options: gm -->\n| option | part |")
    assert new.endswith("\n<!-- /options -->\nafter\n") and "old table" not in new
    assert "`--lr-net`" in new and regenerate(new) == new
    assert "`fashion-mnist/gm-ipc1-cpu`" in regenerate("<!-- presets: gm -->\n<!-- /presets -->")
    with pytest.raises(ValueError, match="not a command"):
        regenerate("<!-- options: nosuch -->\n<!-- /options -->")
