"""Devices and process groups: the ``--device`` option (auto | cpu | cuda | cuda:N, refused with
the reason when CUDA is asked for but absent) and the ``torchrun`` helpers (nccl on GPU, gloo on
CPU; rank 0 writes files; rank 0 holds the output folder's writer lock for the whole job)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from learn2reg.errors import DataError, OutputError
from learn2reg.writers import FolderLock
from learn2reg.writers import hold_folder as hold_folder_alone

log = logging.getLogger(__name__)

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1): nccl when
    ``device`` (a ``--device`` value) leads to CUDA, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if backend_kind(device) == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def cuda_problem(requested: str) -> str | None:
    """Why the device ``requested`` (``cuda`` or ``cuda:N``) cannot be used here, or ``None``."""
    if not requested.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            build = f"this torch ({torch.__version__}) is a CPU-only build"
            fix = "use --device cpu (or auto), or install a CUDA build of torch (https://pytorch.org/get-started/locally/)"
        else:
            build = f"this torch ({torch.__version__}, CUDA {torch.version.cuda}) sees no GPU (driver, CUDA_VISIBLE_DEVICES?)"
            fix = "use --device cpu (or auto), or make a GPU visible"
        return f"CUDA is not available: {build}; {fix}"
    index = int(requested.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        return f"there is no {requested}: {count} CUDA device(s) visible (cuda:0 to cuda:{count - 1})"
    return None


def device_arg(text: str) -> str:
    """argparse ``type`` of ``--device``: one of auto | cpu | cuda | cuda:N, and a CUDA device
    must be there (otherwise a usage error, exit 2, saying why)."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid device {text!r} (choose from auto, cpu, cuda, cuda:N)")
    problem = cuda_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` option of every stage that runs torch."""
    parser.add_argument("--device", type=device_arg, default="auto", metavar=DEVICE_CHOICES,
                        help="auto: the GPU when CUDA is available (under torchrun the rank's), else the CPU")


def pick_device(requested: str, info: DistInfo) -> torch.device:
    """``auto`` -> the rank's GPU when CUDA is available, else CPU; ``cuda`` -> the rank's GPU.
    ``DataError`` for a device that is not one of :data:`DEVICE_CHOICES` or a CUDA device that is absent."""
    if not _DEVICE.fullmatch(requested):
        raise DataError(f"device {requested!r}: not one of {DEVICE_CHOICES}")
    problem = cuda_problem(requested)
    if problem:
        raise DataError(f"device {requested!r}: {problem}")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return torch.device("cuda", info.local_rank)
    return torch.device(requested)


def backend_kind(requested: str) -> str:
    """``cuda`` or ``cpu``: the kind of device a ``--device`` value leads to."""
    auto_cuda = requested == "auto" and torch.cuda.is_available()
    return "cuda" if auto_cuda or requested.startswith("cuda") else "cpu"


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_checksums(value: float, info: DistInfo, device: torch.device) -> list[float]:
    """Every rank's ``value`` (on every rank), e.g. a parameter checksum."""
    if not info.enabled:
        return [value]
    t = torch.tensor([value], dtype=torch.float64, device=device)
    out = [torch.zeros_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return [float(o.item()) for o in out]


@contextlib.contextmanager
def hold_folder(folder: Path, info: DistInfo, device: torch.device) -> Iterator[FolderLock]:
    """Be the one writer of ``folder`` (``learn2reg.writers.hold_folder``) for the block; under
    ``torchrun`` the job is that writer: rank 0 takes the lock (recording the job's id) and every
    rank learns whether it got it, so a refusal (``FolderBusy``, or the folder cannot be made)
    ends every rank at once rather than leaving them waiting at the next collective. Yields the
    lock (``created``: this call made the folder; false on the other ranks)."""
    if not info.enabled:
        with hold_folder_alone(folder) as lock:
            yield lock
        return
    with contextlib.ExitStack() as stack:
        problem: Exception | None = None
        lock = FolderLock(folder)
        if info.is_main:
            try:
                lock = stack.enter_context(hold_folder_alone(folder))
            except (DataError, OutputError) as exc:
                problem = exc
        if any_flag(problem is not None, info, device):
            if problem is not None:
                raise problem
            raise DataError(f"{folder}: rank 0 could not take this folder (its message says why); rank {info.rank} stops too")
        yield lock


def shutdown(info: DistInfo, clean: bool | None = None) -> None:
    """Leave the process group (a no-op outside ``torchrun``). After a clean end of this rank
    (``clean``; default: no exception is being raised through the caller's ``finally``) every
    rank first waits for the others at a barrier, so that none tears down its connections while a
    peer still uses them (gloo's threads then abort the peer at exit, "terminate called without an
    active exception", after the work was done). After an error it leaves at once: a peer may be
    dead or waiting in a collective that this rank will never join (torchrun ends the others)."""
    if not (info.enabled and dist.is_initialized()):
        return
    if clean is None:
        clean = sys.exc_info()[0] is None
    try:
        if clean and dist.get_backend() == "nccl":  # on this rank's GPU (else nccl guesses one from the rank)
            dist.barrier(device_ids=[info.local_rank])
        elif clean:
            dist.barrier()
    except RuntimeError as exc:  # a peer that left without the barrier (its own error, reported by it)
        log.warning("rank %d: not every rank reached the end (%s); leaving the process group", info.rank, exc)
    finally:
        dist.destroy_process_group()
