"""Will it fit? A stage's memory estimate (``pipeline.model.memory``) against what the device has
free, before the stage writes anything; the measured peak beside the estimate afterwards.

Free memory: on the CPU ``MemAvailable`` of ``/proc/meminfo``, lowered to what the process's
cgroup still allows when it has a limit (a container's ``--memory``: cgroup v2 ``memory.max``
minus ``memory.current``, v1 ``memory.limit_in_bytes`` minus ``memory.usage_in_bytes``, page
cache that can be dropped added back); on a GPU ``torch.cuda.mem_get_info``.

Decision (:func:`verdict`), per device the stage uses: the work's estimated bytes above
:data:`REFUSE_FRACTION` of what is free -> refused (``DataError``, exit 1, with the estimate,
what is free and the options that would make it fit); above :data:`WARN_FRACTION` -> a warning;
otherwise it fits. ``skip`` (``--skip-memory-check``) logs the verdict and goes on.

Measured peak (:func:`measured_peak`): on the CPU the process's peak resident set
(``VmHWM``: its own, not that of a process it was started from), on a GPU
``torch.cuda.max_memory_allocated``. :meth:`MemoryCheck.record` puts
both beside the estimate (GB = 2^30 bytes) for ``runtimes.json``, ``register.json`` and the run
folder's ``memory.json``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from learn2reg.faults import peak_resident_bytes
from learn2reg.io import DataError

log = logging.getLogger(__name__)

GB = 2**30
REFUSE_FRACTION = 1.0  # the estimate above what is free: refused
WARN_FRACTION = 0.8  # above 80 % of what is free: a warning (estimates are within about 25 %, see README)
_CGROUP_V2 = Path("/sys/fs/cgroup")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory")
_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2^63


def format_bytes(n: float) -> str:
    """``1.9 TB``, ``21.3 GB``, ``512 MB`` (powers of 1024, as the project's GB)."""
    for unit, size in (("PB", 2**50), ("TB", 2**40), ("GB", 2**30)):
        if n >= 0.95 * size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**20:.0f} MB"


# ---------------------------------------------------------------------- what is free, what was used


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def _cgroup_stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_free(root_v2: Path = _CGROUP_V2, root_v1: Path = _CGROUP_V1) -> int | None:
    """What the process's memory cgroup still allows (bytes), ``None`` without a limit:
    limit - usage + inactive page cache (reclaimable before the limit kills anything)."""
    for limit_file, usage_file, stat_key in ((root_v2 / "memory.max", root_v2 / "memory.current", "inactive_file"),
                                             (root_v1 / "memory.limit_in_bytes", root_v1 / "memory.usage_in_bytes",
                                              "total_inactive_file")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < _NO_LIMIT:
            return max(0, limit - usage + _cgroup_stat(limit_file.parent / "memory.stat", stat_key))
    return None


def system_free(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes the system can give this process now: ``MemAvailable``, at most what its cgroup allows."""
    available = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:  # not Linux: the physical memory
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    limit = cgroup_free()
    return available if limit is None else min(available, limit)


def resident_bytes() -> int:
    """The process's resident set now (bytes)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return measured_peak(torch.device("cpu"))


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device``: :func:`system_free` for the CPU, ``mem_get_info`` for a GPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return system_free()


def measured_peak(device: torch.device) -> int:
    """The process's peak so far: resident set on the CPU (``learn2reg.faults.peak_resident_bytes``:
    its own, not that of the process it was started from), allocated tensors on a GPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_resident_bytes()


def in_use(device: torch.device) -> int:
    """What the process holds on ``device`` now (the base its estimate adds to)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return resident_bytes()


# ---------------------------------------------------------------------- the decision


def verdict(work: float, free: float) -> str:
    """``"refuse"`` (more than :data:`REFUSE_FRACTION` of ``free``), ``"warn"`` (more than
    :data:`WARN_FRACTION`) or ``"fits"``."""
    if work > REFUSE_FRACTION * free:
        return "refuse"
    if work > WARN_FRACTION * free:
        return "warn"
    return "fits"


@dataclass(frozen=True)
class Need:
    """What a stage's work needs on one device: ``work`` bytes at its peak beyond ``base``, what
    the process holds there already; ``what`` names the largest part (for the message)."""

    device: torch.device
    work: int
    base: int
    what: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def estimate(self) -> int:
        """The estimated peak of the process on the device (what :func:`measured_peak` measures)."""
        return self.base + self.work


@dataclass(frozen=True)
class MemoryCheck:
    """The outcome of :func:`check`: the needs (the stage's device first) and what was free."""

    stage: str
    needs: tuple[Need, ...]
    free: tuple[int, ...]
    verdicts: tuple[str, ...]
    skipped: bool
    seconds: float = 0.0  # how long the estimate took

    def record(self) -> dict[str, Any]:
        """Estimate, measured peak and free memory (GB) of the stage's device; a GPU run adds the
        host's under ``"host"``. Call it when the work is done."""
        out: dict[str, Any] = {}
        for need, free, decided in zip(self.needs, self.free, self.verdicts, strict=True):
            entry = {"device": str(need.device), "estimate_gb": round(need.estimate / GB, 3),
                     "peak_gb": round(measured_peak(need.device) / GB, 3), "work_estimate_gb": round(need.work / GB, 3),
                     "free_gb": round(free / GB, 3), "verdict": decided, "checked": not self.skipped,
                     "check_s": round(self.seconds, 3)}
            if not out:
                out = entry
            else:
                out["host"] = entry
        return out


def _message(stage: str, need: Need, free: int, hints: Sequence[str]) -> str:
    use = "" if not hints else ": use " + (hints[0] if len(hints) == 1 else ", ".join(hints[:-1]) + " or " + hints[-1])
    return (f"{stage}: {need.what} needs about {format_bytes(need.work)} on {need.device}, {format_bytes(free)} is free"
            f"{use}; --skip-memory-check runs it anyway")


def check(stage: str, needs: Sequence[Need], hints: Sequence[str], skip: bool = False,
          free: Sequence[int] | None = None, started: float | None = None) -> MemoryCheck:
    """Compare each need with what its device has free (``free``: given, e.g. in tests, else
    measured). Refused: ``DataError`` with the estimate, what is free and ``hints`` (the options
    that would make it fit), unless ``skip``; close: a warning. Returns the check for the record;
    ``started``: ``time.perf_counter()`` when the estimate began (its duration is logged and recorded)."""
    frees = tuple(free) if free is not None else tuple(free_bytes(n.device) for n in needs)
    verdicts = tuple(verdict(n.work, f) for n, f in zip(needs, frees, strict=True))
    seconds = 0.0 if started is None else time.perf_counter() - started
    for need, room, decided in zip(needs, frees, verdicts, strict=True):
        log.info("%s: memory estimate on %s: %s for %s beyond the %s in use, %s free (%s; estimated in %.2f s)", stage,
                 need.device, format_bytes(need.work), need.what, format_bytes(need.base), format_bytes(room), decided, seconds)
        if decided == "refuse" and not skip:
            raise DataError(_message(stage, need, room, hints))
        if decided != "fits":
            log.warning("%s: %s needs about %s on %s, %s is free%s: it may not fit", stage, need.what,
                        format_bytes(need.work), need.device, format_bytes(room),
                        " (--skip-memory-check: running anyway)" if decided == "refuse" else f" (over {WARN_FRACTION:.0%})")
    return MemoryCheck(stage, tuple(needs), frees, verdicts, skip, seconds)
