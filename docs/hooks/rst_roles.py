"""Griffe extension of the API reference pages: the code's docstrings use Sphinx roles
(:func:`synthesize`, :class:`~condense.synset.SynSet`), which Markdown would show as written;
they become code spans (a leading ``~`` keeps the last name only, as Sphinx shows it)."""
from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    name = match[2].rsplit(".", 1)[-1] if match[1] else match[2]
    return f"`{name}`"


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
