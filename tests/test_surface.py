"""The package surface: one version, recorded in every run folder; optional dependencies as extras."""
import configparser
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import condense
from condense.runtime.extras import EXTRAS
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


def run_python(*code: str) -> subprocess.CompletedProcess:
    """The ``code`` blocks, one after the other, in a fresh interpreter at the repository root (so
    this checkout's condense is imported)."""
    return subprocess.run([sys.executable, "-c", "\n".join(textwrap.dedent(c) for c in code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_extras_are_those_of_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = {name: {re.split(r"[<>=!~\[ ]", line)[0] for line in value.split("\n") if line.strip()}
                for name, value in cfg["options.extras_require"].items()}
    for extra, packages in EXTRAS.items():
        assert declared[extra] == set(packages), extra
    required = {re.split(r"[<>=!~\[ ]", line)[0] for line in cfg["options"]["install_requires"].split("\n") if line}
    assert not required & {"jax", "flax", "optax", "ray"}  # extras, not dependencies


def test_without_jax_the_torch_side_works_and_a_jax_feature_says_what_to_install():
    out = run_python("""
        import sys
        sys.modules["jax"] = None  # as if jax were not installed: 'import jax' raises ImportError
        import condense
        from condense.runtime.errors import ConfigError
        from condense.methods import get_method, runner
        assert runner(get_method("dm")).__wrapped__ is get_method("dm").run  # the torch backend needs no jax
        for attempt in (lambda: runner(get_method("tm"), "jax"), lambda: __import__("condense.jax.nets")):
            try:
                attempt()
            except ConfigError as e:
                print(e)
        """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "--backend jax needs jax, flax, optax (jax is not installed): pip install 'condense[jax]'",
        "the JAX backend (condense.jax) needs jax, flax, optax (jax is not installed): pip install 'condense[jax]'"]


MALLOPT_SPY = """
    import ctypes, sys

    calls = []

    class Spy(ctypes.CDLL):  # records every libc function looked up, mallopt included
        def __getitem__(self, name):
            calls.append(name)
            return super().__getitem__(name)

    ctypes.CDLL = Spy
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")
def test_import_changes_nothing_in_the_process_and_the_command_tunes_the_allocator():
    out = run_python(MALLOPT_SPY, """
        import condense
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("jax", "jaxlib", "flax", "optax", "ray", "matplotlib", "tensorboard", "wandb"))
        above_core = sorted(m for m in sys.modules if m.startswith(
            ("trajectories", "evals", "condense.methods", "condense.labels", "condense.jax", "condense.workflows",
             "condense.cli")))
        print("import:", "mallopt" in calls, heavy, above_core)
        from condense.cli.main import main
        main([])  # prints the usage; the tuning comes first
        print("command:", "mallopt" in calls)
        """)
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stdout.splitlines() if line.startswith(("import:", "command:"))] == [
        "import: False [] []", "command: True"]
