"""Progress bars: redrawn on a terminal, a few whole lines in a log."""
import io
import time

from condense.runtime import progress


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_whole_lines_not_a_redraw_per_step(monkeypatch):
    log = io.StringIO()
    with progress.bar(total=5000, desc="synth", file=log) as b:
        for i in range(5000):
            b.update(1)
            b.set_postfix(loss=f"{1 / (i + 1):.3g}")  # what the loops do every step
            b.set_postfix_str(f"step {i}")
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3 and "5000/5000" in lines[-1]  # the start, perhaps, and the final state


def test_a_log_gets_a_line_per_interval_on_long_work(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.05)
    log = io.StringIO()
    with progress.bar(total=20, desc="eval", file=log) as b:
        for _ in range(20):
            time.sleep(0.01)
            b.update(1)
    lines = log.getvalue().splitlines()
    assert 2 <= len(lines) <= 8, lines  # ~0.2 s of work at one line per 0.05 s, not one per step


def test_a_terminal_gets_the_redrawn_bar():
    tty = Tty()
    with progress.bar(total=50, desc="x", file=tty, mininterval=0) as b:
        for _ in range(50):
            b.update(1)
    assert tty.getvalue().count("\r") >= 10


def test_disabled_prints_nothing():
    log = io.StringIO()
    with progress.bar(total=10, file=log, disable=True) as b:
        b.update(10)
    assert log.getvalue() == ""


def test_a_log_leaves_out_transient_inner_bars():
    log = io.StringIO()
    with progress.bar(total=3, desc="inner", leave=False, file=log) as b:
        b.update(3)
    assert log.getvalue() == ""
    tty = Tty()
    with progress.bar(total=3, desc="inner", leave=False, file=tty) as b:
        b.update(3)
    assert "inner" in tty.getvalue()
