"""Run the code blocks of README.md and docs/**/*.md at toy size, so that an example cannot rot.

tests/test_doc_examples.py makes one test per ```bash/```sh/```shell/```python block; this
module holds what those tests need:

- :func:`parse_page` finds a page's blocks and the ``<!-- example: skip REASON -->`` markers
  (on the line right before a fence); a malformed or misplaced marker is a :class:`Problem`,
  which fails the marker test, so a typo never silently skips or runs a block.
- :class:`ShrinkTable` reads tests/doc_examples.yaml: regex substitutions applied to every
  block's text, keywords forced onto a command (appended as flags to a ``condense`` command,
  where argparse's last occurrence wins; forced onto the Python API's keywords), and the
  toy twins of ``condense run``'s pipeline presets.
- :func:`commands` splits a bash block into commands (``\\`` continuations, ``# comments``,
  quotes, ``$VAR``, ``VAR=value`` lines and prefixes, ``&&`` and ``;``); any other shell
  syntax fails the block with a line saying so.
- :class:`Runner` runs the blocks of each page in order in one folder of their own: a
  ``condense`` command in-process through ``condense.cli.main.main`` (importing torch
  again per command would cost seconds each), a few file tools (:data:`FILE_TOOLS`) and
  scripts an earlier block wrote as subprocesses; any other command fails, naming the
  skip marker to add. Blocks of a page share files only: every block starts from the same
  process state (registries, environment, ``sys.path``, working directory, threads).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import io
import os
import re
import subprocess
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
TABLE = Path(__file__).with_name("doc_examples.yaml")

RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
# Anything that looks meant as a marker is checked strictly: a typo must fail, never pass as a comment.
MARKER_LIKE = re.compile(r"^\s*<!--\s*examples?\b", re.IGNORECASE)
MARKER = re.compile(r"^\s*<!-- example: skip (?P<reason>\S.*?) -->\s*$")
MARKER_HELP = "write it as <!-- example: skip REASON --> on the line right before a ```bash or ```python fence"

# Commands run as subprocesses in the page's folder: they only read or make files there.
FILE_TOOLS = frozenset({"ls", "cat", "head", "tail", "wc", "echo", "mkdir", "cp", "mv", "rm", "touch", "du",
                        "diff", "cmp", "sha256sum", "h5ls", "h5dump", "test", "true"})
# Operators a doc example may use between commands; the rest of the shell is not emulated.
SEPARATORS = ("&&", ";")
OPERATORS = ("&&", "||", ">>", "2>", "&>", "|", ";", "&", ">", "<", "(", ")")
ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$", re.S)
VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
COMMAND_TIMEOUT = 120  # seconds for a file tool or a script: they are meant to be instant


class ExampleError(Exception):
    """A doc example that fails: the message says which command and why, in a few lines."""


# ---------------------------------------------------------------------------------------------
# Pages and blocks


@dataclass(frozen=True)
class Block:
    """One runnable code block: ``page`` relative to the repository, ``line`` of its opening fence."""
    page: str
    line: int
    lang: str  # "bash" or "python"
    text: str
    skip: str | None = None  # the marker's reason

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass(frozen=True)
class Problem:
    """A malformed or misplaced marker, or an unclosed fence: the marker test fails with ``message``."""
    page: str
    line: int
    message: str


def parse_page(text: str, page: str) -> tuple[list[Block], list[Problem]]:
    """The runnable blocks of one Markdown page, and the problems of its markers.

    Fences follow CommonMark: ``` or ~~~ (3 or more), closed by the same character at least as
    long, indented as far as the opening fence (that indentation is removed from the block).
    Blocks whose info string is not bash, sh, shell or python are not run.
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[Problem] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if MARKER_LIKE.match(lines[i]):
            problems.extend(_check_marker(lines, i, page))
        if not m or "`" in m["info"] and m["fence"][0] == "`":
            i += 1
            continue
        lang = (m["info"].split() or [""])[0].lower()
        close = re.compile(rf"^[ \t]*{re.escape(m['fence'][0])}{{{len(m['fence'])},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), None)
        if end is None:
            problems.append(Problem(page, i + 1, "a code fence is never closed"))
            break
        if lang in RUN_LANGS:
            indent = len(m["indent"])
            body = "\n".join(_dedent(line, indent) for line in lines[i + 1:end])
            marker = MARKER.match(lines[i - 1]) if i > 0 else None
            blocks.append(Block(page, i + 1, RUN_LANGS[lang], body + "\n", marker["reason"] if marker else None))
        i = end + 1
    return blocks, problems


def _dedent(line: str, indent: int) -> str:
    """``line`` without up to ``indent`` leading spaces (a fence indented in a list item)."""
    strip = len(line) - len(line.lstrip(" \t"))
    return line[min(strip, indent):]


def _check_marker(lines: list[str], i: int, page: str) -> list[Problem]:
    """Problems of the marker-like comment on line ``i``: its syntax, and that it controls a run block."""
    if not MARKER.match(lines[i]):
        return [Problem(page, i + 1, f"malformed example marker {lines[i].strip()!r}: {MARKER_HELP} "
                                     "(the only directive is skip, and it needs a reason)")]
    nxt = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
    if not nxt:
        return [Problem(page, i + 1, f"the example marker controls no block: {MARKER_HELP}")]
    lang = (nxt["info"].split() or [""])[0].lower()
    if lang not in RUN_LANGS:
        return [Problem(page, i + 1, f"the example marker is before a ```{lang} block, which is never run: "
                                     "remove it")]
    return []


def doc_pages(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/ (recursively), in a stable order."""
    pages = [root / "README.md"] if (root / "README.md").is_file() else []
    return pages + sorted((root / "docs").rglob("*.md"))


def collect(root: Path = ROOT) -> tuple[list[Block], list[Problem]]:
    """The blocks and marker problems of every doc page, pages in :func:`doc_pages` order."""
    blocks, problems = [], []
    for path in doc_pages(root):
        b, p = parse_page(path.read_text(encoding="utf-8"), path.relative_to(root).as_posix())
        blocks += b
        problems += p
    return blocks, problems


# ---------------------------------------------------------------------------------------------
# Bash blocks as commands


@dataclass(frozen=True)
class Word:
    """A shell word after quote removal and ``$VAR`` expansion; ``glob``: it has an unquoted * ? or [."""
    text: str
    glob: bool = False


@dataclass(frozen=True)
class Command:
    """One simple command: its words, and the ``VAR=value`` assignments before them (alone on their
    line, they set the page's variables; before a command, that command's environment)."""
    line: int
    words: tuple[Word, ...]
    assign: dict[str, str] = field(default_factory=dict)
    after_and: bool = False  # it follows `&&`: it runs only if the command before it succeeded

    @property
    def argv(self) -> list[str]:
        return [w.text for w in self.words]

    def __str__(self) -> str:
        return " ".join([*(f"{k}={v}" for k, v in self.assign.items()), *self.argv])


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based first line, line) with backslash-newline continuations joined; blank lines dropped."""
    start, parts = None, []
    for n, line in enumerate(text.splitlines(), 1):
        start = n if start is None else start
        stripped = line.rstrip()
        if stripped.endswith("\\") and (len(stripped) - len(stripped.rstrip("\\"))) % 2:
            parts.append(stripped[:-1])
            continue
        parts.append(line)
        joined = " ".join(parts).strip()
        if joined:
            yield start, joined
        start, parts = None, []
    joined = " ".join(parts).strip()
    if joined:
        yield start, joined


def tokenize(line: str, env: dict[str, str]) -> list[Word | str]:
    """The words (:class:`Word`) and operators (``str``) of one logical line, as bash reads them:
    quotes, backslash escapes, ``$VAR``/``${VAR}`` from ``env``, a ``#`` comment from a word's start."""
    out: list[Word | str] = []
    cur: list[str] | None = None
    glob_ = False
    i, n = 0, len(line)

    def flush():
        nonlocal cur, glob_
        if cur is not None:
            out.append(Word("".join(cur), glob_))
        cur, glob_ = None, False

    while i < n:
        c = line[i]
        if c in " \t":
            flush()
            i += 1
        elif c == "#" and cur is None:
            break
        elif op := next((o for o in OPERATORS if line.startswith(o, i) and (o != "2>" or cur is None)), None):
            flush()
            out.append(op)
            i += len(op)
        elif c == "'":
            j = line.find("'", i + 1)
            if j < 0:
                raise ExampleError(f"unclosed single quote in: {line}")
            cur = (cur or []) + [line[i + 1:j]]
            i = j + 1
        elif c == '"':
            j, chunk = i + 1, []
            while j < n and line[j] != '"':
                if line[j] == "\\" and j + 1 < n and line[j + 1] in '"\\$`':
                    chunk.append(line[j + 1])
                    j += 2
                elif line[j] in "$`":
                    text, j = _expansion(line, j, env)
                    chunk.append(text)
                else:
                    chunk.append(line[j])
                    j += 1
            if j >= n:
                raise ExampleError(f"unclosed double quote in: {line}")
            cur = (cur or []) + ["".join(chunk)]
            i = j + 1
        elif c == "\\":
            cur = (cur or []) + [line[i + 1:i + 2]]
            i += 2
        elif c in "$`":
            text, i = _expansion(line, i, env)
            cur = (cur or []) + [text]
        else:
            glob_ = glob_ or c in "*?["
            cur = (cur or []) + [c]
            i += 1
    flush()
    return out


def _expansion(line: str, i: int, env: dict[str, str]) -> tuple[str, int]:
    """The value of the ``$VAR`` at ``line[i]`` and the index after it; command substitution is refused."""
    m = VARIABLE.match(line, i)
    if m is None:
        if line.startswith("$(", i) or line[i] == "`":
            raise ExampleError(f"command substitution is not supported in doc examples: {line}")
        return "$", i + 1
    name = m["braced"] or m["plain"]
    return env.get(name, os.environ.get(name, "")), m.end()


def commands(text: str, env: dict[str, str] | None = None) -> Iterator[Command]:
    """The commands of a bash block, in order. A ``VAR=value`` line (or ``export VAR=value``) sets
    ``env`` (the page's variables) before the next line is read, as in a shell; ``&&`` and ``;``
    separate commands; any other operator (pipes, redirections, ``||``, ``&``) is an ExampleError
    (raised when the generator reaches that line)."""
    env = {} if env is None else env
    for line_no, line in logical_lines(text):
        tokens = tokenize(line, env)
        groups: list[tuple[bool, list[Word]]] = [(False, [])]
        for t in tokens:
            if isinstance(t, Word):
                groups[-1][1].append(t)
            elif t in SEPARATORS:
                groups.append((t == "&&", []))
            else:
                raise ExampleError(f"line {line_no}: the shell operator {t!r} is not supported in doc examples "
                                   f"(write one command per line, or mark the block skip): {line}")
        for after_and, words in groups:
            if words and words[0].text == "export":
                words = words[1:]
            assign = {}
            while words and (m := ASSIGNMENT.match(words[0].text)):
                assign[m["name"]] = m["value"]
                words = words[1:]
            if not words:
                env.update(assign)
            if words or assign:
                yield Command(line_no, tuple(words), assign, after_and)


def expand_globs(words: tuple[Word, ...], cwd: Path) -> list[str]:
    """The argv, each unquoted glob replaced by its sorted matches under ``cwd`` (kept as typed when
    nothing matches, as bash does without nullglob)."""
    argv = []
    for w in words:
        matches = sorted(glob.glob(w.text, root_dir=cwd)) if w.glob else []
        argv += matches or [w.text]
    return argv


# ---------------------------------------------------------------------------------------------
# The shrink table


class ShrinkTable:
    """tests/doc_examples.yaml: how a block is made toy-sized (its comments say why, rule by rule)."""

    def __init__(self, path: Path = TABLE):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        self.substitutions = [(re.compile(s["pattern"]), s["replace"]) for s in data["substitutions"]]
        self.force: dict[str, dict[str, Any]] = {k: dict(v or {}) for k, v in data["force"].items()}
        self.run_presets: dict[str, str] = dict(data["run_presets"])
        self.keep: dict[str, set[str]] = {k: set(v) for k, v in (data.get("keep") or {}).items()}
        self.as_typed: list[str] = list(data["as_typed"])

    def shrink_text(self, text: str) -> str:
        """``text`` after every substitution, in the table's order."""
        for pattern, replace in self.substitutions:
            text = pattern.sub(replace, text)
        return text

    def forced(self, command: str, given: set[str], values: dict[str, Any] | None = None) -> dict[str, Any]:
        """The keywords forced onto ``command`` (``synth tm``, ``eval``, ...) when the flags ``given``
        were typed: its own entry, then each entry ``COMMAND --flag ...`` whose flags are all given (a
        null there drops what an earlier entry forced); none whose typed value (``values``, by
        keyword) the table keeps."""
        out: dict[str, Any] = {}
        for key, forced in self.force.items():
            words = key.split()
            name = " ".join(w for w in words if not w.startswith("-"))
            if name == command and {w for w in words if w.startswith("-")} <= given:
                out.update(forced)
        return {k: v for k, v in out.items()
                if v is not None and str((values or {}).get(k)) not in self.keep.get(k, ())}

    def forced_flags(self, command: str, given: set[str] = frozenset(), values: dict[str, Any] | None = None
                     ) -> list[str]:
        """:meth:`forced` as flags, spelled as the command's parser spells them (``archs`` is
        ``--arch``; booleans ``--x`` or ``--no-x``)."""
        forced = self.forced(command, set(given), values)
        if not forced:
            return []
        parser = _parsers().get(f"condense {command}")
        if parser is None:
            raise ExampleError(f"tests/doc_examples.yaml forces keywords on {command!r}, which is not a condense "
                               "command")
        actions = {a.dest: a for a in parser._actions if a.option_strings}
        flags: list[str] = []
        for name, value in forced.items():
            action = actions.get(name)
            if action is None:
                raise ExampleError(f"tests/doc_examples.yaml: condense {command} has no option for {name!r}")
            long = [o for o in action.option_strings if o.startswith("--")]
            if isinstance(value, bool):
                flags.append(long[0] if value else next(o for o in long if o.startswith("--no-")))
            elif isinstance(value, list) and isinstance(action, argparse._AppendAction):
                flags += [x for v in value for x in (long[0], str(v))]
            elif isinstance(value, list):
                flags += [long[0], ",".join(map(str, value))]
            else:
                flags += [long[0], str(value)]
        return flags


@functools.lru_cache(maxsize=1)
def _parsers() -> dict[str, Any]:
    """Every condense (sub)command's parser by its prog, e.g. ``condense synth tm``."""
    from condense.cli.main import _commands, build_parser

    return _commands(build_parser())


def shrink_condense(argv: list[str], table: ShrinkTable) -> list[str]:
    """The argv of a ``condense`` command made toy-sized: the forced keywords of its (sub)command
    appended as flags (the last occurrence of a flag wins, so they override the command's and its
    preset's values), ``condense run``'s preset replaced by its toy twin, ``--no-progress`` added.
    A command that only prints (``--help``, ``--info``, ``--version``) is left as it is."""
    from condense.cli import synth
    from condense.cli.main import take_log
    from condense.runtime.errors import CondenseError

    argv = list(argv)
    if set(table.as_typed) & set(argv):
        return argv
    plain, _ = take_log([a for a in argv if a not in ("--debug", "--no-progress")])
    command = next((a for a in plain if not a.startswith("-")), None)
    key = command
    if command == "synth":
        try:
            method = synth.with_method(plain[plain.index("synth"):])[1]
        except (CondenseError, IndexError):
            return [*argv, "--no-progress"]  # the command itself reports what is wrong, unshrunk
        key = f"synth {method}"
    if command == "run":
        argv = _run_twin(argv, table)
    given = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    values = {a[2:].replace("-", "_"): b for a, b in zip(argv, argv[1:]) if a.startswith("--")}
    return [*argv, *table.forced_flags(key or "", given, values), "--no-progress"]


def _run_twin(argv: list[str], table: ShrinkTable) -> list[str]:
    """``condense run``'s argv on the toy twin of its pipeline preset, writing where the original would."""
    from condense.cli.run import DEFAULT_PRESET
    from condense.config import preset_section

    given = None
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            given = argv[i + 1]
        elif a.startswith("--preset="):
            given = a.split("=", 1)[1]
    preset = given or DEFAULT_PRESET
    twin = table.run_presets.get(preset)
    if twin is None:
        raise ExampleError(f"`condense run --preset {preset}` has no toy twin in tests/doc_examples.yaml "
                           "(run_presets): add one, or mark the block <!-- example: skip REASON -->")
    out = [] if any(a == "--out" or a.startswith("--out=") for a in argv) else \
        ["--out", str(preset_section(preset, "run").get("out", "runs"))]
    return [*argv, "--preset", twin, *out]


# ---------------------------------------------------------------------------------------------
# Running blocks


@dataclass
class Page:
    """One page's shared state: its folder, its shell variables, and the outcome of each block run."""
    folder: Path
    env: dict[str, str] = field(default_factory=dict)
    outcomes: dict[int, str | None] = field(default_factory=dict)  # line -> None (passed) or the failure


class Runner:
    """Runs blocks, each page in its own folder under ``base``, earlier blocks of a page first."""

    def __init__(self, blocks: list[Block], table: ShrinkTable, base: Path):
        self.blocks, self.table, self.base = blocks, table, base
        self.pages: dict[str, Page] = {}
        self.seconds: list[tuple[float, str]] = []  # (seconds, where: command) of every command run
        self.cache = base / "cache"  # $CONDENSE_CACHE: nothing derived lands in the user's cache

    def page(self, name: str) -> Page:
        if name not in self.pages:
            folder = self.base / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
            folder.mkdir(parents=True)
            self.pages[name] = Page(folder)
        return self.pages[name]

    def run(self, block: Block) -> None:
        """Run ``block`` (after any earlier runnable block of its page not run yet, whose failures are
        then noted, not raised); raise ExampleError if it fails."""
        page = self.page(block.page)
        for earlier in self.blocks:
            if earlier.page == block.page and earlier.line < block.line and not earlier.skip \
                    and earlier.line not in page.outcomes:
                self._attempt(earlier, page)
        failure = self._attempt(block, page)
        if failure is not None:
            failed = [f"{block.page}:{line}" for line, f in page.outcomes.items() if f and line < block.line]
            skipped = [b.id for b in self.blocks if b.page == block.page and b.line < block.line and b.skip]
            for what, ids in (("failed", failed), ("are skipped", skipped)):
                if ids:
                    failure += f"\n(earlier blocks of this page {what}, so files they make may be missing: " \
                               f"{', '.join(ids)})"
            raise ExampleError(failure)

    def _attempt(self, block: Block, page: Page) -> str | None:
        try:
            with isolated(page.folder, self.cache):
                if block.lang == "python":
                    self.run_python(block, page)
                else:
                    self.run_bash(block, page)
            failure = None
        except ExampleError as e:
            failure = str(e)
        page.outcomes[block.line] = failure
        return failure

    def run_bash(self, block: Block, page: Page) -> None:
        """Run every command, as bash without ``set -e`` does, so that one test run names every broken
        command of the block (a command after a failed ``&&`` is not run); raise if any failed."""
        failures: list[str] = []
        failed = False
        for cmd in commands(self.table.shrink_text(block.text), page.env):
            if not cmd.words or cmd.after_and and failed:
                continue
            start = time.perf_counter()
            try:
                self.run_command(cmd, page, block)
                failed = False
            except ExampleError as e:
                failures.append(str(e))
                failed = True
            self.seconds.append((time.perf_counter() - start, f"{block.page}:{block.line + cmd.line}: {cmd}"))
        if failures:
            more = f" ({len(failures)} commands failed; those after the first may fail because of it)" \
                if len(failures) > 1 else ""
            raise ExampleError("\n".join(failures) + more)

    def run_command(self, cmd: Command, page: Page, block: Block) -> None:
        """Run one command in ``page``'s folder; raises ExampleError on failure."""
        argv = expand_globs(cmd.words, page.folder)
        where = f"{block.page}:{block.line + cmd.line}"
        if "..." in argv:
            raise ExampleError(f"{where}: `{cmd}` has a placeholder (...): write a command that runs, or mark the "
                               "block <!-- example: skip REASON -->")
        env = {**page.env, **cmd.assign}
        if argv[0] == "condense":
            self.run_condense(argv[1:], env, page, where)
        elif argv[0] in ("python", "python3") and argv[1:3] == ["-m", "condense"]:
            self.run_condense(argv[3:], env, page, where)
        elif argv[0] in FILE_TOOLS and not any(a.startswith("/") or ".." in a.split("/") for a in argv[1:]):
            self.run_subprocess(argv, env, page, where)
        elif argv[0] in ("python", "python3") and len(argv) > 1 and (page.folder / argv[1]).is_file():
            self.run_subprocess([sys.executable, *argv[1:]], env, page, where)
        else:
            raise ExampleError(f"{where}: `{argv[0]}` is not run by the doc-example test (it runs condense, "
                               f"python -m condense, scripts an earlier block wrote, and {', '.join(sorted(FILE_TOOLS))} "
                               "inside the page's folder): mark the block <!-- example: skip REASON -->")

    def run_condense(self, args: list[str], env: dict[str, str], page: Page, where: str) -> None:
        from condense.cli.main import main

        try:
            argv = shrink_condense(args, self.table)
        except ExampleError as e:
            raise ExampleError(f"{where}: {e}") from None
        out = io.StringIO()
        with _environ(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code = main(argv)
            except SystemExit as e:  # --help and --version exit through argparse
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code != 0:
            raise ExampleError(f"{where}: condense {' '.join(argv)}\nexited {code}: {_tail(out.getvalue())}")

    def run_subprocess(self, argv: list[str], env: dict[str, str], page: Page, where: str) -> None:
        path = os.pathsep.join([str(page.folder), str(ROOT), os.environ.get("PYTHONPATH", "")])
        try:
            proc = subprocess.run(argv, cwd=page.folder, env={**os.environ, "PYTHONPATH": path, **env},
                                  capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ExampleError(f"{where}: {' '.join(argv)}: {e}") from None
        if proc.returncode != 0:
            raise ExampleError(f"{where}: {' '.join(argv)}\nexited {proc.returncode}: "
                               f"{_tail(proc.stdout + proc.stderr)}")

    def run_python(self, block: Block, page: Page) -> None:
        """exec the block in a fresh namespace, its keywords to the Python API forced as the table says;
        tracebacks name the page and its line numbers."""
        code = "\n" * block.line + self.table.shrink_text(block.text)
        # a real module, so that what needs one (dataclasses, pickling by reference) finds it
        module = types.ModuleType("doc_example_" + re.sub(r"\W", "_", block.id))
        sys.modules[module.__name__] = module
        out = io.StringIO()
        try:
            with forced_api(self.table), contextlib.redirect_stdout(out):
                exec(compile(code, block.page, "exec"), module.__dict__)
        except Exception as e:
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))  # the block's frames on
            printed = f"\nit printed: {_tail(out.getvalue(), 1000)}" if out.getvalue().strip() else ""
            raise ExampleError(f"{block.id}: the python block raised\n{_tail(tb, 3000)}{printed}") from None
        finally:
            del sys.modules[module.__name__]


def _tail(text: str, limit: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _registries() -> list[dict]:
    """The registries a block may add to (datasets, networks, codecs, methods), restored after it."""
    from condense import codecs, methods
    from condense.data import datasets
    from condense.nets import specs

    return [datasets._REGISTRY, specs._REGISTRY, codecs._CODECS, methods._METHODS]


@contextlib.contextmanager
def isolated(folder: Path, cache: Path) -> Iterator[None]:
    """Run a block in ``folder`` (on ``sys.path``, as ``python -m`` would put it) with one torch
    thread, no plotting window and its own condense cache, then put back the working directory,
    environment, ``sys.path``, torch's threads and the registries, and forget modules imported from
    ``folder``, so that a block changes nothing for the next one or for other tests."""
    import torch

    registries = [(r, dict(r)) for r in _registries()]
    cwd, environ, path, threads = os.getcwd(), dict(os.environ), list(sys.path), torch.get_num_threads()
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    os.environ.update({"MPLBACKEND": "Agg", "CONDENSE_CACHE": str(cache)})
    torch.set_num_threads(1)  # toy-sized work: one thread is as fast, and CI's other tests share the cores
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path[:] = path
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        for registry, saved in registries:
            registry.clear()
            registry.update(saved)
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None) or ""
            if file.startswith(str(folder) + os.sep):
                del sys.modules[name]


@contextlib.contextmanager
def forced_api(table: ShrinkTable) -> Iterator[None]:
    """The Python API (``condense.synthesize``, ``record_experts``, ``train_teacher``, ``evaluate_sets``)
    with the table's forced keywords of the matching command overriding the caller's, as the appended
    flags do on the command line: every API function builds its config through ``api._config``."""
    from condense.labels.squeeze import TeacherConfig
    from condense.methods import get_method, method_names
    from condense.workflows import api
    from evals import EvalConfig
    from trajectories.record import BufferConfig

    keys = {BufferConfig: "buffer", TeacherConfig: "teacher", EvalConfig: "eval",
            **{get_method(m).config: f"synth {m}" for m in method_names()}}
    original = api._config

    def config(cls, section, preset, fields):
        given = {"--" + k.replace("_", "-") for k, v in fields.items() if v not in (None, False)}
        return original(cls, section, preset, {**fields, **table.forced(keys.get(cls, ""), given, fields)})

    api._config = config
    try:
        yield
    finally:
        api._config = original
