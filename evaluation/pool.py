"""The evaluator's worker processes: pairs evaluated in parallel, results in order, and a worker
that dies named by the pair it held.

Where the system can fork (Linux, macOS), :func:`run_pool` forks ``workers`` processes that
inherit everything imported and the jobs themselves (nothing is pickled on the way in) and hands
them pair indices one at a time over a pipe each; a worker sends back each result (pickled, with
its length) on its own pipe and takes the next index. The parent only waits on those pipes
(``select``), so it knows at every moment which pair each worker holds. A worker killed from
outside (the out-of-memory killer, ``kill -9``) closes its pipe: the parent sees the end of the
pipe while the worker still held a pair, stops the others and raises a ``DataError`` naming that
pair (exit code 1, nothing written: the evaluator writes its output only at the end), never a hang
or a traceback. An exception in a worker is sent back and raised in the parent (with the worker's
traceback as a note). This costs a few milliseconds; ``concurrent.futures`` with
``multiprocessing`` cost ~0.03 s more per run (their imports, a manager thread, queues, the jobs
pickled), a tenth of a small ReMIND2Reg run (measured, ``bench/results/organisers_vs_ours_cpu.md``).

Without fork (Windows): a ``ProcessPoolExecutor`` (forkserver, else spawn); each worker records,
in memory shared with the parent, its pid against the index of every job it starts, so that the
pairs in flight can be named when the pool breaks.

The only threads that may exist when the workers fork are the BLAS pool's (fork-safe via its
atfork handlers), hence Python >= 3.12's "multi-threaded fork" DeprecationWarning is silenced.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from learn2reg.io import DataError

Job = TypeVar("Job")
Result = TypeVar("Result")
_LENGTH = 8  # bytes of a result's length on the pipe (little-endian)
_INDEX = 4  # bytes of a job index on the pipe


def run_pool(fn: Callable[[Job], Result], jobs: Sequence[Job], keys: Sequence[str], workers: int,
             bar: Callable[[Iterable[int]], Iterable[int]] = iter, start: str = "auto") -> list[Result]:
    """``[fn(job) for job in jobs]`` in ``workers`` processes, in order; ``keys`` name the jobs
    (pair keys) in the error when a worker dies (module docstring). ``bar`` wraps the stream of
    finished jobs (a progress bar). ``start``: ``"fork"``, ``"executor"`` or ``"auto"`` (fork
    where the system has it)."""
    if start == "auto":
        start = "fork" if hasattr(os, "fork") else "executor"
    if start == "fork":
        return _ForkPool(fn, jobs, keys).run(workers, bar)
    return _executor_pool(fn, jobs, keys, workers, bar)


def died_message(keys: Sequence[str], started_by: Sequence[int], finished: set[int]) -> str:
    """What a dead worker leaves: the pairs it may have held (started, not finished), how many
    pairs were done, and what to do."""
    in_flight = [keys[i] for i, pid in enumerate(started_by) if pid and i not in finished]
    where = (f"while evaluating {' or '.join(in_flight)}" if in_flight else "before it started a pair")
    return (f"an evaluator worker process died {where} (killed from outside: the out-of-memory killer or a signal); "
            f"{len(finished)} of {len(keys)} pair(s) were finished; nothing was written: rerun the same command, with "
            "fewer workers (-j 1) if memory is short")


class _Worker:
    """The parent's side of one forked worker: its pid, the pipe it reads indices from, the
    pipe its results come back on (with what has arrived of the next one) and the pair it holds."""

    def __init__(self, pid: int, to_child: int, from_child: int) -> None:
        self.pid, self.to_child, self.from_child = pid, to_child, from_child
        self.received = bytearray()
        self.holding: int | None = None

    def frames(self) -> Iterator[bytes]:
        """Complete results received so far (pickled), oldest first."""
        while len(self.received) >= _LENGTH:
            size = int.from_bytes(self.received[:_LENGTH], "little")
            if len(self.received) < _LENGTH + size:
                return
            frame = bytes(self.received[_LENGTH : _LENGTH + size])
            del self.received[: _LENGTH + size]
            yield frame


class _ForkPool:
    """Forked workers fed one job index at a time (module docstring)."""

    def __init__(self, fn: Callable[[Any], Any], jobs: Sequence[Any], keys: Sequence[str]) -> None:
        self.fn, self.jobs, self.keys = fn, jobs, keys
        self.results: list[Any] = [None] * len(jobs)
        self.started_by = [0] * len(jobs)
        self.finished: set[int] = set()
        self.todo = iter(range(len(jobs)))
        self.workers: dict[int, _Worker] = {}  # by the fd its results come on

    def run(self, workers: int, bar: Callable[[Iterable[int]], Iterable[int]]) -> list[Any]:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                for _ in range(max(1, min(workers, len(self.jobs)))):
                    self._fork()
            for worker in list(self.workers.values()):
                self._give(worker)
            for _ in bar(self._finished()):
                pass
            return self.results
        finally:
            self._stop()

    def _fork(self) -> None:
        job_read, job_write = os.pipe()
        result_read, result_write = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # else the worker would print what they buffer again
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            pid = os.fork()
        except OSError:  # no process left to the user, no memory: nothing of this worker stays open
            for fd in (job_read, job_write, result_read, result_write):
                os.close(fd)
            raise
        if pid == 0:  # the worker: it never returns
            try:
                for worker in self.workers.values():  # the parent's ends of the earlier workers' pipes:
                    os.close(worker.to_child)  # held here, a worker would never see the end of its own
                    os.close(worker.from_child)
                os.close(job_write)
                os.close(result_read)
                _work(self.fn, self.jobs, job_read, result_write)
            finally:
                os._exit(1)  # (_work leaves by os._exit itself; this is for a failure before it)
        os.close(job_read)
        os.close(result_write)
        self.workers[result_read] = _Worker(pid, job_write, result_read)

    def _give(self, worker: _Worker) -> None:
        """The next pair to ``worker``, or the end of its pipe when none is left."""
        index = next(self.todo, None)
        if index is None:
            os.close(worker.to_child)
            worker.to_child = -1
            return
        worker.holding, self.started_by[index] = index, worker.pid
        with contextlib.suppress(BrokenPipeError):  # it died: the end of its result pipe says so
            os.write(worker.to_child, index.to_bytes(_INDEX, "little"))

    def _finished(self) -> Iterator[int]:
        """Wait for results; yield the index of each finished job."""
        import pickle
        import select

        poll = select.poll()  # not select.select: no limit on the descriptor numbers
        for fd in self.workers:
            poll.register(fd, select.POLLIN)
        while self.workers:
            for fd, _ in poll.poll():
                worker = self.workers[fd]
                chunk = os.read(fd, 1 << 20)
                if not chunk:  # the worker ended: after its last job, or killed while it held one
                    poll.unregister(fd)
                    del self.workers[fd]
                    os.close(fd)
                    self._reap(worker)
                    if worker.holding is not None:
                        held = [pid if i == worker.holding else 0 for i, pid in enumerate(self.started_by)]
                        raise DataError(died_message(self.keys, held, self.finished))
                    continue
                worker.received += chunk
                for frame in worker.frames():
                    ok, value, where = pickle.loads(frame)
                    if not ok:
                        value.add_note(f"in evaluator worker {worker.pid}:\n{where}")
                        raise value
                    index, worker.holding = worker.holding, None
                    assert index is not None  # a result comes only for a pair given
                    self.results[index] = value
                    self.finished.add(index)
                    self._give(worker)
                    yield index

    def _stop(self) -> None:
        """Every worker still running is killed (an error or an interrupt ended the pool early);
        all are waited for, and their pipes closed."""
        import signal

        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
        for fd, worker in list(self.workers.items()):
            os.close(fd)
            self._reap(worker)
        self.workers.clear()

    @staticmethod
    def _reap(worker: _Worker) -> None:
        if worker.to_child >= 0:
            os.close(worker.to_child)
            worker.to_child = -1
        with contextlib.suppress(ChildProcessError):
            os.waitpid(worker.pid, 0)


def _work(fn: Callable[[Any], Any], jobs: Sequence[Any], job_read: int, result_write: int) -> None:
    """A forked worker's life: read an index, send ``(True, fn(job), "")`` or ``(False, the
    exception, its traceback)``, until the end of the pipe; then leave at once (``os._exit``: no
    exit handlers or finalizers of the parent's state)."""
    import pickle

    code = 0
    try:
        while True:
            raw = os.read(job_read, _INDEX)
            if not raw:
                break
            try:
                reply = (True, fn(jobs[int.from_bytes(raw, "little")]), "")
            except Exception as exc:  # sent to the parent, which raises it
                reply = (False, exc, traceback.format_exc())
            try:
                data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # an unpicklable result or exception: say what it was
                text = f"{type(reply[1]).__name__} could not be sent back ({type(exc).__name__}: {exc}): {reply[1]!r}"
                data = pickle.dumps((False, RuntimeError(text), reply[2]), protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(len(data).to_bytes(_LENGTH, "little") + data)
            while view:
                view = view[os.write(result_write, view) :]
    except BaseException:  # interrupted, or the parent is gone (broken pipe): nothing to report
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# ----------------------------------------------------------------------------- without fork

_started: Any = None  # in an executor's worker: the shared array job index -> pid of the worker that took it


def _remember(started: Any) -> None:
    global _started  # the pool's initializer is the only way to hand a worker shared memory
    _started = started


def _tracked(fn: Callable[[Any], Any], index: int, job: Any) -> Any:
    _started[index] = os.getpid()
    return fn(job)


def _executor_pool(fn: Callable[[Job], Result], jobs: Sequence[Job], keys: Sequence[str], workers: int,
                   bar: Callable[[Iterable[int]], Iterable[int]]) -> list[Result]:
    """:func:`run_pool` with a ``ProcessPoolExecutor`` (module docstring)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "forkserver" if "forkserver" in methods else "spawn")
    started = ctx.Array("q", len(jobs), lock=False)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_remember, initargs=(started,)) as pool:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            futures = [pool.submit(_tracked, fn, i, job) for i, job in enumerate(jobs)]
        def in_order() -> Iterator[int]:
            for i, future in enumerate(futures):
                future.result()  # waits; raises the worker's exception here
                yield i

        try:
            for _ in bar(in_order()):
                pass
            return [f.result() for f in futures]
        except BrokenProcessPool as exc:
            finished = {i for i, f in enumerate(futures) if f.done() and not f.cancelled() and f.exception() is None}
            raise DataError(died_message(keys, [started[i] for i in range(len(jobs))], finished)) from exc
