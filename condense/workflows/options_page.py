"""The docs' generated parts: docs/OPTIONS.md and the marked blocks of the other pages.

Every option table and preset list in the docs comes from the declarations and the shipped
presets, so a flag, its check, its preset key and its documentation cannot drift apart:

    python -m condense.workflows.options_page            print docs/OPTIONS.md
    python -m condense.workflows.options_page --write    regenerate docs/OPTIONS.md and every marked block
    python -m condense.workflows.options_page --check    exit 1 naming the pages that are out of date

A marked block in a page under docs/ is regenerated in place, its markers kept::

    <!-- options: tm -->          the options table of `condense synth tm` (or buffer, teacher, labels, eval)
    <!-- /options -->
    <!-- presets: sre2l rded -->  the shipped presets of those methods (or buffer, teacher, run: such presets)
    <!-- /presets -->

A test keeps every generated part equal to this module's output.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from evals.grid import EvalConfig
from trajectories.record import BufferConfig

from ..config.presets import load_preset, preset_names
from ..config.tables import options_table
from ..labels.run import LabelsConfig
from ..labels.squeeze import TeacherConfig
from ..methods import get_method, method_names
from .label_curve import CurveConfig
from ..runtime.files import write_text

DOCS = Path(__file__).resolve().parents[2] / "docs"
COMMANDS = {"buffer": BufferConfig, "teacher": TeacherConfig, "labels": LabelsConfig, "labels-curve": CurveConfig,
            "eval": EvalConfig}
TITLES = {"labels-curve": "labels --curve"}  # a command's mode with options of its own
# Preset kinds other than a method's name: presets made of that one command's section.
PRESET_COMMANDS = ("buffer", "teacher", "run")
REGENERATE = "python -m condense.workflows.options_page --write"

HEADER = """# Options

Every option of every command and method, generated from the declarations in the code
(`python -m condense.workflows.options_page > docs/OPTIONS.md`). The same names work as flags
(`--lr-img`), preset keys (`lr_img:`) and Python keywords (`condense.synthesize("dm", lr_img=1)`).
"""

_BLOCK = re.compile(r"(<!-- (options|presets): ([^>]*?) -->\n)(.*?)(<!-- /\2 -->)", re.S)


def options_page() -> str:
    """The whole options page: the commands, then every registered synthesis method."""
    sections = [(f"condense {TITLES.get(name, name)}", cls) for name, cls in COMMANDS.items()]
    seen: set[type] = set()
    for name in method_names():
        cls = get_method(name).config
        if cls not in seen:
            seen.add(cls)
            also = [m for m in method_names() if get_method(m).config is cls and m != name]
            sections.append((f"condense synth {name}" + "".join(f", {m}" for m in also), cls))
    return HEADER + "".join(f"\n## {title}\n\n{options_table(cls)}\n" for title, cls in sections)


def options_block(name: str) -> str:
    """The options table of command ``name`` (buffer, teacher, labels, labels-curve, eval) or method ``name``."""
    if name in COMMANDS:
        return options_table(COMMANDS[name])
    if name not in method_names():
        raise ValueError(f"<!-- options: {name} -->: not a command ({', '.join(COMMANDS)}) nor a method "
                         f"({', '.join(method_names())})")
    return options_table(get_method(name).config)


def presets_block(names: list[str]) -> str:
    """A table of the shipped presets of the methods ``names`` (their ``synth`` section's method), or
    of the presets that are one ``buffer`` / ``teacher`` section, or pipelines (``run``)."""
    for name in names:
        if name not in PRESET_COMMANDS and name not in method_names():
            raise ValueError(f"<!-- presets: {name} -->: not a method nor one of {', '.join(PRESET_COMMANDS)}")
    rows = ["| preset | what it is |", "|---|---|"]
    for preset in preset_names():
        data = load_preset(preset)
        sections = set(data) - {"description", "source"}
        if "run" in sections:
            kind = "run"
        elif sections in ({"synth"}, {"synth", "eval"}):  # a method's preset, with its evaluation or without
            kind = data["synth"].get("method")
        else:
            kind = next(iter(sections)) if len(sections) == 1 else None
        if kind in names:
            description = " ".join(str(data.get("description", "")).split()).replace("|", "\\|")
            rows.append(f"| `{preset}` | {description} |")
    if len(rows) == 2:
        raise ValueError(f"<!-- presets: {' '.join(names)} -->: no shipped preset matches")
    return "\n".join(rows)


def render(kind: str, argument: str) -> str:
    """The generated text of one marked block (without its markers)."""
    names = argument.split()
    if kind == "options":
        return "\n\n".join(options_block(n) for n in names)
    return presets_block(names)


def regenerate(text: str) -> str:
    """``text`` with every marked block replaced by its generated content."""
    return _BLOCK.sub(lambda m: f"{m[1]}{render(m[2], m[3])}\n{m[5]}", text)


def generated_pages(docs: Path = DOCS) -> dict[Path, str]:
    """Every page with generated parts, mapped to what it should hold: OPTIONS.md and the pages with marked blocks."""
    pages = {docs / "OPTIONS.md": options_page()}
    for page in sorted(docs.rglob("*.md")):
        text = page.read_text()
        if page not in pages and _BLOCK.search(text):
            pages[page] = regenerate(text)
    return pages


def stale_pages(docs: Path = DOCS, pages: dict[Path, str] | None = None) -> list[Path]:
    """The pages whose generated parts differ from the declarations and presets (``pages``:
    :func:`generated_pages`, computed when not given)."""
    pages = generated_pages(docs) if pages is None else pages
    return [p for p, text in pages.items() if not p.exists() or p.read_text() != text]


def main(argv: list[str]) -> int:
    if not argv:
        print(options_page(), end="")
        return 0
    if argv not in (["--write"], ["--check"]):
        print("usage: python -m condense.workflows.options_page [--write | --check]", file=sys.stderr)
        return 2
    pages = generated_pages()
    stale = stale_pages(pages=pages)
    if argv == ["--check"]:
        for page in stale:
            print(f"out of date: {page.relative_to(DOCS.parent)} (regenerate: {REGENERATE})")
        return 1 if stale else 0
    for page in stale:
        write_text(page, pages[page])
        print(f"wrote {page.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
