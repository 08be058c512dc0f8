"""Progress for command lines: a tqdm bar on a terminal, plain log lines anywhere else.

A bar redraws itself with carriage returns; in a file (``> run.log``, ``docker logs``, CI) that
becomes thousands of overwritten frames. :func:`progress` returns a tqdm bar when its stream
(stderr) is a terminal, and otherwise a :class:`PlainProgress`, which logs one line at most every
``every_s`` seconds (environment ``L2R_PROGRESS_SECONDS``, default 30) and one when it closes::

    train: step 120/1030 (11%), level 2, loss -0.5123, 14.2 steps/s, eta 1m04s
    train: step 1030/1030 (100%), level 3, loss -0.6012, 14.0 steps/s, done in 1m14s

Both objects take the same calls (iterate, ``update``, ``set_postfix``, ``close``, ``with``).
While a bar is open, log records go through ``tqdm.write`` so they do not break it. tqdm is
imported only when a bar is drawn (a terminal): a command whose output goes to a file or a pipe
(the evaluator in a container, a benchmark) starts without it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)

ENV_SECONDS = "L2R_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def every_seconds() -> float:
    """Seconds between two plain progress lines: ``$L2R_PROGRESS_SECONDS`` (>= 0), else 30."""
    text = os.environ.get(ENV_SECONDS, "").strip()
    if not text:
        return DEFAULT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        log.warning("%s=%r is not a number of seconds >= 0; using %g", ENV_SECONDS, text, DEFAULT_SECONDS)
        return DEFAULT_SECONDS
    return value


def format_duration(seconds: float) -> str:
    """``45s``, ``1m05s``, ``2h03m`` (rounded to the second)."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class PlainProgress:
    """Counts like a tqdm bar and logs a plain line (INFO on ``logger``) at most every ``every_s``
    seconds and once on ``close`` (also at the end of an iteration). ``clock``: seconds, monotonic."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        every_s: float | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.every_s = every_seconds() if every_s is None else every_s
        self.logger = logger or log
        self.clock = clock
        self.start = self.last = clock()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("PlainProgress: nothing to iterate (pass an iterable)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.logger.info("%s", self.line(now))

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **values: Any) -> None:
        """What follows the count, e.g. ``level=2, loss="-0.5123"`` -> ``level 2, loss -0.5123``."""
        self.postfix = {**(ordered_dict or {}), **values}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.logger.info("%s", self.line(self.clock(), final=True))

    def line(self, now: float, final: bool = False) -> str:
        """The progress line at time ``now`` (see the module docstring)."""
        count = f"{self.unit} {self.n}"
        if self.total:
            count += f"/{self.total} ({int(100 * self.n / self.total)}%)"
        parts = [f"{self.desc}: {count}" if self.desc else count]
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        elapsed, done = now - self.start, self.n - self.initial
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.1f} {self.unit}s/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}")
            if not final and self.total:
                parts.append(f"eta {format_duration(max(self.total - self.n, 0) / rate)}")
        if final:
            finished = self.total is None or self.n >= self.total
            parts.append(f"{'done in' if finished else 'stopped after'} {format_duration(elapsed)}")
        return ", ".join(parts)


class _SilentProgress(PlainProgress):
    """Counts and says nothing (``progress(enabled=False)``, e.g. on ranks other than 0)."""

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


@functools.cache
def _bar_class() -> type[tqdm]:
    """The bar class, made (and tqdm imported) on first use."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    class _Bar(tqdm):
        """A tqdm bar that routes log records through ``tqdm.write`` while it is open."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
            try:
                super().__init__(*args, **kwargs)
            except BaseException:
                self._end_redirect()
                raise

        def close(self) -> None:
            try:
                super().close()
            finally:
                self._end_redirect()

        def _end_redirect(self) -> None:
            redirect, self._redirect = getattr(self, "_redirect", None), None
            if redirect is not None:
                redirect.__exit__(None, None, None)

    return _Bar


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    logger: logging.Logger | None = None,
    every_s: float | None = None,
    stream: TextIO | None = None,
) -> PlainProgress | tqdm:
    """A tqdm bar on ``stream`` (default stderr) when it is a terminal, else a
    :class:`PlainProgress` logging on ``logger``; counts silently when not ``enabled``."""
    if not enabled:
        return _SilentProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, every_s=math.inf)
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream):
        width = _terminal_columns(stream)  # 0: a terminal that reports no size (a bare pty)
        sizing = {"dynamic_ncols": True} if width else {"ncols": 80, "nrows": 24}
        return _bar_class()(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream, **sizing)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, every_s=every_s, logger=logger)


def _terminal_columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):  # no file descriptor (a wrapper), or not a terminal
        return 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
