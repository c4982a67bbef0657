"""Progress bars that suit a terminal, a notebook and a log file alike.

On a terminal (and in Jupyter) :func:`bar` is a plain tqdm bar. When the stream is not a
terminal (a log file, a pipe, CI) a redraw per step would fill the log with carriage
returns (a `make quickstart` log was 188 KB of them), so the bar prints whole lines, at
most one every :data:`LOG_INTERVAL_S` seconds (and its final state when it closes), and
transient inner bars (``leave=False``: an expert's epochs, an evaluation run's epochs) are
left out.
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class _Lines:
    """A stream for tqdm that turns its carriage-return redraws into whole lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, s: str) -> None:
        text = s.replace("\r", "").strip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """tqdm whose postfix updates wait for the next timed line instead of printing one each."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh=False)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar(*, disable: bool = False, file: TextIO | None = None, **kwargs: Any):
    """A tqdm progress bar (``total``, ``desc``, ``unit``, ... as tqdm takes them) on ``file``
    (default stderr): redrawn in place on a terminal, a line per ~30 s in a log."""
    if disable:  # before tqdm.auto, whose import alone warns in a notebook without ipywidgets
        return tqdm(disable=True, **kwargs)
    from tqdm.auto import tqdm as auto_tqdm

    stream = file or sys.stderr
    if any(c.__module__ == "tqdm.notebook" for c in auto_tqdm.__mro__):  # a Jupyter kernel: tqdm's widget
        return auto_tqdm(file=file, **kwargs)
    if _is_terminal(stream):
        return tqdm(file=stream, dynamic_ncols=True, **kwargs)
    if kwargs.get("leave") is False:  # a transient inner bar: cleared on a terminal, noise in a log
        return tqdm(disable=True, **kwargs)
    # tqdm prints once mininterval has passed; its monitor thread forces a print after
    # maxinterval: both at LOG_INTERVAL_S give at most one line per interval.
    return _LogBar(file=_Lines(stream), mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, ncols=100, ascii=True,
                   **kwargs)
