"""Evaluator result files as the leaderboard reads them: parsing, checking, grouping by method and task.

Input: result JSONs of the evaluator (``{name, aggregates, cases: {"SSSS_MMMM<--SSSS_MMMM":
{metric: {mean, detailed}}}, eval_version}``). ``PATH`` is one result JSON or a folder of them.
**Task rule:** a result's task is its ``"name"`` field, else its ``"task"`` / ``"task_name"``
field, else the file stem (so ``OASIS.json`` without a name is task ``OASIS``). In a folder,
every ``*.json`` (not recursive) that has a ``"cases"`` object is a result; other JSON files
are skipped with a warning. A method may be given several times (one PATH per task); two
results for the same method and task are an error. Invalid input raises ``DataError`` naming
the file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learn2reg.io import DataError, read_json

log = logging.getLogger(__name__)

#: The zero-field method; it always comes first.
INITIAL = "Initial"
#: Accuracy metric of a task, by preference: landmark TRE, keypoint TRE, Dice.
ACCURACY_PREFERENCE = ("TRE_lm", "TRE_kp", "DSC")
#: Point metrics, by preference: the first one a task reports is its ranked TRE.
TRE_PREFERENCE = ("TRE_lm", "TRE_kp")


@dataclass(frozen=True)
class MetricValue:
    """One metric of one case: the case value and, if given, per-item values (label / point)."""

    mean: float
    detailed: tuple[tuple[str, float], ...] | None = None  # (item key, value); NaN = undefined


@dataclass(frozen=True)
class TaskResult:
    """One evaluator output: task name, source file, ``case key -> metric -> value``, aggregate means."""

    task: str
    source: Path
    cases: Mapping[str, Mapping[str, MetricValue]]
    aggregates: Mapping[str, float]


#: method -> task -> result, in display order (Initial first).
Results = dict[str, dict[str, TaskResult]]


def _number(value: Any, path: Path, where: str) -> float:
    """A JSON number (or null = NaN, or a numeric string such as "NaN") as float."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise DataError(f"{path}: {where} is not a number ({value!r})")


def _metric_value(entry: Any, path: Path, where: str) -> MetricValue | None:
    """Parse ``{mean, detailed?}`` or a bare number; ``None`` for entries of another shape."""
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return MetricValue(float(entry))
    if not isinstance(entry, dict) or "mean" not in entry:
        return None  # tolerated: not a metric (or a metric of a shape we do not rank)
    detailed = entry.get("detailed")
    items: tuple[tuple[str, float], ...] | None = None
    if isinstance(detailed, list):
        items = tuple((str(i), _number(v, path, f"{where}.detailed[{i}]")) for i, v in enumerate(detailed))
    elif isinstance(detailed, dict):
        items = tuple((str(k), _number(v, path, f"{where}.detailed[{k}]")) for k, v in detailed.items())
    elif detailed is not None and not isinstance(detailed, (int, float)):
        raise DataError(f"{path}: {where}.detailed is neither a list nor an object")
    return MetricValue(_number(entry["mean"], path, f"{where}.mean"), items)


def parse_result(obj: Any, path: Path) -> TaskResult:
    """Validate one evaluator output (see module docstring for the task rule)."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object with 'cases', got {type(obj).__name__}")
    cases_obj = obj.get("cases")
    if not isinstance(cases_obj, dict):
        raise DataError(f"{path}: no 'cases' object: not an evaluator result")
    task = next((obj[k] for k in ("name", "task", "task_name") if isinstance(obj.get(k), str) and obj[k]), path.stem)
    cases: dict[str, dict[str, MetricValue]] = {}
    for key, metrics in cases_obj.items():
        if not isinstance(metrics, dict):
            raise DataError(f"{path}: cases[{key!r}] is not an object of metrics")
        parsed = {name: _metric_value(entry, path, f"cases[{key!r}][{name!r}]") for name, entry in metrics.items()}
        cases[str(key)] = {name: value for name, value in parsed.items() if value is not None}
    aggregates: dict[str, float] = {}
    for name, agg in (obj.get("aggregates") or {}).items():
        if isinstance(agg, dict) and "mean" in agg:
            aggregates[str(name)] = _number(agg["mean"], path, f"aggregates[{name!r}].mean")
    return TaskResult(task=str(task), source=path, cases=cases, aggregates=aggregates)


def read_results(path: str | Path) -> list[TaskResult]:
    """The results in one JSON file or in the ``*.json`` files of one folder (sorted by name)."""
    path = Path(path)
    if path.is_file():
        return [parse_result(read_json(path), path)]
    if not path.is_dir():
        raise DataError(f"{path}: results path not found")
    results = []
    for file in sorted(path.glob("*.json")):
        obj = read_json(file)
        if not isinstance(obj, dict) or not isinstance(obj.get("cases"), dict):
            log.warning("%s: not an evaluator result (no 'cases'), skipped", file)
            continue
        results.append(parse_result(obj, file))
    if not results:
        raise DataError(f"{path}: folder holds no result JSON (*.json with a 'cases' object)")
    return results


def parse_spec(spec: str) -> tuple[str, Path]:
    """``METHOD=PATH`` -> (method, path); a bare ``PATH`` is named after its file or folder."""
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name:
        if not rest:
            raise DataError(f"{spec}: no path after '='")
        return name, Path(rest)
    path = Path(spec)
    return (path.stem if path.suffix == ".json" else path.name) or spec, path


def load_results(specs: Sequence[str], initial: Sequence[str] = ()) -> Results:
    """Read every ``METHOD=PATH`` spec (and the ``--initial`` paths as method Initial).

    Returns ``method -> task -> TaskResult`` with Initial first, then methods in order of first
    appearance. Raises ``DataError`` (naming the file) for missing/invalid input or a method
    with two results for one task.
    """
    pairs = [(INITIAL, Path(p.split("=", 1)[1] if p.startswith(f"{INITIAL}=") else p)) for p in initial]
    pairs += [parse_spec(s) for s in specs]
    if not pairs:
        raise DataError("no results given")
    results: Results = {}
    for method, path in sorted(pairs, key=lambda mp: mp[0] != INITIAL):  # stable: Initial first
        per_task = results.setdefault(method, {})
        for result in read_results(path):
            if result.task in per_task:
                other = per_task[result.task].source
                raise DataError(
                    f"{result.source}: second result for method {method!r}, task {result.task!r} (first: {other})"
                )
            per_task[result.task] = result
    return results


def task_names(results: Results) -> list[str]:
    """All tasks of all methods, sorted."""
    return sorted({task for per_task in results.values() for task in per_task})


def _reported(results: Results, task: str) -> set[str]:
    """Every metric name any method reports on ``task`` (cases or aggregates)."""
    present = {
        name
        for per_task in results.values()
        if task in per_task
        for case in per_task[task].cases.values()
        for name in case
    }
    return present | {name for per_task in results.values() if task in per_task for name in per_task[task].aggregates}


def accuracy_metric(results: Results, task: str) -> str | None:
    """The task's main accuracy metric: the first of :data:`ACCURACY_PREFERENCE` any method reports."""
    present = _reported(results, task)
    return next((m for m in ACCURACY_PREFERENCE if m in present), None)


def accuracy_metrics(results: Results, task: str) -> list[str]:
    """Every accuracy metric the rank scores use: the task's TRE (the first of
    :data:`TRE_PREFERENCE` reported) and DSC, in that order, those no method reports left out.

    A task with labels and points ranks both (TRE, TRE30, DSC, DSC30), so a board shows both.
    """
    present = _reported(results, task)
    tre = next((m for m in TRE_PREFERENCE if m in present), None)
    return ([tre] if tre else []) + (["DSC"] if "DSC" in present else [])


def case_values(result: TaskResult | None, metric: str) -> np.ndarray:
    """Per-case values of one metric (cases without it left out), float64."""
    if result is None:
        return np.zeros(0)
    return np.array([c[metric].mean for c in result.cases.values() if metric in c], dtype=np.float64)


def metric_mean(result: TaskResult | None, metric: str) -> float:
    """Mean over cases of the case values (NaN cases left out), else the aggregate mean, else NaN."""
    values = case_values(result, metric)
    values = values[~np.isnan(values)]
    if values.size:
        return float(np.mean(values))
    return float(result.aggregates.get(metric, math.nan)) if result is not None else math.nan


def case_stats(result: TaskResult | None, metric: str) -> tuple[float, float, int]:
    """``(mean, std, n)`` of one metric's per-case values; NaN cases left out.

    ``mean`` is :func:`metric_mean` (so the aggregate mean when no case has the metric),
    ``std`` the population std (ddof 0, as the evaluator's aggregates) and NaN when ``n`` is 0
    or a value is infinite (an HD95 of a vanished structure makes the mean infinite too).
    """
    values = case_values(result, metric)
    values = values[~np.isnan(values)]
    std = float(np.std(values)) if values.size and np.all(np.isfinite(values)) else math.nan
    return metric_mean(result, metric), std, int(values.size)
