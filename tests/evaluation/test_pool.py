"""The evaluator's worker pool: results in order, and a worker that dies named by the pair it held
(the forked workers, and the executor used where there is no fork)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from evaluation.pool import died_message, run_pool
from learn2reg.io import DataError


def square(x: int) -> int:
    return x * x


def dies_on_three(x: int) -> int:
    """A test stand-in for a worker the out-of-memory killer ends while it works on pair 3."""
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return x


def fails_on_two(x: int) -> int:
    if x == 2:
        raise ZeroDivisionError(f"pair {x}")
    return x


def big(x: int) -> np.ndarray:
    """A result larger than a pipe's buffer (8 MB)."""
    return np.full(1 << 20, x, dtype=np.float64)


def children_left() -> bool:
    try:
        return os.waitpid(-1, os.WNOHANG) != (0, 0)  # a child exists (running, or a zombie it reaps here)
    except ChildProcessError:
        return False


@pytest.mark.parametrize("start", ["fork", "executor"])
def test_results_come_back_in_order(start):
    assert run_pool(square, list(range(7)), [f"p{i}" for i in range(7)], workers=2, start=start) == [i * i for i in range(7)]


@pytest.mark.parametrize("start", ["fork", "executor"])
def test_a_worker_killed_mid_pair_is_named_by_that_pair_and_nothing_hangs(start):
    begin = time.perf_counter()
    with pytest.raises(DataError) as died:
        run_pool(dies_on_three, list(range(8)), [f"000{i}_0000<--000{i}_0001" for i in range(8)], workers=2, start=start)
    message = str(died.value)
    assert message.startswith("an evaluator worker process died while evaluating ") and "0003_0000<--0003_0001" in message
    assert "of 8 pair(s) were finished" in message and "-j 1" in message
    assert time.perf_counter() - begin < 60
    if start == "fork":  # it knows which worker died: that pair alone is named
        assert message.count("<--") == 1
        assert not children_left()


def test_an_exception_in_a_worker_is_raised_here_with_its_traceback():
    with pytest.raises(ZeroDivisionError, match="pair 2") as raised:
        run_pool(fails_on_two, list(range(6)), [f"p{i}" for i in range(6)], workers=2)
    assert any("in evaluator worker" in note and "fails_on_two" in note for note in raised.value.__notes__)
    assert not children_left()  # the other worker was stopped and waited for


def test_large_results_come_back_whole_and_every_worker_is_waited_for():
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    out = run_pool(big, list(range(5)), [f"p{i}" for i in range(5)], workers=3)
    assert [float(a[0]) for a in out] == [0, 1, 2, 3, 4] and all(np.all(a == a[0]) and a.size == 1 << 20 for a in out)
    assert not children_left()
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds  # every pipe closed


def test_the_message_lists_only_pairs_started_and_not_finished():
    text = died_message(["a", "b", "c", "d"], [11, 12, 11, 0], finished={0})
    assert "while evaluating b or c" in text and "1 of 4 pair(s) were finished" in text
    assert "before it started a pair" in died_message(["a"], [0], set())
