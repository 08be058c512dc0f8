"""``python -m pipeline summary TASK_DIR [...]``: one table describing task folders.

Reads only the task description, the first image's header and the point files (row counts);
no voxel data. "training pairs" counts those ``train`` uses by default (``train.exclude_val_subjects``:
pairs touching a validation subject are held out) of those the task lists. Fields that cannot be read are shown as ``?`` (``validate`` says why).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from learn2reg.io import DataError, read_nifti_header, read_points
from learn2reg.task import POINT_KINDS, Task, load_task
from pipeline.config import TrainConfig
from pipeline.data.split import split_pairs

log = logging.getLogger(__name__)

# summarize() key -> row title in the table, in display order.
FIELDS = {
    "name": "name",
    "layout": "layout",
    "images_train": "images (train)",
    "images_test": "images (test)",
    "shape": "shape (voxels)",
    "spacing": "spacing (mm)",
    "modalities": "modalities",
    "labels": "labels",
    "masks": "masks",
    "keypoints": "keypoints per image",
    "landmarks": "landmarks per image",
    "training_pairs": "training pairs",
    "val_pairs": "val pairs",
    "test_pairs": "test pairs",
    "pairing": "pairing",
}
MAX_CELL = 60  # characters of a table cell before it is cut


def _point_counts(task: Task, kind: str) -> dict[str, int | None]:
    """Rows of each case's point file (None where unreadable); cases without a file are absent."""
    counts: dict[str, int | None] = {}
    for case_id, case in sorted(task.cases.items()):
        path = getattr(case, kind)
        if path is None:
            continue
        try:
            counts[case_id] = len(read_points(path))
        except DataError as exc:
            log.debug("%s", exc)
            counts[case_id] = None
    return counts


def summarize(task: Task) -> dict[str, Any]:
    """Plain values describing ``task`` (keys as in :data:`FIELDS`, plus ``root``).

    ``shape`` is ``tensorImageShape`` (task shape) if given, else the first image's header
    shape; ``spacing`` (mm, array axis order) comes from the first image's header; both
    ``None`` if unreadable. ``keypoints``/``landmarks`` map case id to row count.
    """
    first = next((task.cases[c].image for c in sorted(task.cases) if task.cases[c].image.is_file()), None)
    header = None
    if first is not None:
        try:
            header = read_nifti_header(first)
        except DataError as exc:
            log.debug("%s", exc)
    splits = [case.split for case in task.cases.values()]
    return {
        "name": task.name,
        "root": str(task.root),
        "layout": task.layout,
        "images_train": splits.count("train"),
        "images_test": splits.count("test"),
        "shape": tuple(task.shape) if task.shape else (header.shape if header else None),
        "spacing": header.spacing if header else None,
        "modalities": dict(task.modality),
        "labels": dict(task.labels),
        "masks": sum(case.mask is not None for case in task.cases.values()),
        **{kind: _point_counts(task, kind) for kind in POINT_KINDS},
        "training_pairs": len(task.training_pairs()),
        "training_pairs_used": training_pairs_used(task),
        "val_pairs": len(task.pairs.get("val", ())),
        "test_pairs": len(task.pairs.get("test", ())),
        "pairing": "intra-patient" if task.intra_patient else "inter-patient",
    }


def training_pairs_used(task: Task) -> int:
    """How many training pairs ``train`` uses with the default ``train.exclude_val_subjects``
    (true): those that touch a subject of a validation pair are held out."""
    try:
        return len(split_pairs(task, TrainConfig().exclude_val_subjects)[0])
    except DataError:  # none left
        return 0


def _format_counts(counts: dict[str, int | None]) -> str:
    if not counts:
        return "-"
    known = [n for n in counts.values() if n is not None]
    text = f"{min(known)}" if known and min(known) == max(known) else (f"{min(known)}-{max(known)}" if known else "?")
    unreadable = len(counts) - len(known)
    return f"{text} ({len(counts)} files" + (f", {unreadable} unreadable)" if unreadable else ")")


def _format_value(key: str, value: Any, row: dict[str, Any]) -> str:
    if value is None:
        return "?"
    if key == "shape":
        return "x".join(str(s) for s in value)
    if key == "spacing":
        return "x".join(f"{s:.3g}" for s in value)
    if key == "modalities":
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    if key == "labels":
        return f"{len(value)} ({', '.join(value.values())})" if value else "0"
    if key == "masks":
        n = row["images_train"] + row["images_test"]
        return f"yes ({value}/{n})" if value else "no"
    if key in POINT_KINDS:
        return _format_counts(value)
    if key == "training_pairs" and row.get("training_pairs_used", value) != value:
        return f"{row['training_pairs_used']} of {value} (train holds out {value - row['training_pairs_used']} touching val subjects)"
    return str(value)


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A text table: one line per field, one column per task (rows from :func:`summarize`)."""
    cells = [[title] + [_cut(_format_value(key, row.get(key), row)) for row in rows] for key, title in FIELDS.items()]
    widths = [max(len(line[i]) for line in cells) for i in range(len(rows) + 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 3] + "..."


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_dirs", nargs="+", type=Path, metavar="TASK_DIR", help="task folder (either layout)")


def run(args: argparse.Namespace) -> int:
    """Print the table; a folder that is not a task raises DataError (exit 1)."""
    rows = [summarize(load_task(task_dir)) for task_dir in args.task_dirs]
    print(format_summary(rows))
    return 0
