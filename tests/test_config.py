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
