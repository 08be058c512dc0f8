"""The run folder of a training: refused before anything is written when it cannot be used.

A new run needs a folder without a run in it; ``--resume`` needs the run's last checkpoint and
the same resolved configuration and training/validation pairs as the run was started with
(a resumed run must be the same experiment). Every check happens before the first write, so a
refused call leaves the folder exactly as it was; a fresh folder that a failed start created is
removed again (:func:`fresh_run_dir`). The space the checkpoints need is checked before the
first step (:func:`check_checkpoint_space`); a write that fails later says which checkpoint is
kept and how to resume (:func:`resume_advice`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from learn2reg.faults import require_space
from learn2reg.io import DataError, check_output_path, read_json
from learn2reg.task import Task
from pipeline.config import RunConfig, differences, with_later_keys


def task_problems(task: Task) -> None:
    """Training reads the image entries and the validation pairs: any of them that cannot be
    read is an error naming the description file, the entry and the path (all at once)."""
    problems = [*task.entry_problems, *task.split_problems("val")]
    if problems:
        raise DataError(f"{task.root}: {len(problems)} problem(s) in the task description:\n  " + "\n  ".join(problems))


def checkpoint_to_resume(run_dir: Path, resume: bool) -> Path | None:
    """Refuse to overwrite a run; return the checkpoint to resume from (if resuming)."""
    check_output_path(run_dir, folder=True)
    last = run_dir / "checkpoints" / "last.pt"
    if (run_dir / "imported.json").exists():
        raise DataError(f"{run_dir}: holds imported weights (imported.json), not a training run: there is nothing to "
                        "resume or overwrite; predict with it (--run), or train into another --out")
    if resume:
        if not last.exists():
            raise DataError(f"{last}: nothing to resume (no checkpoint in {run_dir})")
        return last
    if last.exists():
        raise DataError(f"{run_dir}: already holds a training run; pass --resume to continue it or choose another --out")
    return None


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like trees (lists compared whole)."""
    return [f"{key}: run {was!r}, now {now!r}" for key, was, now in differences(old, new, where)]


def check_resume(run_dir: Path, cfg: RunConfig, description: dict[str, Any]) -> None:
    """A resumed run keeps its configuration and its pairs (``description``: ``train_pairs`` and
    ``val_pairs`` as lists of [fixed, moving]): ``DataError`` listing each difference from the
    files the run was started with (nothing is rewritten)."""
    found = []
    config_path = run_dir / "config.json"
    if config_path.is_file():
        # keys added since the run started count with their defaults (pipeline.config.LATER_KEYS)
        found += [f"{config_path}: {d}" for d in _differences(with_later_keys(read_json(config_path)), cfg.to_dict())]
    dataset_path = run_dir / "dataset.json"
    if dataset_path.is_file():
        old = read_json(dataset_path)
        for key in ("train_pairs", "val_pairs"):
            found += [f"{dataset_path}: {d}" for d in _differences(old.get(key), description.get(key), key)]
    if found:
        raise DataError(f"{run_dir}: --resume with another configuration or other pairs than the run's:\n  " + "\n  ".join(found)
                        + "\n  (start a new run with another --out to change them)")


@contextlib.contextmanager
def fresh_run_dir(run_dir: Path, created: bool | None = None) -> Iterator[None]:
    """Remove ``run_dir`` again if it did not exist and the block fails (e.g. a label map that
    preprocessing refuses, after the cache was started): a refused start leaves nothing behind.
    ``created``: whether this process made the folder, when its writer lock did
    (``learn2reg.writers.FolderLock.created``: only the process whose ``mkdir`` made it removes
    it); by default, whether it is absent now."""
    created = not run_dir.exists() if created is None else created
    try:
        yield
    except BaseException:
        if created and run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


CHECKPOINTS = ("best.pt", "last.pt")


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About the size of one checkpoint: the weights and Adam's two moments, plus 64 KiB for the rest."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters()) + (1 << 16)


def check_checkpoint_space(run_dir: Path, model: torch.nn.Module) -> None:
    """Refuse before the first step (``OutputError``) when the run folder's file system cannot hold
    the checkpoints: ``best.pt`` and ``last.pt`` where missing, and one more while one is replaced."""
    missing = sum(not (run_dir / "checkpoints" / name).exists() for name in CHECKPOINTS)
    require_space(run_dir, (1 + missing) * checkpoint_bytes(model), "the checkpoints (best.pt, last.pt and one being replaced)")


def resume_advice(run_dir: Path, saved_step: int | None) -> str:
    """What a failed write of a training leaves safe and how to go on (``saved_step``: the global
    step of the ``last.pt`` this process wrote, if any)."""
    last = run_dir / "checkpoints" / "last.pt"
    if saved_step is not None:
        return (f"{last} (global step {saved_step}) is complete and kept; free space, then rerun the same command "
                "with --resume to continue from it")
    if last.exists():
        return f"{last} (from before this call) is complete and kept; free space, then rerun with --resume to continue from it"
    return "no checkpoint was written yet; free space (or choose another --out), then rerun the same command"
