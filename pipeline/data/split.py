"""Which pairs training uses: the task's training pairs without those that touch a subject of a
validation pair (``train.exclude_val_subjects``, default true), and the validation pairs.

Shared by the training stage and ``summary`` (no torch here), so that both count the same pairs.
"""

from __future__ import annotations

from learn2reg.io import DataError
from learn2reg.task import Task


def held_out_subjects(task: Task) -> set[str]:
    """Subject ids (``SSSS``) of the validation pairs."""
    return {c.split("_")[0] for p in task.pairs.get("val", ()) for c in (p.fixed, p.moving)}


def split_pairs(task: Task, exclude_val_subjects: bool) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """All training pairs of the task (minus those touching validation subjects) and the val pairs."""
    val = tuple((p.fixed, p.moving) for p in task.pairs.get("val", ()))
    held_out = held_out_subjects(task) if exclude_val_subjects else set()
    train = tuple(
        (p.fixed, p.moving) for p in task.training_pairs()
        if p.fixed.split("_")[0] not in held_out and p.moving.split("_")[0] not in held_out
    )  # fmt: skip
    if not train:
        raise DataError(f"{task.root}: no training pairs left (held-out validation subjects: {sorted(held_out)})")
    return train, val
