"""The report stage: per-pair visual reports of any submission, generated from files only.

``python -m pipeline report --data TASK --submission SUB [--pairs KEY ...] [--split val|test]
[--out DIR] [--overwrite]`` (also ``python -m evaluation.pair_reports``) reads, for every pair, the
fixed and moving images, their label maps and point files (landmarks, else keypoints) when the
task has them for both images, and the submitted field (either challenge format, as the
evaluator reads it), and writes atomically:

* ``DIR/{fixed}_{moving}.html``: the self-contained page (``evaluation.pair_reports.page``), with
  links to the index and to the previous and next pair;
* ``DIR/{fixed}_{moving}.json``: its numbers (Dice per label and TRE per point before/after, folded voxels);
* ``DIR/index.html`` (+ ``index.json``): every report in DIR, linked, with its numbers.

Reports already in DIR are refused unless ``--overwrite`` (the command names them).

The default DIR is ``SUB/report`` (:func:`report_path`): ``predict --report`` writes there too,
and the leaderboard links to the ``index.html`` it finds there (:func:`report_links_html`).
A pair that cannot be reported (missing field, bad shape, unreadable file) is named with the
reason on stderr; the others are still written and the command exits 1.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from evaluation.pair_reports import markup
from evaluation.pair_reports import page as pair_report
from evaluation.pair_reports.page import Nav, PairInputs, PairReport
from learn2reg import rules as rulesets
from learn2reg.cli import add_overwrite_argument, refuse_existing, run_cli
from learn2reg.io import (
    DataError,
    Geometry,
    atomic_open,
    check_output_path,
    load_nifti,
    read_json,
    read_points,
    write_json,
)
from learn2reg.progress import progress
from learn2reg.segmentation import check_label_map, label_dtype, max_label
from learn2reg.submission import detect_format, field_folder, load_field, locate_fields
from learn2reg.task import Layout, Pair, Task, load_task

log = logging.getLogger(__name__)

REPORT_DIR = "report"
INDEX = "index.html"


def report_name(fixed: str, moving: str) -> str:
    """File name of a pair's report: ``{fixed}_{moving}.html`` (case ids ``SSSS_MMMM``)."""
    return f"{fixed}_{moving}.html"


def report_path(submission: str | Path, fixed: str, moving: str) -> Path:
    """Where a submission's report of a pair lives: ``SUB/report/{fixed}_{moving}.html``."""
    return Path(submission) / REPORT_DIR / report_name(fixed, moving)


# ----------------------------------------------------------------------------- reading


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """A 3-D image without NaN/Inf (``DataError`` naming the file otherwise)."""
    image, geometry = load_nifti(path)
    if image.ndim != 3:
        raise DataError(f"{path}: expected a 3-D image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise DataError(f"{path}: contains NaN or Inf voxels")
    return image, geometry


def read_labels(path: str | Path, shape: Sequence[int]) -> np.ndarray:
    """An integer label map on its image's grid ``shape`` (``DataError`` naming the file otherwise)."""
    labels, _ = load_nifti(path, dtype=None)
    if labels.shape != tuple(shape):
        raise DataError(f"{path}: label map shape {labels.shape} differs from its image {tuple(shape)}")
    check_label_map(path, labels)
    return labels.astype(label_dtype(max_label(labels)), copy=False)


def inputs_from_files(
    fixed: Path, moving: Path, field: Path, fixed_label: Path | None = None, moving_label: Path | None = None,
    fmt: str = Layout.L2R, points: tuple[Path, Path] | None = None, point_kind: str = "landmarks",
) -> PairInputs:
    """A pair's report inputs from its files; the field in challenge format ``fmt`` on the fixed grid;
    ``points``: the fixed and the moving point file (``N x 3`` voxels each, rows corresponding)."""
    fixed_img, geometry = read_image(fixed)
    moving_img, moving_geometry = read_image(moving)
    u = load_field(Path(field), fmt, (*fixed_img.shape, 3))
    if (fixed_label is None) != (moving_label is None):
        raise DataError(f"{fixed_label or moving_label}: Dice and label contours need both label maps (fixed and moving)")
    labels: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    if fixed_label is not None and moving_label is not None:
        labels = (read_labels(fixed_label, fixed_img.shape), read_labels(moving_label, moving_img.shape))
    fixed_pts = moving_pts = None
    if points is not None:
        fixed_pts, moving_pts = read_points(points[0]), read_points(points[1])
        if fixed_pts.shape != moving_pts.shape:
            raise DataError(f"{points[0]} has {len(fixed_pts)} points but {points[1]} has {len(moving_pts)}")
    return PairInputs(fixed_img, moving_img, u, *labels, spacing=geometry.spacing, fixed_points=fixed_pts,
                      moving_points=moving_pts, moving_spacing=moving_geometry.spacing, point_kind=point_kind)


# ----------------------------------------------------------------------------- writing


def write_report(path: str | Path, report: PairReport, nav: Nav | None = None) -> Path:
    """The page (``nav``: its links to the index and the neighbouring pairs) and its numbers
    (``.json`` beside it), each written atomically."""
    path = Path(path)
    with atomic_open(path) as fh:
        fh.write(pair_report.render_html(report, nav))
    write_json(path.with_suffix(".json"), {**report.summary(), "report": path.name})
    return path


def report_from_files(
    out: str | Path, fixed: Path, moving: Path, field: Path, fixed_label: Path | None = None,
    moving_label: Path | None = None, names: Mapping[int, str] | None = None, title: str | None = None,
    fmt: str = Layout.L2R, points: tuple[Path, Path] | None = None, point_kind: str = "landmarks", nav: Nav | None = None,
) -> PairReport:
    """Read a pair's files, build its report and write it to ``out`` (``.html``); returns it."""
    inputs = inputs_from_files(fixed, moving, field, fixed_label, moving_label, fmt, points, point_kind)
    try:
        report = pair_report.build_report(inputs, title or f"{Path(fixed).name} <-- {Path(moving).name}", names)
    except ValueError as exc:  # every input was checked on reading: a last guard, still naming the field
        raise DataError(f"{field}: {exc}") from exc
    write_report(out, report, nav)
    return report


def pair_points(task: Task, pair: Pair) -> tuple[tuple[Path, Path] | None, str]:
    """The point files of a pair, landmarks before keypoints, when both images have them."""
    fixed, moving = task.case(pair.fixed), task.case(pair.moving)
    for kind in ("landmarks", "keypoints"):
        f, m = getattr(fixed, kind), getattr(moving, kind)
        if f is not None and m is not None and f.is_file() and m.is_file():
            return (f, m), kind
    return None, ""


def pair_nav(pair: Pair, order: Sequence[Pair]) -> Nav:
    """Links of a pair's page among the pages of ``order`` (same folder, beside ``index.html``)."""
    keys = [p.key for p in order]
    i = keys.index(pair.key) if pair.key in keys else -1
    prev = order[i - 1] if i > 0 else None
    after = order[i + 1] if 0 <= i < len(order) - 1 else None
    return Nav(INDEX, report_name(prev.fixed, prev.moving) if prev else None, report_name(after.fixed, after.moving) if after else None,
               prev.key if prev else "", after.key if after else "", i + 1, len(order) if i >= 0 else 0)


def task_pair_report(task: Task, pair: Pair, submission: Path, out_dir: Path | None = None, fmt: str = "auto",
                     order: Sequence[Pair] | None = None) -> PairReport:
    """The report of one pair of ``task`` from the field in ``submission`` (either format),
    written to ``out_dir`` (default ``submission/report``) as :func:`report_name`, linked to its
    neighbours in ``order`` (default: the pairs of its split)."""
    fmt = detect_format(submission) if fmt == "auto" else fmt
    rules = rulesets.get(task.rules) if fmt == Layout.L2R else rulesets.L2R  # the names its rule set reads (LUMIR's short ones)
    found, problems = locate_fields(field_folder(submission, fmt, task.root.name), (pair,), fmt, rules)  # type: ignore[arg-type]
    if problems:
        raise DataError(problems[0])
    fixed, moving = task.case(pair.fixed), task.case(pair.moving)
    with_labels = fixed.label is not None and moving.label is not None
    out = (out_dir or submission / REPORT_DIR) / report_name(pair.fixed, pair.moving)
    if order is None:
        order = next((pairs for pairs in task.pairs.values() if pair in pairs), (pair,))
    points, kind = pair_points(task, pair)
    return report_from_files(out, fixed.image, moving.image, found[pair.key], fixed.label if with_labels else None,
                             moving.label if with_labels else None, task.labels, pair.key, fmt, points, kind,
                             pair_nav(pair, order))


def write_index(folder: Path, task: str = "") -> Path:
    """``folder/index.html`` (and ``index.json``): every report in ``folder`` that has its
    numbers beside it, linked, with mean Dice and mean TRE before/after (where the task has them)
    and folded voxels."""
    entries = []
    for numbers in sorted(folder.glob("*.json")):
        if numbers.name == "index.json":
            continue
        summary = read_json(numbers)
        if isinstance(summary, dict) and (folder / str(summary.get("report", ""))).is_file():
            entries.append(summary)
    fmt = markup.fmt
    with_tre = any("tre_after" in e for e in entries)

    def tre(e: dict) -> str:
        return f"<td>{fmt(_num(e.get('tre_before')), 2)}</td><td>{fmt(_num(e.get('tre_after')), 2)}</td>" if with_tre else ""

    rows = "".join(
        f'<tr><td><a href="{html.escape(e["report"])}">{html.escape(str(e.get("pair", e["report"])))}</a></td>'
        f"<td>{fmt(_num(e.get('dice_before')))}</td><td>{fmt(_num(e.get('dice_after')))}</td>{tre(e)}"
        f"<td>{int(e.get('folded_voxels', 0))}</td></tr>\n"
        for e in entries
    )
    title = f"Registration reports{': ' + task if task else ''}"
    tre_heads = "<th>mean TRE before (mm)</th><th>mean TRE after (mm)</th>" if with_tre else ""
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{markup.CSS}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n<table>\n<thead><tr><th>pair</th>"
            f"<th>mean Dice before</th><th>mean Dice after</th>{tre_heads}<th>folded voxels</th></tr></thead>\n<tbody>\n{rows}"
            "</tbody>\n</table>\n</body>\n</html>\n")
    with atomic_open(folder / INDEX) as fh:
        fh.write(page)
    write_json(folder / "index.json", {"task": task, "reports": [e["report"] for e in entries]})
    return folder / INDEX


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------- the stage


def select_pairs(task: Task, split: str, wanted: Sequence[str] | None) -> tuple[Pair, ...]:
    """The pairs of ``split``, or those named in ``wanted`` (``FIXED<--MOVING`` or ``FIXED,MOVING``
    case ids; ``DataError`` listing the names that are no pair of the split)."""
    pairs = task.pairs.get(split, ())
    if not wanted:
        if not pairs:
            raise DataError(f"{task.root}: the task has no {split} pairs")
        return pairs
    by_key = {p.key: p for p in pairs}
    chosen, unknown = [], []
    for name in wanted:
        key = name if "<--" in name else name.replace(",", "<--")
        if key in by_key:
            chosen.append(by_key[key])
        else:
            unknown.append(name)
    if unknown:
        raise DataError(f"{task.root}: no {split} pair {', '.join(unknown)} (pairs: {', '.join(by_key) or 'none'})")
    return tuple(chosen)


def report_submission(data_dir: Path, submission: Path, out_dir: Path | None = None, pairs: Sequence[str] | None = None,
                      split: str = "val", overwrite: bool = False) -> int:
    """Reports of the chosen pairs and the index; returns the exit code (1 if a pair failed).
    Pages of the chosen pairs already in ``out_dir`` are refused unless ``overwrite``; progress
    is a bar on a terminal and plain lines in a log (:mod:`learn2reg.progress`)."""
    if not Path(submission).is_dir():
        raise DataError(f"{submission}: submission folder not found")
    out_dir = check_output_path(out_dir or Path(submission) / REPORT_DIR, folder=True)
    task = load_task(data_dir)
    chosen = select_pairs(task, split, pairs)
    refuse_existing([out_dir / report_name(p.fixed, p.moving) for p in chosen], overwrite)
    fmt = detect_format(Path(submission))
    problems = []
    for pair in progress(chosen, desc=f"report {task.name}", unit="pair", logger=log):
        try:
            task_pair_report(task, pair, Path(submission), out_dir, fmt, chosen)
        except DataError as exc:
            problems.append(f"{pair.key}: {exc}")
    if out_dir.is_dir():
        write_index(out_dir, task.name)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if out_dir.is_dir():
        print(f"{len(chosen) - len(problems)} report(s) in {out_dir}; open {out_dir / INDEX}")
    return 1 if problems else 0


def submission_format(task: Task) -> str:
    """The challenge format a task's prediction writes (``predict``): 2020 or current."""
    return Layout.L2R2020 if task.layout == Layout.L2R2020 else Layout.L2R


# ----------------------------------------------------------------------------- leaderboard links


def find_indexes(root: Path) -> dict[str, Path]:
    """Task name -> report index under a method's submissions: ``root/report/`` or ``root/*/report/``."""
    found: dict[str, Path] = {}
    for numbers in [root / REPORT_DIR / "index.json", *sorted(root.glob(f"*/{REPORT_DIR}/index.json"))]:
        if numbers.is_file() and (numbers.parent / INDEX).is_file():
            meta = read_json(numbers)
            task = (meta.get("task") if isinstance(meta, dict) else None) or numbers.parent.parent.name
            found.setdefault(str(task), numbers.parent / INDEX)
    return found


def report_links_html(reports: Mapping[str, Path], out_dir: Path) -> str:
    """A ``<section id="pair-reports">`` linking, per method and task, the report index found
    under the method's submission folder (``reports``: method -> folder), relative to the page
    in ``out_dir``; empty when none is found."""
    rows = []
    for method, root in reports.items():
        indexes = find_indexes(Path(root))
        for task, index in indexes.items():
            href = Path(os.path.relpath(index.resolve(), Path(out_dir).resolve())).as_posix()
            rows.append(f'<tr><td>{html.escape(method)}</td><td><a href="{html.escape(href)}">{html.escape(task)}</a></td></tr>')
        if not indexes:
            log.warning("%s: no per-pair reports (%s/index.html) for method %s", root, REPORT_DIR, method)
    if not rows:
        return ""
    return ('<section id="pair-reports">\n<h2>Per-pair reports</h2>\n<table>\n<thead><tr><th>Method</th><th>Task</th></tr>'
            "</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n</section>\n")


def add_report_links(page: str, links: str) -> str:
    """``page`` with the links section inserted before ``</body>`` (unchanged without links)."""
    if not links:
        return page
    head, sep, tail = page.rpartition("</body>")
    return f"{head}{links}{sep}{tail}" if sep else page + links


# ----------------------------------------------------------------------------- command line


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="task folder (either layout)")
    parser.add_argument("--submission", type=Path, required=True, help="the task's submission folder (fields)")
    parser.add_argument("--pairs", nargs="+", default=None, metavar="FIXED<--MOVING",
                        help="pairs to report (FIXED<--MOVING or FIXED,MOVING case ids; default every pair of --split)")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="the pairs reported when --pairs is not given")
    parser.add_argument("--out", type=Path, default=None, help=f"report folder (default SUB/{REPORT_DIR})")
    add_overwrite_argument(parser, "reports of the same pairs already in the report folder")


def run(args: argparse.Namespace) -> int:
    return report_submission(args.data, args.submission, args.out, args.pairs, args.split, args.overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m evaluation.pair_reports``."""
    return run_cli("python -m evaluation.pair_reports", __doc__.splitlines()[0], build_parser, run, argv)

