"""Every ```bash and ```python block of README.md and docs/**/*.md runs, at toy size, so an example
cannot rot: a renamed flag, keyword or preset fails here. How a block is shrunk is
tests/doc_examples.yaml; how blocks are found and run is tests/doc_examples.py. A block that cannot
run in CI is marked ``<!-- example: skip REASON -->`` on the line before its fence.

`python -m pytest -q tests/test_doc_examples.py --durations 10` lists the slowest blocks.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from doc_examples import (  # noqa: E402  (the helper module sits beside this file)
    Block, ExampleError, Runner, ShrinkTable, collect, commands, expand_globs, forced_api, isolated, parse_page,
    shrink_condense)

FIXTURE = Path(__file__).parent / "fixtures" / "doc_examples" / "page.md"
BLOCKS, PROBLEMS = collect()
TABLE = ShrinkTable()


@pytest.fixture(scope="module")
def runner(tmp_path_factory, request) -> Runner:
    """One runner for the whole module: each page's blocks share its folder, in order. Afterwards the
    slowest commands are named (``--durations`` names blocks): where to shrink when the time grows."""
    runner = Runner(BLOCKS, TABLE, tmp_path_factory.mktemp("doc-examples"))
    yield runner
    slow = sorted(runner.seconds, reverse=True)[:5]
    plugins = request.config.pluginmanager
    terminal, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if slow and terminal is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # a teardown's output is captured otherwise
            terminal.write_line(f"\ndoc examples: {sum(s for s, _ in runner.seconds):.0f} s in commands; slowest:")
            for seconds, where in slow:
                terminal.write_line(f"  {seconds:6.1f} s  {where[:150]}")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_example(block: Block, runner: Runner):
    if block.skip:
        pytest.skip(block.skip)
    try:
        runner.run(block)
        failure = None
    except ExampleError as e:
        failure = str(e)
    if failure:  # outside the except clause: the report shows the message once, not a chained copy
        pytest.fail(failure, pytrace=False)


def test_doc_example_markers_are_well_formed():
    # a misspelt or misplaced marker would silently run or skip a block: each one is a failure
    assert not PROBLEMS, "\n".join(f"{p.page}:{p.line}: {p.message}" for p in PROBLEMS)


def test_the_docs_have_runnable_examples():
    # the collector reads the pages it should: an empty collection would pass everything above
    pages = {b.page for b in BLOCKS}
    assert "README.md" in pages and any(p.startswith("docs/") for p in pages)


# The harness itself (no condense work: these take a second together) --------------------------


def fixture_page():
    return parse_page(FIXTURE.read_text(), "page.md")


def test_blocks_are_found_with_their_markers():
    blocks, _ = fixture_page()
    assert [(b.line, b.lang, b.skip) for b in blocks] == [
        (6, "bash", "needs a GPU"), (12, "bash", None), (20, "python", None),
        (31, "bash", None),  # a ```sh fence indented in a list item, its indentation removed
        (36, "bash", None), (41, "bash", None)]  # their malformed markers skip nothing
    assert blocks[3].text == "cat note.txt\n"
    assert all("inside a longer fence" not in b.text for b in blocks)  # a ```bash shown inside ````markdown


def test_malformed_and_misplaced_markers_are_problems():
    _, problems = fixture_page()
    got = [(p.line, re.sub(r":.*", "", p.message)) for p in problems]
    assert got == [(35, "malformed example marker '<!-- example"), (40, "malformed example marker '<!-- example"),
                   (45, "the example marker controls no block"),
                   (47, "the example marker is before a ```text block, which is never run")]


def test_an_unclosed_fence_is_a_problem():
    blocks, problems = parse_page("text\n```bash\nls\n", "p.md")
    assert blocks == [] and [(p.line, p.message) for p in problems] == [(2, "a code fence is never closed")]


def test_bash_blocks_split_into_commands():
    blocks, _ = fixture_page()
    env: dict[str, str] = {}
    got = [(c.line, c.argv, c.assign) for c in commands(blocks[1].text, env)]
    assert got == [
        (2, [], {"OUT": "runs/toy"}),
        (3, ["condense", "synth", "random", "--dataset", "toy", "--ipc", "1", "--out", "runs/toy/random.h5"], {}),
        (5, ["ls", "runs/toy/*.h5"], {}),
        (5, ["echo", "a # is not a comment in quotes"], {})]
    assert env == {"OUT": "runs/toy"}  # a page variable, seen by later blocks of the page


def test_prefix_assignments_and_unsupported_shell():
    (cmd,) = commands("CONDENSE_PLUGINS=my_plugin condense datasets\n")
    assert cmd.assign == {"CONDENSE_PLUGINS": "my_plugin"} and cmd.argv == ["condense", "datasets"]
    for line in ("condense datasets | head", "condense datasets > out.txt", "make test || true", "echo $(date)"):
        with pytest.raises(ExampleError, match="not supported"):
            list(commands(line))


def test_globs_expand_in_the_page_folder(tmp_path):
    (tmp_path / "b.h5").touch()
    (tmp_path / "a.h5").touch()
    words = next(commands("condense eval *.h5 '*.pt' none*.h5")).words
    assert expand_globs(words, tmp_path) == ["condense", "eval", "a.h5", "b.h5", "*.pt", "none*.h5"]


def test_the_table_shrinks_commands_and_presets():
    assert shrink_condense(["synth", "--preset", "fashion-mnist/dm-ipc1-cpu"], TABLE) == [
        "synth", "--preset", "fashion-mnist/dm-ipc1-cpu", "--dataset", "toy", "--iters", "2", "--batch-real", "16",
        "--no-progress"]
    assert shrink_condense(["eval", "a.h5", "--runs", "10"], TABLE) == [
        "eval", "a.h5", "--runs", "10", "--runs", "1", "--epochs", "2", "--no-progress"]
    assert shrink_condense(["run", "--runs", "10"], TABLE) == [
        "run", "--runs", "10", "--preset", "toy/quickstart", "--out", "runs/quickstart",
        "--runs", "1", "--epochs", "2", "--no-progress"]
    assert shrink_condense(["labels", "--info", "x.h5"], TABLE) == ["labels", "--info", "x.h5"]
    with pytest.raises(ExampleError, match="no toy twin"):
        shrink_condense(["run", "--preset", "fashion-mnist/cpu-protocol"], TABLE)
    assert TABLE.shrink_text('condense eval --baseline full --dataset fashion-mnist\n'
                             'synthesize("dm", dataset="cifar10", limit_train=10000)') == (
        'condense eval --baseline full --dataset toy\nsynthesize("dm", dataset="toy", limit_train=200)')


def test_every_table_rule_names_options_that_exist():
    from condense.config import preset_section

    for key in TABLE.force:  # forced_flags raises on an option the command lacks
        words = key.split()
        command = " ".join(w for w in words if not w.startswith("-"))
        assert len(TABLE.forced_flags(command, set(words))) >= len(TABLE.force[key]), key
    for preset, twin in TABLE.run_presets.items():
        assert preset_section(preset, "run") and preset_section(twin, "run")


def test_the_python_api_gets_the_forced_keywords():
    from condense.workflows import api
    from trajectories.record import BufferConfig

    with forced_api(TABLE):
        cfg = api._config(BufferConfig, {}, None, {"experts": 5, "epochs": 10, "out": "x"})
    assert (cfg.experts, cfg.epochs, cfg.dataset, cfg.out) == (1, 8, "toy", "x")
    assert api._config(BufferConfig, {}, None, {"experts": 5}).experts == 5  # put back afterwards


def runner_for(tmp_path, *texts: tuple[str, str]) -> tuple[Runner, list[Block]]:
    blocks = [Block("p.md", 10 * (i + 1), lang, text) for i, (lang, text) in enumerate(texts)]
    return Runner(blocks, TABLE, tmp_path), blocks


def test_a_renamed_flag_fails(tmp_path):
    runner, (block,) = runner_for(tmp_path, ("bash", "condense synth dm --no-such-flag 3\n"))
    with pytest.raises(ExampleError, match="p.md:11: condense synth dm --no-such-flag 3 .*\nexited 2: .*--no-such-flag"):
        runner.run(block)


def test_a_renamed_keyword_fails(tmp_path):
    runner, (block,) = runner_for(tmp_path, ("python", "import condense\ncondense.record_experts(no_such_keyword=1)\n"))
    with pytest.raises(ExampleError, match=r"(?s)p.md:10: the python block raised.*no_such_keyword"):
        runner.run(block)


def test_commands_the_runner_does_not_run_fail_with_what_to_do(tmp_path):
    runner, blocks = runner_for(tmp_path, ("bash", "make test\n"), ("bash", "condense buffer ... --epochs 3\n"))
    with pytest.raises(ExampleError, match=r"`make` is not run .* mark the block <!-- example: skip REASON -->"):
        runner.run(blocks[0])
    with pytest.raises(ExampleError, match=r"placeholder \(\.\.\.\)"):
        runner.run(blocks[1])


def test_blocks_of_a_page_share_files_not_state(tmp_path):
    from condense import codecs

    runner, blocks = runner_for(
        tmp_path,
        ("python", "from pathlib import Path\nimport os\nPath('note.txt').write_text('hi')\n"
                   "os.environ['LEAK'] = '1'\n"
                   "from condense.codecs import Codec, register_codec\n"
                   "register_codec(Codec('doc-test', encode=None, decode=None, lossless=True))\n"),
        ("bash", "cat note.txt && N=2\nls note.txt\n"),
        ("python", "raise ValueError('on purpose')\n"),
        ("bash", "cat missing.txt\n"))
    runner.run(blocks[1])  # runs the python block first: its file is there
    assert "doc-test" not in codecs.codec_names() and "LEAK" not in os.environ
    assert runner.pages["p.md"].outcomes == {10: None, 20: None}
    with pytest.raises(ExampleError, match=r"(?s)exited 1.*earlier blocks of this page failed, .*: p.md:30\)"):
        runner.run(blocks[3])


def test_isolation_puts_the_working_directory_back(tmp_path):
    cwd = os.getcwd()
    with isolated(tmp_path, tmp_path / "cache"):
        assert os.getcwd() == str(tmp_path) and os.environ["CONDENSE_CACHE"] == str(tmp_path / "cache")
    assert os.getcwd() == cwd and os.environ.get("CONDENSE_CACHE") != str(tmp_path / "cache")
