"""Subcommands whose issue has not landed yet: they exist, explain themselves, and exit non-zero."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..errors import CondenseError


@dataclass(frozen=True)
class Pending:
    name: str
    summary: str
    arrives_with: str

    def add_parser(self, sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser(self.name, help=f"{self.summary} (not yet available)",
                           description=f"{self.summary}. Not yet available: arrives with {self.arrives_with}.")
        p.set_defaults(handler=self.run, accepts_unknown_flags=True)

    def run(self, args: argparse.Namespace) -> int:
        raise CondenseError(f"'condense {self.name}' is not available yet: it arrives with {self.arrives_with}")


LABELS = Pending("labels", "make and compress soft labels for a synthetic set", "the soft-label issue (#12)")
