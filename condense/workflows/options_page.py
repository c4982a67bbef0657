"""``python -m condense.workflows.options_page > docs/OPTIONS.md``: every option of every command and method.

The page is generated from the declarations; a test keeps docs/OPTIONS.md equal to it.
"""
from __future__ import annotations

from evals.grid import EvalConfig
from trajectories.record import BufferConfig

from ..config.tables import options_table
from ..labels.run import LabelsConfig
from ..labels.squeeze import TeacherConfig
from ..methods import get_method, method_names

HEADER = """# Options

Every option of every command and method, generated from the declarations in the code
(`python -m condense.workflows.options_page > docs/OPTIONS.md`). The same names work as flags
(`--lr-img`), preset keys (`lr_img:`) and Python keywords (`condense.synthesize("dm", lr_img=1)`).
"""


def options_page() -> str:
    """The whole options page: the commands, then every registered synthesis method."""
    sections = [("condense buffer", BufferConfig), ("condense teacher", TeacherConfig),
                ("condense labels", LabelsConfig), ("condense eval", EvalConfig)]
    seen: set[type] = set()
    for name in method_names():
        cls = get_method(name).config
        if cls not in seen:
            seen.add(cls)
            also = [m for m in method_names() if get_method(m).config is cls and m != name]
            sections.append((f"condense synth {name}" + "".join(f", {m}" for m in also), cls))
    return HEADER + "".join(f"\n## {title}\n\n{options_table(cls)}\n" for title, cls in sections)


if __name__ == "__main__":
    print(options_page(), end="")
