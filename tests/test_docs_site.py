"""The documentation site (mkdocs.yml; the `docs` extra, part of `dev`) builds with `mkdocs build --strict`:
every page in the nav, every nav entry a page, every link and anchor found, every API docstring rendered."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == sorted(set(nav)), "a page is in the nav twice"
    assert not set(pages) - set(nav), f"pages missing from the nav of mkdocs.yml: {sorted(set(pages) - set(nav))}"
    assert not set(nav) - set(pages), f"nav entries with no page in docs/: {sorted(set(nav) - set(pages))}"


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` fails on any warning: a missing page, link or anchor, a page outside the nav
    (mkdocs.yml's `validation`), a docstring mkdocstrings cannot render, a snippet that is not there."""
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    warnings = [line for line in build.stderr.splitlines() if re.match(r"(WARNING|ERROR)\b", line)]
    assert build.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings or build.stderr.splitlines()[-30:])
    assert (tmp_path / "site" / "index.html").is_file()
    changelog = (tmp_path / "site" / "changelog" / "index.html").read_text()
    assert "0.6.0" in changelog and "--8&lt;--" not in changelog, "docs/changelog.md should include CHANGELOG.md"
