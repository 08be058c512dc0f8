"""The evaluator's worker pool: results in order, and a worker that dies named by the pair it held."""

from __future__ import annotations

import os
import signal
import time

import pytest

from evaluation.case import died_message, run_pool
from learn2reg.io import DataError


def square(x: int) -> int:
    return x * x


def dies_on_three(x: int) -> int:
    """A test stand-in for a worker the out-of-memory killer ends while it works on pair 3."""
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return x


def test_results_come_back_in_order():
    assert run_pool(square, list(range(7)), [f"p{i}" for i in range(7)], workers=2) == [i * i for i in range(7)]


def test_a_worker_killed_mid_pair_is_named_by_that_pair_and_nothing_hangs():
    start = time.perf_counter()
    with pytest.raises(DataError) as died:
        run_pool(dies_on_three, list(range(8)), [f"000{i}_0000<--000{i}_0001" for i in range(8)], workers=2)
    message = str(died.value)
    assert message.startswith("an evaluator worker process died while evaluating ") and "0003_0000<--0003_0001" in message
    assert "of 8 pair(s) were finished" in message and "-j 1" in message
    assert time.perf_counter() - start < 60


def test_the_message_lists_only_pairs_started_and_not_finished():
    text = died_message(["a", "b", "c", "d"], [11, 12, 11, 0], finished={0})
    assert "while evaluating b or c" in text and "1 of 4 pair(s) were finished" in text
    assert "before it started a pair" in died_message(["a"], [0], set())
