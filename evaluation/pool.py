"""The evaluator's worker processes: pairs evaluated in a pool, and a worker that dies named by its pair.

A worker killed from outside (the out-of-memory killer, ``kill -9``) breaks a
``ProcessPoolExecutor``: every pending pair fails with ``BrokenProcessPool`` and nothing says which
pair the dead worker held. Each worker therefore records, in memory shared with the parent, its pid
against the index of every job it starts; when the pool breaks, the pairs started and not finished
are the ones in flight, and :func:`run_pool` raises a ``DataError`` naming them (exit code 1, nothing
written: the evaluator writes its output only at the end), never a hang or a traceback.

fork starts the workers (in milliseconds, with everything imported, no ``__main__`` guard needed);
the executor forks them all at the first submit, before its manager thread exists; the only other
threads are the BLAS pool's (fork-safe via its atfork handlers), hence Python >= 3.12's
"multi-threaded fork" DeprecationWarning is silenced. Where there is no fork: forkserver, else spawn.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from learn2reg.io import DataError

Job = TypeVar("Job")
Result = TypeVar("Result")
_started: Any = None  # in a worker: the shared array job index -> pid of the worker that took it


def _remember(started: Any) -> None:
    global _started  # the pool's initializer is the only way to hand a worker shared memory
    _started = started


def _tracked(fn: Callable[[Any], Any], index: int, job: Any) -> Any:
    _started[index] = os.getpid()
    return fn(job)


def run_pool(fn: Callable[[Job], Result], jobs: Sequence[Job], keys: Sequence[str], workers: int,
             bar: Callable[[Iterable[Future]], Iterable[Future]] = iter) -> list[Result]:
    """``[fn(job) for job in jobs]`` in ``workers`` processes, in order; ``keys`` name the jobs
    (pair keys) in the error when a worker dies (module docstring). ``bar`` wraps the futures
    (a progress bar)."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "forkserver" if "forkserver" in methods else "spawn")
    started = ctx.Array("q", len(jobs), lock=False)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_remember, initargs=(started,)) as pool:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            futures = [pool.submit(_tracked, fn, i, job) for i, job in enumerate(jobs)]
        try:
            return [f.result() for f in bar(futures)]
        except BrokenProcessPool as exc:
            finished = {i for i, f in enumerate(futures) if f.done() and not f.cancelled() and f.exception() is None}
            raise DataError(died_message(keys, [started[i] for i in range(len(jobs))], finished)) from exc


def died_message(keys: Sequence[str], started_by: Sequence[int], finished: set[int]) -> str:
    """What a dead worker leaves: the pairs it may have held (started, not finished), how many
    pairs were done, and what to do."""
    in_flight = [keys[i] for i, pid in enumerate(started_by) if pid and i not in finished]
    where = (f"while evaluating {' or '.join(in_flight)}" if in_flight else "before it started a pair")
    return (f"an evaluator worker process died {where} (killed from outside: the out-of-memory killer or a signal); "
            f"{len(finished)} of {len(keys)} pair(s) were finished; nothing was written: rerun the same command, with "
            "fewer workers (-j 1) if memory is short")
