"""Leaderboard of several evaluated methods: the seed paper's Table 1 plus Learn2Reg rank scores.

``python -m evaluation.leaderboard METHOD=PATH... [-o OUT_DIR] [--initial PATH...]``

Input: result JSONs of the evaluator (``{name, aggregates, cases: {"SSSS_MMMM<--SSSS_MMMM":
{metric: {mean, detailed}}}, eval_version}``). ``PATH`` is one result JSON or a folder of them.
**Task rule:** a result's task is its ``"name"`` field, else its ``"task"`` / ``"task_name"``
field, else the file stem (so ``OASIS.json`` without a name is task ``OASIS``). In a folder,
every ``*.json`` (not recursive) that has a ``"cases"`` object is a result; other JSON files
are skipped with a warning. A method may be given several times (one PATH per task); two
results for the same method and task are an error. ``METHOD=`` may be left out: the method is
then named after the file or folder. ``--initial`` paths form the method ``Initial`` (the
zero-field result), which always comes first.

Output: Markdown on stdout and, with ``-o``, ``leaderboard.md``, ``leaderboard.csv`` (tidy:
``method, task, metric, value``; rank scores as metrics ``rank:...``) and a self-contained
``leaderboard.html``. Exit code 1 with a message naming the file for a missing or invalid
result; nothing is written then.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation import ranking, report
from evaluation import reports as pair_reports
from evaluation.cli import run_cli
from evaluation.io import DataError, atomic_open, check_output_path, read_json

log = logging.getLogger(__name__)

INITIAL = "Initial"
#: Accuracy metric of a task, by preference: landmark TRE, keypoint TRE, Dice.
ACCURACY_PREFERENCE = ("TRE_lm", "TRE_kp", "DSC")
SDLOGJ = "LogJacDetStd"
RUNTIME = "runtime"
#: Table column names besides the accuracy metric.
TABLE_SDLOGJ = "SDlogJ"
TABLE_RUNTIME = "runtime"
#: Evaluator metric names whose per-item values are ranked, except TRE (see item_tables).
RANKED_FIXED = {"DSC": "DSC", "HD95": "HD95", SDLOGJ: "SDlogJ", RUNTIME: "runtime"}
RANK_PREFIX = "rank:"


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


def accuracy_metric(results: Results, task: str) -> str | None:
    """The task's accuracy metric: the first of :data:`ACCURACY_PREFERENCE` any method reports."""
    present = {
        name
        for per_task in results.values()
        if task in per_task
        for case in per_task[task].cases.values()
        for name in case
    }
    present |= {name for per_task in results.values() if task in per_task for name in per_task[task].aggregates}
    return next((m for m in ACCURACY_PREFERENCE if m in present), None)


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


def build_table(results: Results, initial: str = INITIAL) -> pd.DataFrame:
    """The seed paper's Table 1: one row per method, per task accuracy metric, SDlogJ, runtime.

    Columns: MultiIndex ``(task, metric)`` with metric the evaluator's accuracy metric name
    (``TRE_lm`` / ``TRE_kp`` in mm, or ``DSC``), :data:`TABLE_SDLOGJ`, :data:`TABLE_RUNTIME`
    (seconds). Values are means over cases; NaN where missing and for the initial method's
    SDlogJ and runtime (shown as "-").
    """
    columns: dict[tuple[str, str], list[float]] = {}
    for task in task_names(results):
        acc = accuracy_metric(results, task)
        sources = ([(acc, acc)] if acc else []) + [(TABLE_SDLOGJ, SDLOGJ), (TABLE_RUNTIME, RUNTIME)]
        for column, metric in sources:
            columns[(task, column)] = [
                math.nan if method == initial and column != acc else metric_mean(per_task.get(task), metric)
                for method, per_task in results.items()
            ]
    table = pd.DataFrame(columns, index=pd.Index(list(results), name="method"), dtype=np.float64)
    table.columns = pd.MultiIndex.from_tuples(list(columns), names=["task", "metric"])
    return table


def _item_values(result: TaskResult | None, metric: str, detailed: bool) -> dict[tuple[str, str], float]:
    """``(case, item) -> value`` of one metric; item = detail key, or "case" for case values."""
    out: dict[tuple[str, str], float] = {}
    for key, metrics in result.cases.items() if result is not None else ():
        value = metrics.get(metric)
        if value is None:
            continue
        if detailed and value.detailed is not None:
            out.update({(key, item): v for item, v in value.detailed})
        else:
            out[(key, "case")] = value.mean
    return out


def item_tables(results: Results, task: str) -> dict[str, pd.DataFrame]:
    """Per rank metric (``TRE``, ``DSC``, ``HD95``, ``SDlogJ``, ``runtime``) the ``items x methods`` values.

    Items are (case, label) for DSC/HD95 and (case, point) for TRE when every method that has
    the metric gives "detailed" values, else (case, "case"); SDlogJ and runtime are per case.
    Missing = NaN. Metrics no method reports are left out.
    """
    acc = accuracy_metric(results, task)
    sources = dict(RANKED_FIXED)
    if acc is not None and acc.startswith("TRE"):
        sources[acc] = "TRE"
    tables: dict[str, pd.DataFrame] = {}
    for metric, rank_name in sources.items():
        per_method = {m: per_task.get(task) for m, per_task in results.items()}
        entries = [c[metric] for r in per_method.values() if r is not None for c in r.cases.values() if metric in c]
        if not entries:
            continue
        detailed = rank_name in ("TRE", "DSC", "HD95") and all(e.detailed is not None for e in entries)
        if rank_name in ("TRE", "DSC", "HD95") and not detailed:
            log.warning("task %s: %s lacks per-item 'detailed' values somewhere; ranking per case", task, metric)
        values = {m: _item_values(r, metric, detailed) for m, r in per_method.items()}
        keys = sorted({k for v in values.values() for k in v})
        if not keys:
            continue
        index = pd.MultiIndex.from_tuples(keys, names=["case", "item"])
        data = {m: [v.get(k, math.nan) for k in keys] for m, v in values.items()}
        tables[rank_name] = pd.DataFrame(data, index=index, columns=list(results), dtype=np.float64)
    return tables


def compute_ranks(results: Results, config: ranking.RankConfig | None = None) -> pd.DataFrame:
    """Rank scores of every method and task, tidy (see :func:`evaluation.ranking.rank_scores`)."""
    config = config or ranking.RankConfig(initial_name=INITIAL)
    items = {task: item_tables(results, task) for task in task_names(results)}
    return ranking.rank_scores(items, list(results), config)


def tidy(table: pd.DataFrame, ranks: pd.DataFrame) -> pd.DataFrame:
    """Table values and rank scores as rows ``method, task, metric, value`` (missing cells left out)."""
    long = table.stack(["task", "metric"], future_stack=True).rename("value").reset_index()
    long = long.loc[long["value"].notna(), ["method", "task", "metric", "value"]]
    rank_rows = ranks.assign(metric=RANK_PREFIX + ranks["metric"])
    return pd.concat([long, rank_rows], ignore_index=True)


def notes_for(results: Results, config: ranking.RankConfig) -> list[str]:
    """Caveats to print under the tables."""
    notes = []
    if config.initial_name not in results:
        notes.append(f"No {config.initial_name} (zero-field) results: DSC30/TRE30 are not ranked.")
    else:
        notes.append(f"{config.initial_name} counts as worst in the SDlogJ and runtime rank scores.")
    notes.append("Rank scores: Wilcoxon rank-sum, p < 0.05, linspace(0.1, 1, N), missing values = worst.")
    return notes


def write_leaderboard(
    results: Results, out_dir: str | Path | None = None, config: ranking.RankConfig | None = None,
    reports: Mapping[str, Path] | None = None,
) -> str:
    """Build the table, the rank scores and the report; write them to ``out_dir`` if given.

    Returns the Markdown. Writes ``leaderboard.md``, ``leaderboard.csv`` and
    ``leaderboard.html`` atomically, each only after everything has been rendered.
    """
    config = config or ranking.RankConfig(initial_name=INITIAL)
    table = build_table(results, config.initial_name)
    ranks = compute_ranks(results, config)
    notes = notes_for(results, config)
    markdown = report.render_markdown(table, ranks, notes)
    if out_dir is None:
        return markdown
    plots = {}
    for task in task_names(results):
        acc = accuracy_metric(results, task)
        if acc is not None:
            values = {m: case_values(per_task.get(task), acc) for m, per_task in results.items()}
            plots[task] = report.boxplot_png(task, acc, values)
    html = report.render_html(table, ranks, plots, notes)
    if reports:  # per-pair visual reports (evaluation.reports), linked in a section of their own
        html = pair_reports.add_report_links(html, pair_reports.report_links_html(reports, Path(out_dir)))
    csv_text = tidy(table, ranks).to_csv(index=False)
    out_dir = Path(out_dir)
    for name, text in (("leaderboard.md", markdown), ("leaderboard.csv", csv_text), ("leaderboard.html", html)):
        with atomic_open(out_dir / name) as fh:
            fh.write(text)
    log.info("wrote %s/leaderboard.{md,csv,html}", out_dir)
    return markdown


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of the leaderboard command."""
    parser.add_argument("results", nargs="+", metavar="METHOD=PATH", help="a method's result JSON or folder of them")
    parser.add_argument("-o", "--out", type=Path, default=None, help="write leaderboard.md/.csv/.html here")
    parser.add_argument("--initial", nargs="+", default=[], metavar="PATH", help="zero-field results (method Initial)")
    parser.add_argument("--reports", nargs="+", default=[], metavar="METHOD=DIR",
                        help="link the per-pair reports (DIR/report/ or DIR/*/report/, see `pipeline report`) of a method's submissions")


def run(args: argparse.Namespace) -> int:
    """Print the leaderboard Markdown (and write the files with ``--out``)."""
    if args.out is not None:
        check_output_path(args.out, folder=True)
    results = load_results(args.results, args.initial)
    links = dict(parse_spec(spec) for spec in args.reports)
    print(write_leaderboard(results, args.out, reports=links))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m evaluation.leaderboard``."""
    return run_cli("python -m evaluation.leaderboard", __doc__.splitlines()[0], build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
