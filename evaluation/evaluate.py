"""The evaluator: ``python -m evaluation.evaluate -i DISP_DIR -d DATA_DIR [-c CONFIG.json] -o OUT.json``.

A drop-in for the official Learn2Reg ``evaluation.py`` (same flags, same output schema:
``{name, aggregates: {metric: {mean, std, "30"}}, cases: {"SSSS_MMMM<--SSSS_MMMM": {metric:
{mean, detailed}}}, eval_version}``), with the official numbers by default and, clearly named,
ours: ``SDlogJ_true``, ``num_foldings_true``, ``folding_fraction``, ``<HD95 name>_mm`` and, when
the submission carries a ``runtimes.json`` manifest, ``runtime`` / ``runtime_network`` (seconds).

Flow: resolve the config (file, or derived from the task), find every field and ground-truth file
(all missing files reported at once), then evaluate the pairs in a worker pool; each worker
validates its field (shape, dtype, NaN/Inf) before any metric. Any problem -> ``DataError`` listing
all of them and no output file (it is written atomically at the very end).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from evaluation import jacobian, metrics
from evaluation.pool import run_pool
from learn2reg import contract
from learn2reg.cli import run_cli
from learn2reg.eval_config import EvalConfig, EvalPair, Method, derive_config, read_config
from learn2reg.io import DataError, check_output_path, load_nifti, read_nifti_header, read_points, write_json
from learn2reg.progress import progress as progress_bar
from learn2reg.segmentation import check_label_map, label_dtype, max_label
from learn2reg.submission import (
    MANIFEST_NAME,
    Manifest,
    detect_format,
    field_folder,
    load_field,
    load_manifest,
    locate_fields,
)
from learn2reg.task import Layout

log = logging.getLogger(__name__)
EVAL_VERSION = "2.0"


@dataclass(frozen=True)
class Options:
    """How to evaluate: ``extras`` adds our corrected metrics; ``aggregate`` is ``l2r`` or
    ``2020``; ``tre_method`` is the TRE sampler (``metrics.sample_cubic``)."""

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


def evaluate(
    disp_dir: str | Path,
    data_dir: str | Path,
    config: EvalConfig | str | Path | None = None,
    *,
    split: str = "val",
    fmt: str = "auto",
    workers: int | None = None,
    options: Options | None = None,
    task_folder: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a submission folder against a task; returns the official-schema result dict.

    ``config``: an :class:`EvalConfig`, the path of an official config json, or ``None`` to
    derive it from the task in ``data_dir`` (``split`` pairs). ``fmt``: ``auto``, ``l2r`` or
    ``l2r2020``. ``options``: :class:`Options` (default: official metrics plus ours).
    ``workers``: processes (default ``min(cores, pairs)``). ``task_folder``: the ``task_NN``
    sub-folder of a 2020 submission (default: the only one, or the data folder's name). Raises
    ``DataError`` listing every problem (missing or invalid fields, missing ground truth, an
    invalid runtime manifest) before any output exists.
    """
    disp_dir, data_dir, options = Path(disp_dir), Path(data_dir), options or Options()
    if not isinstance(config, EvalConfig):
        config = read_config(config, data_dir) if config is not None else derive_config(data_dir, split)
    if not disp_dir.is_dir():
        raise DataError(f"{disp_dir}: submission folder not found")
    fmt = detect_format(disp_dir) if fmt == "auto" else fmt
    if fmt not in list(Layout):
        raise DataError(f"unknown submission format {fmt!r} (auto, {', '.join(Layout)})")
    if task_folder and not (disp_dir / task_folder).is_dir():
        raise DataError(f"{disp_dir / task_folder}: task folder of the submission not found")
    folder = field_folder(disp_dir, fmt, task_folder or data_dir.resolve().name)
    fields, problems = locate_fields(folder, config.pairs, fmt)
    problems += ground_truth_problems(config)
    if problems:
        raise DataError(_problem_text(problems))
    manifest = _find_manifest(folder, disp_dir)
    jobs = [CaseJob(p, fields[p.key], fmt, config.methods, config.expected_shape, config.masked, options) for p in config.pairs]
    outcomes = _run(jobs, workers, progress)
    problems = [msg for _, _, msgs in outcomes for msg in msgs]
    if problems:
        raise DataError(_problem_text(problems))
    cases = {key: result for key, result, _ in outcomes if result is not None}  # problems raised above otherwise
    if manifest is not None:
        _add_runtimes(cases, manifest)
    return {"name": config.name, "aggregates": _aggregates(cases, config, options), "cases": cases, "eval_version": EVAL_VERSION}


def _problem_text(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)


def ground_truth_problems(config: EvalConfig) -> list[str]:
    """Missing ground-truth files the configured metrics need, all at once."""
    problems = []
    for pair in config.pairs:
        needed: list[Path | None] = []
        if config.has("dice") or config.has("hd95"):
            needed += [pair.fixed_label, pair.moving_label]
        for m in config.methods:
            if m.metric == "tre":
                files = pair.point_files(m.dest or "")
                needed += list(files) if files else [None]
                needed.append(pair.moving_image)
        if config.masked and config.require_masks:
            needed.append(pair.fixed_mask)
        for path in needed:
            if path is None or not path.is_file():
                what = path if path is not None else f"{pair.key}: point files"
                problems.append(f"{what}: ground-truth file not found (needed for {pair.key})")
    return sorted(set(problems), key=problems.index)


def _run(jobs: list[CaseJob], workers: int | None, progress: bool) -> list[tuple[str, dict | None, list[str]]]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(workers or cores, len(jobs)))
    bar = functools.partial(progress_bar, total=len(jobs), enabled=progress, desc="evaluate", unit="pair", logger=log)
    if workers == 1:
        return [evaluate_case(job) for job in bar(jobs)]
    # a worker that dies (out of memory, killed) is named by the pair it held (evaluation.pool)
    return run_pool(evaluate_case, jobs, [job.pair.key for job in jobs], workers, bar)


def evaluate_case(job: CaseJob) -> tuple[str, dict | None, list[str]]:
    """Validate and evaluate one pair -> ``(key, metrics or None, problems)``."""
    try:
        u = load_field(job.field, job.fmt, job.expected_shape)
        return job.pair.key, case_metrics(job, u), []
    except DataError as exc:
        return job.pair.key, None, [str(exc)]
    except ValueError as exc:  # e.g. a grid too small for the metric: still this pair's problem
        return job.pair.key, None, [f"{job.pair.key}: {exc}"]


def case_metrics(job: CaseJob, u: np.ndarray) -> dict[str, dict[str, Any]]:
    """All configured metrics of one pair, in config order (``num_foldings`` after SDlogJ), then ours."""
    pair = job.pair
    found: dict[str, Any] = {}
    ours: dict[str, Any] = {}
    if any(m.metric == "sdlogj" for m in job.methods):
        stats = jacobian.jacobian_stats(u, _load_mask(pair, u) if job.masked else None)
        found["sdlogj"] = stats
        ours.update(SDlogJ_true=stats.sdlogj_true, num_foldings_true=stats.num_foldings_true, folding_fraction=stats.folding_fraction)
    label_methods = [m for m in job.methods if m.metric in ("dice", "hd95")]
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
                spacings = [(1.0, 1.0, 1.0)] + ([geometry.spacing] if job.options.extras else [])
                values = metrics.hd95(fixed, warped, counts, spacings)
                found[m.name] = values[0]
                if job.options.extras:
                    ours[f"{m.name}_mm"] = (metrics.nanmean(values[1]), values[1])
    for m in job.methods:
        if m.metric == "tre":
            files = pair.point_files(m.dest or "")
            if files is None:
                raise DataError(f"{pair.key}: no {m.dest} files configured for {m.name}")
            fixed_csv, moving_csv = files
            fixed_pts, moving_pts = read_points(fixed_csv), read_points(moving_csv)
            if fixed_pts.shape != moving_pts.shape:
                raise DataError(f"{fixed_csv} has {len(fixed_pts)} points but {moving_csv} has {len(moving_pts)}")
            spacing = read_nifti_header(pair.moving_image).spacing
            found[m.name] = metrics.tre(u, fixed_pts, moving_pts, spacing, job.options.tre_method)
    return _assemble(job, found, ours)


def _assemble(job: CaseJob, found: dict[str, Any], ours: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in job.methods:
        if m.metric == "sdlogj":
            stats = found["sdlogj"]
            out[m.name] = {"mean": stats.sdlogj, "detailed": stats.sdlogj}
            out["num_foldings"] = {"mean": stats.num_foldings, "detailed": stats.num_foldings}
        elif m.metric == "tre":
            values = found[m.name]
            out[m.name] = {"mean": float(values.mean()) if values.size else float("nan"), "detailed": [float(v) for v in values]}
        else:
            values = found[m.name]
            out[m.name] = {"mean": metrics.nanmean(values), "detailed": values}
    if job.options.extras:
        for name, value in ours.items():
            mean, detailed = value if isinstance(value, tuple) else (value, value)
            out[name] = {"mean": mean, "detailed": detailed}
    return out


def _load_labels(path: Path | None, grid: tuple[int, ...] | None, order: Literal["C", "F"] = "F") -> tuple[np.ndarray, Any]:
    """Integer label map (smallest unsigned dtype) in the memory ``order`` of the field (NIfTI
    data are Fortran-ordered; mixing orders makes every voxel-wise step strided, ~3x slower);
    ``DataError`` for non-integer/negative values or (for the fixed labels) a grid other than
    the field's."""
    if path is None:
        raise DataError("label map not configured")
    arr, geometry = load_nifti(path, dtype=None, copy=False)
    if arr.ndim != 3 or (grid is not None and arr.shape != tuple(grid)):
        raise DataError(f"{path}: label map shape {arr.shape} differs from the field grid {grid}")
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


def _find_manifest(folder: Path, disp_dir: Path) -> Manifest | None:
    for where in dict.fromkeys((folder, disp_dir)):
        if (where / MANIFEST_NAME).is_file():
            return load_manifest(where / MANIFEST_NAME)
    return None


def _add_runtimes(cases: dict[str, dict], manifest: Manifest) -> None:
    missing = [k for k in cases if k not in manifest.runtimes]
    if missing:
        log.warning("runtime manifest lacks %d pair(s), e.g. %s: runtime NaN there", len(missing), missing[0])
    for key, case in cases.items():
        r = manifest.runtimes.get(key)
        total, network = (r.total_s, r.network_s) if r else (float("nan"), float("nan"))
        case["runtime"] = {"mean": total, "detailed": total}
        case["runtime_network"] = {"mean": network, "detailed": network}


def _aggregates(cases: dict[str, dict], config: EvalConfig, options: Options) -> dict[str, dict[str, float]]:
    """Official aggregates per configured method name, then ours (runtime over the known values)."""
    kinds = {m.name: m.metric for m in config.methods}
    first = next(iter(cases.values()))
    if options.extras:
        kinds.update({k: "sdlogj" for k in ("SDlogJ_true",) if k in first})
        kinds.update({k: "folding" for k in ("num_foldings_true", "folding_fraction") if k in first})
        kinds.update({f"{m.name}_mm": "hd95" for m in config.methods if m.metric == "hd95"})
    kinds.update({k: "runtime" for k in ("runtime", "runtime_network") if k in first})
    out = {}
    for name, kind in kinds.items():
        values = [float(c[name]["mean"]) for c in cases.values()]
        if kind == "runtime":
            values = [v for v in values if not np.isnan(v)]
        out[name] = metrics.aggregate(values, kind, options.aggregate)
    return out


# ----------------------------------------------------------------------------- CLI


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of the official script (-i -d -o -c -v) plus ours."""
    parser.add_argument("-i", "--input", dest="input_path", required=True, help="folder with the displacement fields")
    parser.add_argument("-d", "--data", dest="gt_path", required=True, help="task data folder (ground truth)")
    parser.add_argument("-o", "--output", dest="output_path", default="metrics.json", help="output json (a folder: timestamped name)")
    parser.add_argument("-c", "--config", dest="config_path", default=None, help="official evaluation config json (default: derive from the task)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print per-case results")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="pairs of a derived config")
    parser.add_argument("--format", dest="fmt", choices=("auto", *Layout), default="auto", help="submission format")
    parser.add_argument("--task-folder", default=None, help="2020 submissions: the task_NN sub-folder to read")
    parser.add_argument("-j", "--workers", type=int, default=None, help="worker processes (default: min(cores, pairs))")
    parser.add_argument("--official-only", action="store_true", help="only the official metrics (no *_true, *_mm, folding_fraction)")
    parser.add_argument("--aggregate", choices=("l2r", "2020"), default="l2r", help="aggregate rule (2020: ddof=1, 0.3 quantile)")
    parser.add_argument("--tre", dest="tre_method", choices=("auto", "kernel", "crop", "full"), default="auto", help="TRE sampler")


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the json atomically, print the aggregates. ``DataError`` propagates."""
    options = Options(extras=not args.official_only, aggregate=args.aggregate, tre_method=args.tre_method)
    out = Path(args.output_path)
    out = out / (datetime.now().strftime("%Y%m%d_%H%M") + ".json") if out.is_dir() else check_output_path(out, folder=False)
    result = evaluate(
        args.input_path, args.gt_path, args.config_path, split=args.split, fmt=args.fmt, workers=args.workers,
        options=options, task_folder=args.task_folder, progress=True,
    )  # fmt: skip
    write_json(out, result)
    if args.verbose:
        for key, case in result["cases"].items():
            print(key + "  " + "  ".join(f"{k}={v['mean']:.5f}" for k, v in case.items()))
    for name, agg in result["aggregates"].items():
        print(f"{name:<20} {agg['mean']:.5f} +- {agg['std']:.5f} | 30%: {agg['30']:.5f}")
    print(f"Results saved to: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluation.evaluate``: exit 0 ok, 1 bad input (message on stderr), 2 usage."""
    return run_cli("python -m evaluation.evaluate", "Learn2Reg evaluation (official metrics, fast).", build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
