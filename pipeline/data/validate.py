"""``python -m pipeline validate TASK_DIR [...]``: check Learn2Reg task folders, list every problem.

A task folder of either layout (see :mod:`learn2reg.task`) is checked completely before
anything is reported, so one run names every problem at once, each with its file:

* the dataset description: ``{TASK}_dataset.json`` keys (current layout) or ``task.json``
  (2020 layout), paths escaping the folder, unreadable pair lists (``Task.problems``);
* broken symlinks (files or folders); a symlink that leads outside the task folder is read
  through (datasets are linked rather than copied), with a warning that a container must mount
  its target too;
* missing images, labels, masks and point files, pairs naming unknown cases;
* NIfTI files that cannot be read completely (truncated gzip), image shape against the task
  shape, label/mask grid against their image's (shape; spacing, direction and origin within
  ``SPACING_TOL``/``DIRECTION_TOL``/``ORIGIN_TOL``), NaN/Inf image voxels, negative or
  non-integer labels, non-binary masks (the rules of ``learn2reg.segmentation``);
* registration pairs listed twice in a split, or in both the val and the test split (warnings);
* point files (``N x 3`` voxel coordinates): column count, numbers, points outside the image
  extent ``[-0.5, s - 0.5]`` per axis (voxel centres are ``0 .. s-1``), and equal row counts
  for the fixed and moving file of every evaluated pair (the pair's own folder where the task
  has one: OncoReg's ``keypoints01Tr``, :meth:`learn2reg.task.Task.pair_points`);
* LUMIR's landmark volumes (``landmarksVal/*.nii.gz``) as label maps on their image's grid;
  landmark ids of a pair's fixed volume that its moving volume lacks (warning: the organisers'
  TRE is NaN then).

The layouts of 2024-2026 (LUMIR, LUMIR25, ReMIND2Reg, OncoReg) are accepted as shipped: images
of ``imagesVal/`` named only by ``validation`` pairs, training without any annotation and
ground truth for the evaluated images only are normal, not problems. A clean task's OK line is
followed by what it provides per split (:func:`pipeline.data.summary.provides`).

Only one volume is held in memory at a time. Warnings (e.g. no ``tensorImageShape``) are
listed but do not make the check fail.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from learn2reg.io import DataError, Geometry, load_nifti, read_points
from learn2reg.progress import progress as progress_bar
from learn2reg.segmentation import label_problems, mask_problems
from learn2reg.task import POINT_KINDS, SIBLINGS, VOLUME_KIND, Case, Layout, Pair, Task, derived_path, load_task
from pipeline.data.description import WARNING, Problem, check_description, problem_from_text
from pipeline.data.summary import provides

log = logging.getLogger(__name__)

# 2020 layout: optional files whose absence is a warning, and why.
_OPTIONAL_2020 = (
    ("task.json", "image shapes are not checked against a task shape"),
    ("pairs_val.csv", "the task has no validation pairs"),
)
# Half a voxel around the outermost voxel centres: the image's physical extent, in voxels.
GRID_MARGIN = 0.5
# How far a label map's or mask's grid may be from its image's (header rounding, not a new grid).
SPACING_TOL = 1e-4  # mm
DIRECTION_TOL = 1e-5  # direction cosines
ORIGIN_TOL = 1e-4  # mm


# ---------------------------------------------------------------- files on disk


def check_symlinks(root: Path) -> list[Problem]:
    """Symlinks anywhere under ``root`` (files or folders) that lead nowhere (errors) or outside it
    (warnings: they are read through, but a container sees only what is mounted)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            if not path.is_symlink():
                continue
            target = path.resolve()
            if not target.exists():
                found.append(Problem(path, f"broken symlink (target {target} does not exist)"))
            elif not target.is_relative_to(root):
                found.append(Problem(path, f"symlink to {target}, outside the task folder {root}: read through the link; "
                                           "a container must mount its target too", WARNING))  # fmt: skip
    return found


def _load(path: Path, found: list[Problem]) -> tuple[np.ndarray, Geometry] | None:
    """The whole volume in its stored dtype and its grid, or None after recording why it cannot be read."""
    try:
        return load_nifti(path, dtype=None)
    except DataError as exc:
        found.append(problem_from_text(str(exc), path.parent))
        return None


def _valid_shape(shape: tuple[int, ...] | None) -> bool:
    """A task shape worth comparing with (an invalid one is reported once, by the json check)."""
    return shape is not None and len(shape) == 3 and all(s > 0 for s in shape)


def _check_image(path: Path, task: Task, found: list[Problem]) -> tuple[tuple[int, ...], Geometry] | None:
    """Shape against the task's, NaN/Inf voxels; the image's array shape and grid if it could be read."""
    loaded = _load(path, found)
    if loaded is None:
        return None
    data, geometry = loaded
    if data.ndim != 3:
        found.append(Problem(path, f"expected a 3-D image, found shape {data.shape}"))
    elif task.shape is not None and _valid_shape(task.shape) and data.shape != task.shape:
        source = "tensorImageShape" if task.layout != Layout.L2R2020 else "the task shape"
        found.append(Problem(path, f"shape {data.shape} differs from {source} {task.shape}"))
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            found.append(Problem(path, f"{bad} NaN/Inf voxel(s)"))
    return data.shape, geometry


def _check_segmentation(
    path: Path, kind: str, image: tuple[tuple[int, ...], Geometry] | None, found: list[Problem]
) -> np.ndarray | None:
    """Label maps (and landmark volumes): non-negative integers; masks: exactly {0, 1}
    (``learn2reg.segmentation``); all: the image's grid (shape, then spacing, direction and
    origin within tolerance). Returns the landmark ids (non-zero values) of a readable, valid
    landmark volume, else None."""
    loaded = _load(path, found)
    if loaded is None:
        return None
    data, geometry = loaded
    if image is not None:
        found += [Problem(path, m) for m in grid_differences(kind, (data.shape, geometry), image)]
    wrong = mask_problems(data) if kind == "mask" else label_problems(data)
    found += [Problem(path, m) for m in wrong]
    if kind != "landmark volume" or wrong:
        return None
    values = np.unique(data)
    return values[values != 0]


def _vector(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def grid_differences(
    kind: str, grid: tuple[tuple[int, ...], Geometry], image: tuple[tuple[int, ...], Geometry]
) -> list[str]:
    """How the grid (array shape, geometry) of a label map or mask (``kind``) differs from its
    image's, one message per property: the shape, or else spacing (> ``SPACING_TOL`` mm),
    direction cosines (> ``DIRECTION_TOL``) and origin (> ``ORIGIN_TOL`` mm), each with both
    values (LPS, as ``Geometry``)."""
    if grid[0] != image[0]:
        return [f"{kind} shape {grid[0]} differs from its image's shape {image[0]}"]
    found = []
    for name, tol, unit in (("spacing", SPACING_TOL, " mm"), ("direction", DIRECTION_TOL, ""), ("origin", ORIGIN_TOL, " mm")):
        mine, theirs = getattr(grid[1], name), getattr(image[1], name)
        if not np.allclose(mine, theirs, rtol=0.0, atol=tol):
            found.append(
                f"{kind} {name} {_vector(mine)}{unit} differs from its image's {name} {_vector(theirs)}{unit} "
                f"(tolerance {tol:g}{unit})"
            )
    return found


def _check_points(path: Path, image_shape: tuple[int, ...] | None, found: list[Problem]) -> int | None:
    """Row count of a readable point file (``N x 3`` voxel coordinates), None otherwise."""
    try:
        points = read_points(path)
    except DataError as exc:
        found.append(problem_from_text(str(exc), path.parent))
        return None
    if len(points) == 0:
        found.append(Problem(path, "point file has no points", WARNING))
    if image_shape is not None and len(image_shape) == 3 and len(points):
        upper = np.asarray(image_shape, dtype=np.float64) - 1 + GRID_MARGIN
        outside = np.flatnonzero(np.any((points < -GRID_MARGIN) | (points > upper), axis=1))
        if outside.size:
            row = int(outside[0])
            message = f"{outside.size} of {len(points)} point(s) outside the image grid {image_shape}"
            found.append(Problem(path, f"{message} (first: line {row + 1}, {points[row].tolist()})"))
    return len(points)


# What _check_case learnt of each file, for the pair checks: point rows, landmark ids.
Seen = dict[Path, int | np.ndarray]


def _check_case(case: Case, task: Task, found: list[Problem], seen: Seen, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every file of one case; one volume in memory at a time."""
    image = None
    if not case.image.is_file():
        found.append(Problem(case.image, f"image of case {case.case_id} not found" + _named_by(task, case)))
    else:
        image = _check_image(case.image, task, found)
        if image is not None:
            shapes[case.case_id] = image[0]
    for kind in ("label", "mask", *POINT_KINDS, VOLUME_KIND):
        path = getattr(case, kind)
        name = "landmark volume" if kind == VOLUME_KIND else kind
        if path is None:
            continue
        if not path.is_file():
            found.append(Problem(path, f"{name} file of case {case.case_id} not found"))
        elif kind in POINT_KINDS:
            rows = _check_points(path, image[0] if image is not None else None, found)
            if rows is not None:
                seen[path] = rows
        else:
            ids = _check_segmentation(path, name, image, found)
            if kind == VOLUME_KIND and ids is not None:
                seen[path] = ids
                if not ids.size:
                    found.append(Problem(path, "landmark volume holds no landmark (only 0)", WARNING))


def _named_by(task: Task, case: Case) -> str:
    """`` (named by X_dataset.json validation pair F<--M)`` for a case that only a pair names."""
    if case.listed or task.layout == Layout.L2R2020:
        return ""
    for split, pairs in task.pairs.items():
        for pair in pairs:
            if case.case_id in (pair.fixed, pair.moving):
                key = task.pair_keys.get(split, split)
                return f" (named by {_pair_source(task, split).name} {key} pair {pair.key})"
    return ""


def check_unlisted(task: Task) -> list[Problem]:
    """Current layout: a sibling folder (``labelsTr`` ...) with files for some images of a
    folder but not for others (warning, one per folder). Files for exactly the images of the
    evaluated pairs are no gap: that is how ReMIND2Reg and LUMIR ship their ground truth."""
    if task.layout == Layout.L2R2020:  # there, an existing sibling folder makes files required
        return []
    evaluated = {c for split in ("val", "test") for pair in task.pairs.get(split, ()) for c in (pair.fixed, pair.moving)}
    kinds = {**SIBLINGS, VOLUME_KIND: "landmarks"}
    groups: dict[tuple[Path, str], list[Case]] = {}
    for case in task.cases.values():
        for key, kind in kinds.items():
            folder = derived_path(case.image, kind, points=False if key == VOLUME_KIND else None).parent
            groups.setdefault((folder, key), []).append(case)
    found = []
    for (folder, key), cases in sorted(groups.items()):
        missing = sorted(c.case_id for c in cases if getattr(c, key) is None)
        if set(missing) == {c.case_id for c in cases if c.case_id not in evaluated}:
            continue  # ground truth for the evaluated images only
        if folder.is_dir() and 0 < len(missing) < len(cases):
            what = "landmark volume" if key == VOLUME_KIND else key
            found.append(
                Problem(folder, f"no {what} file for {len(missing)} of {len(cases)} images (e.g. {', '.join(missing[:3])})", WARNING)
            )
    return found


def check_pair_only_images(task: Task) -> list[Problem]:
    """Images that registration pairs name but ``training``/``test`` do not list (held-out
    subjects; the official evaluator reads them by path): a warning, once per image, when present.
    Images of ``imagesVal/`` (LUMIR: listed by ``validation`` pairs only) are never listed: no warning."""
    return [
        Problem(case.image, f"named by a registration pair but not listed in {_pair_source(task, 'val').name} "
                            "training/test: used for prediction and evaluation, never for training", WARNING)
        for case_id, case in sorted(task.cases.items())
        if not case.listed and case.split != "val" and case.image.is_file()
    ]


def _pair_source(task: Task, split: str) -> Path:
    if task.layout == Layout.L2R2020:
        return task.root / f"pairs_{split}.csv"
    jsons = sorted(task.root.glob("*_dataset.json"))
    return jsons[0] if jsons else task.root


def check_duplicate_pairs(task: Task) -> list[Problem]:
    """Registration pairs (val, test) listed more than once in a split, or in both splits
    (warnings: the pair would be predicted and evaluated twice, or tuned on and tested on)."""
    found = []
    for split in ("val", "test"):
        counts = Counter(task.pairs.get(split, ()))
        found += [
            Problem(_pair_source(task, split), f"{split} pair {pair.key} is listed {n} times", WARNING)
            for pair, n in counts.items()
            if n > 1
        ]
    test = set(task.pairs.get("test", ()))
    both = [pair for pair in dict.fromkeys(task.pairs.get("val", ())) if pair in test]
    if both:
        # 2020: two csv files; name the test list, where the pair should not be
        where = _pair_source(task, "test")
        found += [Problem(where, f"pair {pair.key} is both a val and a test pair", WARNING) for pair in both]
    return found


def _check_pair(task: Task, pair: Pair, split: str, seen: Seen, shapes: dict[str, tuple[int, ...]]) -> list[Problem]:
    """Known cases, matching fixed/moving point files (row i corresponds to row i), landmark
    volumes on both sides with the fixed ids present in the moving one."""
    unknown = [role for role, cid in (("fixed", pair.fixed), ("moving", pair.moving)) if cid not in task.cases]
    if unknown:
        source = _pair_source(task, split)
        return [
            Problem(source, f"{split} pair {pair.key}: {role} case is not an image of the task (not listed in training/test)")
            for role in unknown
        ]
    found: list[Problem] = []
    for kind in POINT_KINDS:
        f_path, m_path = task.pair_points(pair, kind)
        for path, role in ((f_path, pair.fixed), (m_path, pair.moving)):
            own = getattr(task.cases[role], kind)  # checked with its case already
            if path is not None and path != own and path not in seen and path.is_file():  # the pair's folder (keypoints01Tr)
                rows = _check_points(path, shapes.get(role), found)
                if rows is not None:
                    seen[path] = rows
        found += _one_sided(f_path, m_path, f"{split} pair {pair.key}", f"{kind} file")
        if f_path is not None and m_path is not None:
            n_f, n_m = seen.get(f_path), seen.get(m_path)
            if isinstance(n_f, int) and isinstance(n_m, int) and n_f != n_m:
                found.append(Problem(f_path, f"{split} pair {pair.key}: {n_f} {kind} rows, but moving file {m_path} has {n_m}"))
    return found + _check_volume_pair(task, pair, split, seen)


def _one_sided(f_path: Path | None, m_path: Path | None, where: str, what: str) -> list[Problem]:
    """A warning when only one image of a pair has a ground-truth file of a kind."""
    if f_path is not None and m_path is None:
        return [Problem(f_path, f"{where}: the moving case has no {what}", WARNING)]
    if f_path is None and m_path is not None:
        return [Problem(m_path, f"{where}: the fixed case has no {what}", WARNING)]
    return []


def _check_volume_pair(task: Task, pair: Pair, split: str, seen: Seen) -> list[Problem]:
    """LUMIR's landmark volumes: both images have one, and the moving one has every fixed id."""
    f_path, m_path = task.cases[pair.fixed].landmark_volume, task.cases[pair.moving].landmark_volume
    if f_path is None or m_path is None:
        return _one_sided(f_path, m_path, f"{split} pair {pair.key}", "landmark volume")
    f_ids, m_ids = seen.get(f_path), seen.get(m_path)
    if isinstance(f_ids, np.ndarray) and isinstance(m_ids, np.ndarray):
        absent = np.setdiff1d(f_ids, m_ids)
        if absent.size:
            return [Problem(m_path, f"{split} pair {pair.key}: landmark id(s) {absent[:5].tolist()} of the fixed volume "
                                    f"{f_path.name} are absent here (the organisers' TRE is NaN for this pair)", WARNING)]
    return []


def _pairs_to_check(task: Task) -> Iterable[tuple[str, Pair]]:
    """Evaluated pairs (val, test) and intra-patient training pairs; inter-patient training
    pairs are all subject pairs, whose points do not correspond. A pair listed twice is
    checked once (:func:`check_duplicate_pairs` reports the repetition)."""
    for split in ("val", "test"):
        for pair in dict.fromkeys(task.pairs.get(split, ())):
            yield split, pair
    if task.intra_patient:
        for pair in task.training_pairs():
            yield "training", pair


def validate_task(root: str | Path, progress: bool = False) -> list[Problem]:
    """Every problem of one task folder (errors and warnings), in a stable order.

    ``progress``: a per-case progress bar on stderr when it is a terminal, else a plain
    progress line in the log now and then (:mod:`learn2reg.progress`).
    """
    root = Path(root)
    if not root.is_dir():
        return [Problem(root, "task folder not found")]
    root = root.resolve()
    found = check_description(root)
    try:
        task = load_task(root)
    except DataError as exc:  # e.g. invalid json, already named by check_description
        return list(dict.fromkeys([*found, problem_from_text(str(exc), root)]))
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # malformed json content
        if not any(p.is_error for p in found):
            found.append(Problem(root, f"task description cannot be read ({type(exc).__name__}: {exc})"))
        return found
    found += [problem_from_text(text, root) for text in task.problems]
    named = {str(p.path) for p in found}  # a file named already keeps its first problem
    found += [p for p in check_symlinks(root) if str(p.path) not in named]
    if task.layout == Layout.L2R2020:
        found += [Problem(root / name, f"not found: {why}", WARNING) for name, why in _OPTIONAL_2020 if not (root / name).exists()]
    seen: Seen = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for case_id in progress_bar(sorted(task.cases), desc=f"validate {task.name}", unit="case", enabled=progress, logger=log):
        log.debug("checking case %s", case_id)
        _check_case(task.cases[case_id], task, found, seen, shapes)
    found += check_unlisted(task)
    found += check_pair_only_images(task)
    found += check_duplicate_pairs(task)
    for split, pair in _pairs_to_check(task):
        found += _check_pair(task, pair, split, seen, shapes)
    return found


# ---------------------------------------------------------------- CLI


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_dirs", nargs="+", type=Path, metavar="TASK_DIR", help="task folder (either layout)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (or progress lines in a log)")


def run(args: argparse.Namespace) -> int:
    """Problems go to stderr, one per line; one OK line per clean task on stdout, followed by
    what the task provides per split (indented; :func:`pipeline.data.summary.provides`).
    Exit 1 if any task has an error (warnings alone do not fail)."""
    failed = 0
    for task_dir in args.task_dirs:
        problems = validate_task(task_dir, progress=not args.no_progress)
        for problem in problems:
            print(problem, file=sys.stderr)
        errors = sum(p.is_error for p in problems)
        warnings = len(problems) - errors
        if errors:
            failed += 1
            print(f"FAILED {task_dir}: {errors} problem(s), {warnings} warning(s)", file=sys.stderr)
        else:
            print(f"OK {task_dir}" + (f" ({warnings} warning(s))" if warnings else ""))
            print("\n".join(f"  {line}" for line in provides(load_task(task_dir))))
    return 1 if failed else 0
