"""What a leaderboard shows, computed from loaded results: table, per-task statistics, gaps, ranks.

:func:`make_board` turns ``method -> task -> result`` (see :mod:`evaluation.leaderboard.results`) into a
:class:`Board`: the seed paper's Table 1 (plus folding), mean / std / n per method, task and
metric, the Learn2Reg rank scores, whether each rank metric can separate methods at all with
the data's sample sizes, and the *gaps*: results a method lacks that other methods have (the
ranking counts them as the worst value, so every table that shows them must say so).
:mod:`evaluation.leaderboard.tables` and :mod:`evaluation.leaderboard.render` render a board; nothing here formats text.

Metric names: the evaluator's (``TRE_lm``, ``TRE_kp``, ``DSC``, ``HD95``, ``LogJacDetStd``,
``folding_fraction`` = share of voxels with det(I + grad u) <= 0, ours, ``runtime`` in s) except
that ``LogJacDetStd`` is called :data:`TABLE_SDLOGJ` in tables and the CSV.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluation.leaderboard import ranking
from evaluation.leaderboard.results import (
    Results,
    TaskResult,
    accuracy_metric,
    accuracy_metrics,
    case_stats,
    metric_mean,
    task_names,
)

log = logging.getLogger(__name__)

SDLOGJ = "LogJacDetStd"
RUNTIME = "runtime"
FOLDING = "folding_fraction"
HD95 = "HD95"
#: Table / CSV name of the official SDlogJ (others keep the evaluator's name).
TABLE_SDLOGJ = "SDlogJ"
TABLE_RUNTIME = "runtime"
#: Metrics the zero field has no meaningful value for: "-" in tables, never "best".
NOT_FOR_INITIAL = (SDLOGJ, FOLDING, RUNTIME)
#: Evaluator metric names whose per-item values are ranked, except TRE (see item_tables).
RANKED_FIXED = {"DSC": "DSC", HD95: "HD95", SDLOGJ: "SDlogJ", RUNTIME: "runtime"}
#: CSV metric prefixes: rank scores, population std and number of cases of a table metric.
RANK_PREFIX = "rank:"
STD_PREFIX = "std:"
N_PREFIX = "n:"


def table_name(metric: str) -> str:
    """The name of an evaluator metric in tables and the CSV."""
    return TABLE_SDLOGJ if metric == SDLOGJ else metric


@dataclass(frozen=True)
class Gap:
    """Results one method lacks on one task while other methods have them.

    ``metric`` None: the task's cases (``have`` of the ``total`` cases any method has; 0 = no
    results for the task at all); else one evaluator metric (``have`` of the method's cases
    carry it, ``total`` cases carry it in any method). ``ranked``: the metric (or, for
    ``metric`` None, the task) enters the rank scores, where the missing items count as worst.
    """

    method: str
    task: str
    metric: str | None
    have: int
    total: int
    ranked: bool = True

    @property
    def missing(self) -> bool:
        """Nothing at all (rather than fewer cases than other methods)."""
        return self.have == 0

    def describe(self) -> str:
        """One sentence for a footnote."""
        worst = "; the rank scores count them as worst" if self.ranked else ""
        if self.metric is None and self.missing:
            return f"{self.method} has no results for {self.task}; its rank scores there count every item as worst"
        if self.metric is None:
            lack = self.total - self.have
            return f"{self.method} has {self.have} of {self.total} {self.task} cases: means over those, {lack} missing{worst}"
        name = table_name(self.metric)
        if self.missing:
            return f"{self.method} has no {name} values on {self.task}" + ("; ranked as worst" if self.ranked else "")
        lack = self.total - self.have
        return f"{self.method} has {name} for {self.have} of {self.total} {self.task} cases: means over those, {lack} missing{worst}"


@dataclass(frozen=True)
class Board:
    """Everything a leaderboard shows.

    ``table``: methods x MultiIndex ``(task, metric)`` means (see :func:`build_table`);
    ``stats``: tidy ``method, task, metric, mean, std, n`` (:func:`build_stats`, then the
    hard-item rows ``DSC30`` / ``TRE30`` of :func:`hard_stats`);
    ``ranks``: tidy rank scores (:func:`evaluation.leaderboard.ranking.rank_scores`);
    ``power``: ``task, metric, n_items, min_p, separable`` (:func:`evaluation.leaderboard.ranking.rank_power`);
    ``gaps``: :func:`find_gaps`; ``accuracy``: task -> accuracy metric (None if none);
    ``notes``: general caveats; ``config``: the ranking parameters.
    """

    table: pd.DataFrame
    stats: pd.DataFrame
    ranks: pd.DataFrame
    power: pd.DataFrame
    gaps: tuple[Gap, ...]
    accuracy: Mapping[str, str | None]
    notes: tuple[str, ...]
    config: ranking.RankConfig


def _reports(results: Results, task: str, metric: str, initial: str) -> bool:
    """True when a method that can have ``metric`` reports it on ``task`` (cases or aggregates)."""
    for method, per_task in results.items():
        result = per_task.get(task)
        if result is None or (method == initial and metric in NOT_FOR_INITIAL):
            continue
        if metric in result.aggregates or any(metric in case for case in result.cases.values()):
            return True
    return False


def table_metrics(results: Results, task: str, initial: str) -> list[str]:
    """Evaluator metrics of the task's Table 1 columns: every ranked accuracy metric (TRE, DSC),
    SDlogJ, folding (if reported), runtime."""
    folding = [FOLDING] if _reports(results, task, FOLDING, initial) else []
    return accuracy_metrics(results, task) + [SDLOGJ] + folding + [RUNTIME]


def task_metrics(results: Results, task: str, initial: str) -> list[str]:
    """Evaluator metrics of a per-task table: the Table 1 ones plus HD95, those no method reports left out."""
    metrics = table_metrics(results, task, initial)
    if _reports(results, task, HD95, initial):
        metrics.insert(metrics.index(SDLOGJ), HD95)
    return [m for m in metrics if m != RUNTIME or _reports(results, task, RUNTIME, initial)]


def build_table(results: Results, initial: str = "Initial") -> pd.DataFrame:
    """The seed paper's Table 1 plus folding: one row per method; per task accuracy, SDlogJ, folding, runtime.

    Columns: MultiIndex ``(task, metric)`` with metric the evaluator's accuracy metric names
    (``TRE_lm`` / ``TRE_kp`` in mm, and ``DSC``: both where a task has points and labels, as both
    are ranked), :data:`TABLE_SDLOGJ`, :data:`FOLDING` (a
    fraction, only where a method reports it) and :data:`TABLE_RUNTIME` (seconds). Values are
    means over cases; NaN where missing and for the initial method's SDlogJ, folding and runtime.
    """
    columns: dict[tuple[str, str], list[float]] = {}
    for task in task_names(results):
        for metric in table_metrics(results, task, initial):
            columns[(task, table_name(metric))] = [
                math.nan if method == initial and metric in NOT_FOR_INITIAL else metric_mean(per_task.get(task), metric)
                for method, per_task in results.items()
            ]
    table = pd.DataFrame(columns, index=pd.Index(list(results), name="method"), dtype=np.float64)
    table.columns = pd.MultiIndex.from_tuples(list(columns), names=["task", "metric"])
    return table


def build_stats(results: Results, initial: str = "Initial") -> pd.DataFrame:
    """Mean, population std and number of cases per method, task and per-task metric, tidy.

    Columns ``method, task, metric, mean, std, n`` (metric as in tables); a method without the
    task has ``n`` 0 and NaN values; the initial method has no rows for SDlogJ, folding, runtime.
    """
    rows = []
    for task in task_names(results):
        for metric in task_metrics(results, task, initial):
            for method, per_task in results.items():
                if method == initial and metric in NOT_FOR_INITIAL:
                    continue
                mean, std, n = case_stats(per_task.get(task), metric)
                rows.append({"method": method, "task": task, "metric": table_name(metric), "mean": mean, "std": std, "n": n})
    return pd.DataFrame(rows, columns=["method", "task", "metric", "mean", "std", "n"])


def hard_stats(
    items_by_task: Mapping[str, Mapping[str, pd.DataFrame]], methods: list[str], config: ranking.RankConfig
) -> pd.DataFrame:
    """Mean, population std and number of the *items* ``DSC30`` / ``TRE30`` rank, tidy as :func:`build_stats`.

    The items are the ranking's hard set (:func:`evaluation.leaderboard.ranking.ranked_tables`:
    the 30 % of case x label or landmark items where the initial method is worst); the values are
    each method's own values on them, missing ones left out (the ranking counts them as worst, and
    ``n`` shows how many a method has). No rows without an initial method (nothing is ranked).
    """
    rows = []
    for task, items in items_by_task.items():
        ranked = ranking.ranked_tables(items, methods, config)
        for hard, base in ranking.HARD_OF.items():
            if hard not in ranked or base not in items:
                continue
            values = items[base].reindex(index=ranked[hard].index, columns=methods)
            for method in methods:
                v = values[method].to_numpy(dtype=np.float64)
                v = v[~np.isnan(v)]
                std = float(np.std(v)) if v.size and np.all(np.isfinite(v)) else math.nan
                mean = float(np.mean(v)) if v.size else math.nan
                rows.append({"method": method, "task": task, "metric": hard, "mean": mean, "std": std, "n": int(v.size)})
    return pd.DataFrame(rows, columns=["method", "task", "metric", "mean", "std", "n"])


def _case_keys(result: TaskResult | None, metric: str | None = None) -> set[str]:
    if result is None:
        return set()
    return {key for key, case in result.cases.items() if metric is None or metric in case}


def find_gaps(results: Results, initial: str = "Initial") -> list[Gap]:
    """Every method/task where a method lacks cases, or a metric on some of its cases, that others have.

    Cases are compared with the union of the task's cases over all methods; a metric with the
    union of the cases that carry it (the initial method left out for SDlogJ, folding and
    runtime). Folding is shown but not ranked.
    """
    gaps: list[Gap] = []
    for task in task_names(results):
        union = set().union(*(_case_keys(per_task.get(task)) for per_task in results.values()))
        metrics = task_metrics(results, task, initial)
        for method, per_task in results.items():
            result = per_task.get(task)
            mine = _case_keys(result)
            if len(mine) < len(union):
                gaps.append(Gap(method, task, None, len(mine), len(union)))
            if result is None:
                continue
            for metric in metrics:
                if method == initial and metric in NOT_FOR_INITIAL:
                    continue
                carriers = set().union(
                    *(_case_keys(r.get(task), metric) for m, r in results.items() if m != initial or metric not in NOT_FOR_INITIAL)
                )
                have = _case_keys(result, metric)
                if (mine - have) & carriers:
                    gaps.append(Gap(method, task, metric, len(have), len(carriers), ranked=metric != FOLDING))
    return gaps


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
    """Rank scores of every method and task, tidy (see :func:`evaluation.leaderboard.ranking.rank_scores`)."""
    config = config or ranking.RankConfig()
    items = {task: item_tables(results, task) for task in task_names(results)}
    return ranking.rank_scores(items, list(results), config)


def notes_for(results: Results, config: ranking.RankConfig) -> list[str]:
    """General caveats to print under the tables."""
    notes = []
    if config.initial_name not in results:
        notes.append(f"No {config.initial_name} (zero-field) results: DSC30/TRE30 are not ranked.")
    else:
        notes.append(
            f"{config.initial_name} (zero field) has no SDlogJ, folding or runtime (shown as -, never best);"
            " it counts as worst in the SDlogJ and runtime rank scores."
        )
    notes.append(
        f"Rank scores: Wilcoxon rank-sum, p < {config.p_threshold:g}, linspace(0.1, 1, N), missing values = worst."
        " A task score is the geometric mean of every rank column of its task table (each beside the values it"
        " ranks); the overall score is the mean of the task scores."
    )
    return notes


def make_board(results: Results, config: ranking.RankConfig | None = None) -> Board:
    """Compute everything a leaderboard shows (see :class:`Board`)."""
    config = config or ranking.RankConfig()
    tasks = task_names(results)
    items = {task: item_tables(results, task) for task in tasks}
    hard = hard_stats(items, list(results), config)
    stats = build_stats(results, config.initial_name)
    return Board(
        table=build_table(results, config.initial_name),
        stats=pd.concat([stats, hard], ignore_index=True) if not hard.empty else stats,
        ranks=ranking.rank_scores(items, list(results), config),
        power=ranking.rank_power(items, list(results), config),
        gaps=tuple(find_gaps(results, config.initial_name)),
        accuracy={task: accuracy_metric(results, task) for task in tasks},
        notes=tuple(notes_for(results, config)),
        config=config,
    )


def tidy(board: Board) -> pd.DataFrame:
    """The board as rows ``method, task, metric, value`` (the CSV; missing cells left out).

    Table 1 means under their column names; per-task means of metrics outside Table 1 (HD95,
    and ``DSC30`` / ``TRE30``: the mean over the hard items those ranks compare) under their
    names; ``std:METRIC`` and ``n:METRIC`` (``n`` 0 marks a method without results; cases, or
    items for DSC30/TRE30); rank scores as ``rank:METRIC``. Every ranked metric thus has its
    values beside its rank score.
    """
    long = board.table.stack(["task", "metric"], future_stack=True).rename("value").reset_index()
    long = long.loc[long["value"].notna(), ["method", "task", "metric", "value"]]
    stats = board.stats
    shown = set(zip(long["method"], long["task"], long["metric"], strict=True))
    extra = stats.loc[[(m, t, k) not in shown for m, t, k in zip(stats["method"], stats["task"], stats["metric"], strict=True)]]
    extra = extra.loc[extra["mean"].notna()]
    parts = [
        long,
        extra[["method", "task", "metric"]].assign(value=extra["mean"]),
        stats.loc[stats["std"].notna()].assign(metric=STD_PREFIX + stats["metric"], value=stats["std"]),
        stats.assign(metric=N_PREFIX + stats["metric"], value=stats["n"].astype(np.float64)),
        board.ranks.assign(metric=RANK_PREFIX + board.ranks["metric"]),
    ]
    return pd.concat([p[["method", "task", "metric", "value"]] for p in parts], ignore_index=True)
