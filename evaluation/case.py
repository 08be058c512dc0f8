"""One pair's metrics under a rule set: load and check the field, compute what the configuration
asks for, in its order (the worker side of ``evaluation.evaluate``).

Per metric (``tests/fixtures/organisers/SPEC.md`` section 2): SDlogJ and ``num_foldings``
(``evaluation.jacobian``), DSC and HD95 over the configured labels after the nearest-neighbour
label warp (``evaluation.metrics``, ``evaluation.surface``), TRE from CSV points (mm, the moving
image's spacing) or, under the LUMIR rules, from landmark label volumes (centroids, voxels), and
LUMIR's NDV (``evaluation.jacobian``, mask = the moving (2024) or fixed (2025) image > 0). A metric the
rule set does not score is left out; ours (``SDlogJ_true``, ``num_foldings_true``,
``folding_fraction``, ``<HD95>_mm``) are added only under the ``l2r`` rules.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from evaluation import jacobian, metrics, spline, surface
from learn2reg import contract
from learn2reg import rules as rulesets
from learn2reg.eval_config import EvalPair, Method
from learn2reg.io import DataError, load_nifti, read_nifti_header, read_points
from learn2reg.rules import Rules
from learn2reg.segmentation import check_label_map, label_dtype, max_label
from learn2reg.submission import load_field
from learn2reg.task import Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """How to evaluate: ``extras`` adds our corrected metrics (``l2r`` rules only); ``aggregate``
    is ``l2r`` or ``2020`` (``l2r`` rules only); ``tre_method`` is the TRE sampler
    (``metrics.sample_cubic``)."""

    extras: bool = True
    aggregate: str = "l2r"
    tre_method: str = "auto"


@dataclass(frozen=True)
class CaseJob:
    """Everything one worker needs for one pair (picklable)."""

    pair: EvalPair
    field: Path
    fmt: str
    methods: tuple[Method, ...]
    expected_shape: tuple[int, int, int, int]
    masked: bool
    options: Options
    rules: Rules = rulesets.L2R


def preload(jobs: Sequence[CaseJob]) -> None:
    """Import, before the worker processes fork, the heavy modules that the jobs will need:
    ``edt`` for HD95; ``scipy.ndimage`` (~0.2 CPU s) for 2020 fields (upsampling) and TRE from
    points when its sampler is ``full`` or ``crop`` (``auto`` picks the numpy window sampler for a
    few points, and the crop for many, each worker importing scipy then). Imported lazily instead,
    each worker would pay for them; where no metric needs them they are not imported at all.
    ``scipy.spatial`` (~0.3 CPU s) is not preloaded: HD95 takes its k-d tree only where the tree
    saves more than that import (``surface.tree_import_seconds``), which is rare."""
    modules: set[str] = set()
    if any("hd95" in {m.metric for m in job.methods} for job in jobs):
        surface.edt_package()
    for job in jobs:
        metrics_ = {m.metric for m in job.methods if m.metric in job.rules.scored}
        cubic = "tre" in metrics_ and job.rules.tre == "points" and job.options.tre_method in ("full", "crop")
        if cubic or job.fmt == Layout.L2R2020:
            modules.add("scipy.ndimage")
    for name in sorted(modules):
        importlib.import_module(name)


# CPU nanoseconds per grid voxel of one pair (80x96x80 timing pairs, this project's 2-core
# machine): reading the field, then each metric; TRE from points costs next to nothing.
COST_NS = {"field": 18.0, "sdlogj": 16.0, "ndv": 8.0, "dice": 12.0, "hd95": 150.0, "tre": 8.0}


# Beyond COST_NS: inflating a field costs more the less it compresses (isal: ~2.5 ns per stored
# byte on top of the per-voxel part; a real registration's field hardly compresses: 27 ms for
# 7.4 MB, a smooth one 10 ms), and TRE from CSV points costs per point: its sampling window, at
# most ``spline.TRE_RADIUS`` wide, counted here at that width (the windows ``spline.tre_radii``
# picks for real-anatomy TREs hold ~0.4 of it: ~0.06 ms per point on an 80x96x80 grid, measured).
COST_NS_PER_STORED_BYTE = 2.5
COST_NS_PER_WINDOW_VOXEL = 0.2
CSV_BYTES_PER_POINT = 30  # "x,y,z" rows of ~10-digit numbers


def estimated_seconds(jobs: Sequence[CaseJob]) -> float:
    """Rough CPU seconds of evaluating ``jobs`` one after the other (``COST_NS`` and the costs
    above, from the files' sizes): whether a worker pool, whose processes cost ~0.02-0.05 s to
    start and end, can pay for itself."""
    total = 0.0
    for job in jobs:
        scored = {m.metric for m in job.methods if m.metric in job.rules.scored}
        shape = job.expected_shape[:3]
        points = "tre" in scored and job.rules.tre != "centroids"
        per_voxel = COST_NS["field"] + sum(COST_NS.get(m, 0.0) for m in scored if not (m == "tre" and points))
        total += math.prod(shape) * per_voxel + COST_NS_PER_STORED_BYTE * _size(job.field)
        if points:
            window = spline.window_voxels(shape) * 3  # voxels x components
            files = [job.pair.point_files(m.dest or "") for m in job.methods if m.metric == "tre"]
            stored = sum(_size(found[0]) for found in files if found is not None)  # the fixed points' CSVs
            total += stored / CSV_BYTES_PER_POINT * window * COST_NS_PER_WINDOW_VOXEL
    return total * 1e-9


def _size(path: Path | None) -> int:
    """Bytes of a file (0 when it is missing: the run reports that itself)."""
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def evaluate_case(job: CaseJob) -> tuple[str, dict | None, list[str]]:
    """Validate and evaluate one pair -> ``(key, metrics or None, problems)``."""
    try:
        u = load_field(job.field, job.fmt, job.expected_shape, job.rules, keep_float64=True)
        return job.pair.key, case_metrics(job, u), []
    except DataError as exc:
        return job.pair.key, None, [str(exc)]
    except ValueError as exc:  # e.g. a grid too small for the metric: still this pair's problem
        return job.pair.key, None, [f"{job.pair.key}: {exc}"]


def case_metrics(job: CaseJob, u: np.ndarray) -> dict[str, dict[str, Any]]:
    """All configured metrics of one pair the rule set scores, in config order (``num_foldings``
    after SDlogJ), then ours (``l2r`` rules)."""
    pair, rules = job.pair, job.rules
    methods = [m for m in job.methods if m.metric in rules.scored]
    extras = job.options.extras and rules.extras
    found: dict[str, Any] = {}
    ours: dict[str, Any] = {}
    if any(m.metric == "sdlogj" for m in methods):
        stats = jacobian.jacobian_stats(u, _load_mask(pair, u) if job.masked else None, true=extras)
        found["sdlogj"] = stats
        ours.update(SDlogJ_true=stats.sdlogj_true, num_foldings_true=stats.num_foldings_true, folding_fraction=stats.folding_fraction)
    label_methods = [m for m in methods if m.metric in ("dice", "hd95")]
    if label_methods:
        order = contract.memory_order(u)
        fixed, geometry = _load_labels(pair.fixed_label, u.shape[:3], order)
        moving, _ = _load_labels(pair.moving_label, None, order)
        warped = metrics.warp_labels(moving, u)
        cache: dict[tuple[int, ...], metrics.LabelCounts] = {}
        for m in label_methods:
            if m.labels not in cache:
                cache[m.labels] = metrics.label_counts(fixed, moving, warped, m.labels)
            counts = cache[m.labels]
            if m.metric == "dice":
                found[m.name] = metrics.dice(counts)
            else:
                spacings = [(1.0, 1.0, 1.0)] + ([geometry.spacing] if extras else [])
                values = metrics.hd95(fixed, warped, counts, spacings)
                found[m.name] = values[0]
                if extras:
                    ours[f"{m.name}_mm"] = (metrics.nanmean(values[1]), values[1])
    for m in methods:
        if m.metric == "tre":
            found[m.name] = _tre(job, m, u)
        elif m.metric == "ndv":
            image = pair.moving_image if rules.ndv_mask == "moving" else pair.fixed_image
            mask_image, _ = load_nifti(image, dtype=None, copy=False)
            if mask_image.shape != u.shape[:3]:
                raise DataError(f"{image}: image shape {mask_image.shape} differs from the field grid {u.shape[:3]} (NDV mask)")
            found[m.name] = jacobian.ndv(u, mask_image)
    return _assemble(job, found, ours if extras else {})


def _tre(job: CaseJob, m: Method, u: np.ndarray) -> Any:
    """TRE of one method: per point (mm) from CSV points, or LUMIR's centroid error (voxels)."""
    pair = job.pair
    files = pair.point_files(m.dest or "")
    if files is None:
        raise DataError(f"{pair.key}: no {m.dest} files configured for {m.name}")
    fixed_file, moving_file = files
    if job.rules.tre == "centroids":
        fixed, _ = _load_labels(fixed_file, u.shape[:3], contract.memory_order(u), "landmark volume")
        moving, _ = _load_labels(moving_file, None, contract.memory_order(u), "landmark volume")
        return metrics.centroid_tre(fixed, metrics.warp_labels(moving, u))
    fixed_pts, moving_pts = read_points(fixed_file), read_points(moving_file)
    if fixed_pts.shape != moving_pts.shape:
        raise DataError(f"{fixed_file} has {len(fixed_pts)} points but {moving_file} has {len(moving_pts)}")
    spacing = read_nifti_header(pair.moving_image).spacing
    # L2R HEAD samples an .npz field cast to float32, and map_coordinates then returns float32 values
    float32 = job.rules.npz_float32 and job.fmt != Layout.L2R2020 and job.field.name.endswith(".npz")
    return metrics.tre(u, fixed_pts, moving_pts, spacing, job.options.tre_method, np.float32 if float32 else None)


def _assemble(job: CaseJob, found: dict[str, Any], ours: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in job.methods:
        if m.metric not in job.rules.scored:
            continue
        if m.metric == "sdlogj":
            stats = found["sdlogj"]
            out[m.name] = {"mean": stats.sdlogj, "detailed": stats.sdlogj}
            out["num_foldings"] = {"mean": stats.num_foldings, "detailed": stats.num_foldings}
        elif m.metric == "ndv" or (m.metric == "tre" and job.rules.tre == "centroids"):
            out[m.name] = {"mean": found[m.name], "detailed": found[m.name]}  # a scalar "detailed": theirs
        elif m.metric == "tre":
            values = found[m.name]
            out[m.name] = {"mean": float(values.mean()) if values.size else float("nan"), "detailed": [float(v) for v in values]}
        else:
            values = found[m.name]
            out[m.name] = {"mean": metrics.nanmean(values), "detailed": values}
    for name, value in ours.items():
        mean, detailed = value if isinstance(value, tuple) else (value, value)
        out[name] = {"mean": mean, "detailed": detailed}
    return out


def _load_labels(
    path: Path | None, grid: tuple[int, ...] | None, order: Literal["C", "F"] = "F", what: str = "label map"
) -> tuple[np.ndarray, Any]:
    """Integer label map (smallest unsigned dtype) in the memory ``order`` of the field (NIfTI
    data are Fortran-ordered; mixing orders makes every voxel-wise step strided, ~3x slower);
    ``DataError`` for non-integer/negative values or (for the fixed labels) a grid other than
    the field's."""
    if path is None:
        raise DataError(f"{what} not configured")
    arr, geometry = load_nifti(path, dtype=None, copy=False)
    if arr.ndim != 3 or (grid is not None and arr.shape != tuple(grid)):
        raise DataError(f"{path}: {what} shape {arr.shape} differs from the field grid {grid}")
    check_label_map(path, arr)
    return np.asarray(arr, dtype=label_dtype(max_label(arr)), order=order), geometry


def _load_mask(pair: EvalPair, u: np.ndarray) -> np.ndarray | None:
    """Fixed mask for SDlogJ, or ``None`` (with a warning, as the official evaluator) if absent."""
    if pair.fixed_mask is None or not pair.fixed_mask.is_file():
        log.warning("%s: no fixed mask (%s); SDlogJ unmasked", pair.key, pair.fixed_mask)
        return None
    mask, _ = load_nifti(pair.fixed_mask, dtype=None, copy=False)  # stored type: only == 1 is asked
    if mask.shape != u.shape[:3]:
        raise DataError(f"{pair.fixed_mask}: mask shape {mask.shape} differs from the field grid {u.shape[:3]}")
    return mask
