"""The package surface: one version, recorded in every run folder."""
import configparser
from pathlib import Path

import condense
from condense.version import __version__, environment

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_lives_in_one_module():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: condense.version.__version__"
    assert condense.__version__ == __version__
    assert __version__.count(".") == 2 and all(part.isdigit() for part in __version__.split("."))


def test_environment_names_the_versions_a_result_came_from():
    import torch

    env = environment()
    assert env["condense"] == __version__ and env["torch"] == torch.__version__
    assert env["threads"] == torch.get_num_threads()
    assert env["git"] is None or len(env["git"]) == 40
