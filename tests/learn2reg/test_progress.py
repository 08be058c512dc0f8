"""Progress for command lines: plain lines (format, spacing in time, end line) off a terminal,
a tqdm bar on one, silence when disabled."""

from __future__ import annotations

import io
import logging
import sys

import pytest
from tqdm import tqdm

from learn2reg.progress import PlainProgress, every_seconds, format_duration, progress

NAME = "tests.progress"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == NAME]


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (44.6, "45s"), (65, "1m05s"), (3599, "59m59s"), (7380, "2h03m")])
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def test_a_line_at_most_every_interval_and_one_at_the_end(caplog):
    """400 steps, 0.25 s each (exact in binary), a line every 30 s: at steps 120, 240, 360 and the end."""
    caplog.set_level(logging.INFO, NAME)
    clock = Clock()
    bar = PlainProgress(total=400, desc="train", unit="step", every_s=30, logger=logging.getLogger(NAME), clock=clock)
    for step in range(1, 401):
        clock.now += 0.25
        bar.set_postfix(level=1 + step // 200, loss="-0.5123")
        bar.update(1)
    bar.close()
    bar.close()  # closing twice says nothing more
    assert lines(caplog) == [
        "train: step 120/400 (30%), level 1, loss -0.5123, 4.0 steps/s, eta 1m10s",
        "train: step 240/400 (60%), level 2, loss -0.5123, 4.0 steps/s, eta 40s",
        "train: step 360/400 (90%), level 2, loss -0.5123, 4.0 steps/s, eta 10s",
        "train: step 400/400 (100%), level 3, loss -0.5123, 4.0 steps/s, done in 1m40s",
    ]


def test_a_resumed_count_rates_only_the_steps_of_this_run_and_an_early_end_says_so(caplog):
    caplog.set_level(logging.INFO, NAME)
    clock = Clock()
    bar = PlainProgress(total=1000, desc="train", unit="step", initial=600, every_s=1e9, logger=logging.getLogger(NAME), clock=clock)
    clock.now += 10.0
    bar.update(20)
    bar.close()
    assert lines(caplog) == ["train: step 620/1000 (62%), 2.0 steps/s, stopped after 10s"]


def test_slow_items_read_as_seconds_per_item_and_a_count_without_total(caplog):
    caplog.set_level(logging.INFO, NAME)
    clock = Clock()
    bar = PlainProgress(desc="predict T1", unit="pair", every_s=0, logger=logging.getLogger(NAME), clock=clock)
    clock.now += 5.0
    bar.update(2)
    bar.close()
    assert lines(caplog) == ["predict T1: pair 2, 2.5 s/pair", "predict T1: pair 2, 2.5 s/pair, done in 5s"]


def test_iterating_yields_every_item_and_counts_them(caplog):
    caplog.set_level(logging.INFO, NAME)
    items = list(PlainProgress(["a", "b", "c"], desc="validate", unit="case", every_s=0, logger=logging.getLogger(NAME)))
    assert items == ["a", "b", "c"]
    found = lines(caplog)
    assert [line.split(",")[0] for line in found] == [f"validate: case {k}/3 ({100 * k // 3}%)" for k in (1, 2, 3, 3)]
    assert "done in" in found[-1]


def test_the_interval_comes_from_the_environment(monkeypatch, caplog):
    monkeypatch.delenv("L2R_PROGRESS_SECONDS", raising=False)
    assert every_seconds() == 30.0
    monkeypatch.setenv("L2R_PROGRESS_SECONDS", "2.5")
    assert every_seconds() == 2.5
    assert PlainProgress(total=1).every_s == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("L2R_PROGRESS_SECONDS", bad)
        assert every_seconds() == 30.0
    assert "L2R_PROGRESS_SECONDS" in caplog.text


def test_a_file_gets_plain_lines_and_a_terminal_a_bar():
    plain = progress(total=3, desc="x", stream=io.StringIO())
    assert isinstance(plain, PlainProgress)
    plain.close()
    screen = FakeTerminal()
    bar = progress(range(3), desc="align T", unit="pair", stream=screen)
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    assert "\r" in screen.getvalue() and "align T: 100%" in screen.getvalue() and "3/3" in screen.getvalue()


def test_disabled_progress_counts_and_says_nothing(caplog):
    caplog.set_level(logging.DEBUG)
    screen = FakeTerminal()
    silent = progress(range(4), total=4, desc="x", enabled=False, stream=screen)
    assert list(silent) == [0, 1, 2, 3] and silent.n == 4
    silent.update(1)
    silent.close()
    assert screen.getvalue() == "" and caplog.records == []


def test_log_records_go_around_an_open_bar_and_the_handlers_come_back(monkeypatch):
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", screen)  # the stream the bar and the console handler share
    root = logging.getLogger()
    handler = logging.StreamHandler(screen)
    root.addHandler(handler)
    try:
        bar = progress(total=2, desc="train", unit="step")
        assert handler not in root.handlers  # replaced by tqdm's, which writes above the bar
        bar.update(1)
        logging.getLogger("tests.progress").warning("validation at step 1")
        bar.close()
        assert handler in root.handlers
    finally:
        root.removeHandler(handler)
    text = screen.getvalue()
    assert "validation at step 1\n" in text and text.index("validation at step 1") > text.index("train:")
