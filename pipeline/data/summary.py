"""``python -m pipeline summary TASK_DIR [...]``: one table describing task folders.

Reads only the task description, the first image's header and the point files (row counts);
no voxel data. Fields that cannot be read are shown as ``?`` (``validate`` says why).
:func:`provides` says what a task gives per split (``validate`` prints it under a clean task's
OK line): the 2024-2026 tasks train without any annotation and keep their ground truth for the
evaluated images, which is how they ship, not a problem.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from learn2reg.io import DataError, read_nifti_header, read_points
from learn2reg.task import POINT_KINDS, VOLUME_KIND, Pair, Task, load_task

log = logging.getLogger(__name__)

# summarize() key -> row title in the table, in display order.
FIELDS = {
    "name": "name",
    "layout": "layout",
    "rules": "rule set",
    "images_train": "images (train)",
    "images_val": "images (val)",
    "images_test": "images (test)",
    "shape": "shape (voxels)",
    "spacing": "spacing (mm)",
    "modalities": "modalities",
    "labels": "labels",
    "masks": "masks",
    "keypoints": "keypoints per image",
    "landmarks": "landmarks per image",
    "landmark_volumes": "landmark volumes",
    "train_provides": "training provides",
    "val_provides": "val provides",
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
        "images_val": splits.count("val"),
        "images_test": splits.count("test"),
        "shape": tuple(task.shape) if task.shape else (header.shape if header else None),
        "spacing": header.spacing if header else None,
        "modalities": dict(task.modality),
        "labels": dict(task.labels),
        "masks": sum(case.mask is not None for case in task.cases.values()),
        **{kind: _point_counts(task, kind) for kind in POINT_KINDS},
        "training_pairs": len(task.training_pairs()),
        "val_pairs": len(task.pairs.get("val", ())),
        "test_pairs": len(task.pairs.get("test", ())),
        "pairing": "intra-patient" if task.intra_patient else "inter-patient",
        "rules": task.rules,
        "landmark_volumes": sum(case.landmark_volume is not None for case in task.cases.values()),
        "train_provides": ", ".join(_provided(task, task.training, task.training_pairs() if task.intra_patient else ())) or "image only",
        "val_provides": ", ".join(_provided(task, _images(task.pairs.get("val", ())), task.pairs.get("val", ()))) or "nothing",
    }


# Case field -> how it is named in the descriptions
_KIND_NAMES = {"label": "labels", "mask": "masks", "keypoints": "keypoints", "landmarks": "landmarks", VOLUME_KIND: "landmark volumes"}


def _images(pairs: tuple[Pair, ...]) -> tuple[str, ...]:
    """The case ids of the pairs' images, in order of appearance."""
    return tuple(dict.fromkeys(c for pair in pairs for c in (pair.fixed, pair.moving)))


def _counts(task: Task, images: tuple[str, ...], pairs: tuple[Pair, ...]) -> dict[str, tuple[int, int]]:
    """What the images (labels, masks, landmark volumes: per image) and the pairs (points: per
    pair, from the pair's own folder where it has one; per image without pairs) provide:
    kind -> (count, out of)."""
    known = [task.cases[c] for c in images if c in task.cases]
    counts = {kind: (sum(getattr(c, kind) is not None for c in known), len(known)) for kind in ("label", "mask", VOLUME_KIND)}
    usable = [pair for pair in pairs if pair.fixed in task.cases and pair.moving in task.cases]
    for kind in POINT_KINDS:
        if pairs:
            counts[kind] = (sum(all(p is not None for p in task.pair_points(pair, kind)) for pair in usable), len(pairs))
        else:
            counts[kind] = (sum(getattr(c, kind) is not None for c in known), len(known))
    return counts


def _provided(task: Task, images: tuple[str, ...], pairs: tuple[Pair, ...]) -> list[str]:
    """The names of the kinds of files the images / pairs provide at all."""
    return [_KIND_NAMES[kind] for kind, (n, _) in _counts(task, images, pairs).items() if n]


def provides(task: Task) -> list[str]:
    """What the task provides, one line per split, e.g. ``training: 10 images, image only: no
    labels, masks or points (normal for lumir25: unsupervised training)`` and ``validation: 6
    pairs ('validation') of 7 images: labels 7/7 images, landmark volumes 7/7 images``."""
    rules = task.rules
    lines = [f"rule set: {rules}" + ("" if rules == "l2r" else f" (images {', '.join(task.image_prefixes)}_SSSS_MMMM)")]
    evaluated = set(_images((*task.pairs.get("val", ()), *task.pairs.get("test", ()))))
    train_only = tuple(c for c in task.training if c not in evaluated) or task.training
    also = len(task.training) - len(train_only)
    pairs = task.training_pairs() if task.intra_patient else ()  # intra-patient: points per training pair
    given = [f"{_KIND_NAMES[k]} {n}/{of}" + (" pairs" if pairs and k in POINT_KINDS else "")
             for k, (n, of) in _counts(task, train_only, pairs).items() if n]
    if given:
        text = ", ".join(given)
    else:
        text = "image only: no labels, masks or points (" + ("training is unsupervised)" if rules == "l2r" else f"normal for {rules}: unsupervised training)")
    count = f"{len(train_only)} images" + (f" (and {also} of the evaluated pairs)" if also else "")
    lines.append(f"training: {count}, {text}; {len(task.training_pairs())} training pairs ({'intra' if task.intra_patient else 'inter'}-patient)")
    for split, title in (("val", "validation"), ("test", "test")):
        pairs = task.pairs.get(split, ())
        if not pairs:
            continue
        images = _images(pairs)
        folders = sorted({task.cases[c].image.parent.name for c in images if c in task.cases})
        found = [
            f"{_KIND_NAMES[k]} {n}/{of} {'pairs' if k in POINT_KINDS else 'images'}"
            for k, (n, of) in _counts(task, images, pairs).items() if n
        ]
        source = f"'{task.pair_keys[split]}'" if split in task.pair_keys else f"pairs_{split}.csv"
        lines.append(f"{title}: {len(pairs)} pair{'s' if len(pairs) != 1 else ''} ({source}) of {len(images)} images ({', '.join(folders)}): "
                     + (", ".join(found) if found else "no ground truth (labels, masks or points)"))
    return lines


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
        n = row["images_train"] + row["images_val"] + row["images_test"]
        return f"yes ({value}/{n})" if value else "no"
    if key in POINT_KINDS:
        return _format_counts(value)
    if key == "landmark_volumes":
        return f"yes ({value}/{row['images_train'] + row['images_val'] + row['images_test']})" if value else "no"
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
