"""The docs' option tables, derived from the declarations (:mod:`condense.workflows.options_page` prints them all)."""
from __future__ import annotations

import dataclasses

from .declare import declared, default_of


def options_table(cls: type) -> str:
    """A markdown table of config ``cls``: option, part, default, allowed values, help."""
    rows = ["| option | part | default | allowed | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        meta = declared(f)
        default = default_of(f)
        allowed = " \\| ".join(map(str, meta.choices)) if meta.choices else meta.bounds_text()
        unit = f" ({meta.unit})" if meta.unit else ""
        cells = [f"`{meta.flag_of(f.name)}`", meta.part, "" if default in (None, "") else f"`{default}`",
                 allowed, meta.help + unit]
        rows.append("| " + " | ".join(c.replace("|", "\\|") if i != 3 else c for i, c in enumerate(cells)) + " |")
    return "\n".join(rows)
