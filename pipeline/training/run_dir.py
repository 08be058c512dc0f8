"""The run folder of a training: refused before anything is written when it cannot be used.

A new run needs a folder without a run in it; ``--resume`` needs the run's last checkpoint and
the same resolved configuration and training/validation pairs as the run was started with
(a resumed run must be the same experiment). Every check happens before the first write, so a
refused call leaves the folder exactly as it was; a fresh folder that a failed start created is
removed again (:func:`fresh_run_dir`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
def fresh_run_dir(run_dir: Path) -> Iterator[None]:
    """Remove ``run_dir`` again if it did not exist and the block fails (e.g. a label map that
    preprocessing refuses, after the cache was started): a refused start leaves nothing behind."""
    created = not run_dir.exists()
    try:
        yield
    except BaseException:
        if created and run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
