"""Learn2Reg rank scores: significance-based metric ranks and their geometric mean per task.

The scheme (Learn2Reg, after the Medical Segmentation Decathlon), per task and metric:

1. every method has one value per *item* (case x label for DSC/HD95, landmark for TRE, case for
   SDlogJ and runtime); items are the rows of an ``items x methods`` table;
2. every ordered pair of methods is compared with the Wilcoxon rank-sum test
   (``scipy.stats.ranksums``) on those values; method ``i`` is *significantly better* than
   ``j`` if its values rank better and ``p < 0.05``;
3. a method's count = the number of methods significantly better than it;
4. counts map to ``linspace(0.1, 1, N)`` (fewest better = 1.0, ties share the average);
5. the task score is the geometric mean of the metric rank scores.

``DSC30`` / ``TRE30`` repeat step 2-4 on a fixed set of hard items: the 30 % of items with the
worst value of the ``Initial`` (zero-field) method. Missing values (a method lacks a case, an
undefined label, a vanished structure) get the worst value: ``-inf`` where higher is better,
``+inf`` where lower is better; only order matters to a rank test, so this is "worse than any
observed value" and all missing items tie. Items that are missing for *every* method (a label
absent from the pair's fixed or moving image) carry no information and are dropped. As in the
official ranking, the Initial method's SDlogJ and runtime count as missing (the zero field is
trivially smooth and costs nothing; the challenge ranks it last there).

**Power.** With few items no difference can be significant: ``ranksums`` uses the normal
approximation ``z = (W - n1 (n1 + n2 + 1) / 2) / sqrt(n1 n2 (n1 + n2 + 1) / 12)``, largest when
the two samples do not overlap, ``|z| = sqrt(3 n1 n2 / (n1 + n2 + 1))``; so the smallest
attainable two-sided p is ``2 (1 - Phi(sqrt(3 n1 n2 / (n1 + n2 + 1))))``: 0.32 for one item per
method, 0.12 for two, 0.0495 for three. :func:`rank_power` reports it per task and metric; where it
is not below the threshold every method ties whatever the values.

Pure numpy/scipy/pandas: inputs are tables, not files (``evaluation.leaderboard.stage`` builds them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy import stats

log = logging.getLogger(__name__)

#: Rank metrics in display order -> whether higher values are better.
HIGHER_IS_BETTER: Mapping[str, bool] = MappingProxyType(
    {"TRE": False, "TRE30": False, "DSC": True, "DSC30": True, "HD95": False, "SDlogJ": False, "runtime": False}
)
#: Hard-item metrics -> the metric whose items they restrict.
HARD_OF: Mapping[str, str] = MappingProxyType({"TRE30": "TRE", "DSC30": "DSC"})
#: Column / metric name of the task score (geometric mean of the metric rank scores).
TASK_SCORE = "score"
#: Pseudo-task and metric name of the mean task score across tasks.
OVERALL_TASK = "overall"
OVERALL_METRIC = "mean"


@dataclass(frozen=True)
class RankConfig:
    """Ranking parameters.

    ``p_threshold``: significance level of the rank-sum test; ``hard_fraction``: share of items
    that form the hard set for DSC30/TRE30; ``initial_name``: the zero-field method;
    ``not_for_initial``: rank metrics in which the initial method counts as missing.
    """

    p_threshold: float = 0.05
    hard_fraction: float = 0.3
    initial_name: str = "Initial"
    not_for_initial: tuple[str, ...] = ("SDlogJ", "runtime")


def fill_missing(values: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """Drop items missing for every method, give the remaining NaNs the worst value.

    ``values``: ``items x methods`` floats (NaN = missing; ``inf`` is a real, bad value such
    as the HD95 of a vanished structure). Returns a new table without NaN.
    """
    kept = values.loc[values.notna().any(axis=1)]
    worst = -np.inf if higher_is_better else np.inf
    return kept.fillna(worst)


def min_attainable_p(n1: int, n2: int) -> float:
    """Smallest two-sided p-value ``scipy.stats.ranksums`` can give for samples of ``n1`` and ``n2``.

    Reached when every value of one sample ranks above every value of the other (no ties);
    1.0 when a sample is empty. See the module docstring for the formula.
    """
    if n1 < 1 or n2 < 1:
        return 1.0
    z_max = math.sqrt(3.0 * n1 * n2 / (n1 + n2 + 1))
    return float(2.0 * stats.norm.sf(z_max))


def significance_counts(values: pd.DataFrame, higher_is_better: bool, p_threshold: float = 0.05) -> pd.Series:
    """For each method, the number of methods significantly better than it.

    ``values``: ``items x methods`` without NaN (see :func:`fill_missing`). Two methods are
    compared with ``scipy.stats.ranksums`` on their item values (unpaired, as the challenge
    does); the first is better if its values rank better and ``p < p_threshold``.
    """
    oriented = values.to_numpy(dtype=np.float64)
    if not higher_is_better:
        oriented = -oriented
    n = oriented.shape[1]
    better = np.zeros((n, n), dtype=bool)  # better[i, j]: method i significantly better than j
    for i in range(n):
        for j in range(i + 1, n):
            result = stats.ranksums(oriented[:, i], oriented[:, j])
            if result.pvalue < p_threshold:
                better[i, j] = result.statistic > 0
                better[j, i] = result.statistic < 0
    return pd.Series(better.sum(axis=0), index=values.columns, dtype=np.int64)


def rank_from_counts(counts: pd.Series) -> pd.Series:
    """Map "number of methods better than me" to rank scores in ``[0.1, 1]``.

    Methods are ordered from most beaten to least beaten and take the values of
    ``linspace(0.1, 1, N)`` in that order; tied methods share the average of their values. A
    single method scores 1.0.
    """
    n = len(counts)
    if n == 1:
        return pd.Series(1.0, index=counts.index)
    # 1-based position: 1 = beaten by the most methods; ties get the average position.
    position = stats.rankdata(-counts.to_numpy(dtype=np.float64), method="average")
    scale = np.linspace(0.1, 1.0, n)
    return pd.Series(np.interp(position - 1.0, np.arange(n), scale), index=counts.index)


def metric_rank(values: pd.DataFrame, higher_is_better: bool, p_threshold: float = 0.05) -> pd.Series:
    """Rank scores of the methods (columns) of one ``items x methods`` table without NaN."""
    return rank_from_counts(significance_counts(values, higher_is_better, p_threshold))


def hard_items(initial_values: pd.Series, higher_is_better: bool, fraction: float = 0.3) -> pd.Index:
    """The ``round(fraction * n)`` items (at least one) where the initial method is worst.

    ``initial_values``: the initial method's value per item, without NaN. Ties keep item order.
    """
    k = max(1, int(round(len(initial_values) * fraction)))
    v = initial_values.to_numpy(dtype=np.float64)
    order = np.argsort(v if higher_is_better else -v, kind="stable")  # worst first
    return initial_values.index[order[:k]]


def geometric_mean(scores: pd.DataFrame) -> pd.Series:
    """Row-wise geometric mean of positive scores, ignoring NaN (NaN if a row has none)."""
    logs = np.log(scores.to_numpy(dtype=np.float64))
    count = np.sum(~np.isnan(logs), axis=1)
    total = np.nansum(logs, axis=1)
    mean = np.divide(total, count, out=np.full(len(count), np.nan), where=count > 0)
    return pd.Series(np.exp(mean), index=scores.index)


def ranked_tables(
    items: Mapping[str, pd.DataFrame], methods: Sequence[str], config: RankConfig = RankConfig()
) -> dict[str, pd.DataFrame]:
    """The ``items x methods`` tables the rank test compares, per rank metric of one task.

    ``items``: base metric name (``TRE``, ``DSC``, ``HD95``, ``SDlogJ``, ``runtime``) ->
    ``items x methods`` values with NaN for missing; methods absent from a table count as
    missing everywhere. Returns rank metric -> table without NaN (missing = worst, the initial
    method missing where ``config.not_for_initial``, DSC30/TRE30 restricted to the hard items),
    in :data:`HIGHER_IS_BETTER` order; metrics without data are left out, and DSC30/TRE30 when
    ``config.initial_name`` is not among ``methods``.
    """
    methods = list(methods)
    initial = config.initial_name if config.initial_name in methods else None
    tables: dict[str, pd.DataFrame] = {}
    for metric, higher in HIGHER_IS_BETTER.items():
        base = HARD_OF.get(metric, metric)
        if base not in items:
            continue
        if metric in HARD_OF and initial is None:
            continue  # (rank_task says so)
        values = items[base].reindex(columns=methods)
        if initial is not None and metric in config.not_for_initial:
            values = values.assign(**{initial: np.nan})
        values = fill_missing(values, higher)
        if values.empty:
            continue
        if metric in HARD_OF:
            values = values.loc[hard_items(values[initial], higher, config.hard_fraction)]
        tables[metric] = values
    return tables


def rank_task(
    items: Mapping[str, pd.DataFrame], methods: Sequence[str], config: RankConfig = RankConfig()
) -> pd.DataFrame:
    """Rank scores of one task: ``methods x metrics`` plus the :data:`TASK_SCORE` column.

    ``items`` as in :func:`ranked_tables`, whose metrics form the columns.
    """
    if config.initial_name not in methods:
        for metric in (m for m, base in HARD_OF.items() if base in items):
            log.warning("no %s method: %s not ranked", config.initial_name, metric)
    columns = {
        metric: metric_rank(values, HIGHER_IS_BETTER[metric], config.p_threshold)
        for metric, values in ranked_tables(items, methods, config).items()
    }
    table = pd.DataFrame(columns, index=pd.Index(list(methods), name="method"), dtype=np.float64)
    table[TASK_SCORE] = geometric_mean(table)
    return table


def rank_power(
    items_by_task: Mapping[str, Mapping[str, pd.DataFrame]],
    methods: Sequence[str],
    config: RankConfig = RankConfig(),
) -> pd.DataFrame:
    """Whether each task's rank metrics can separate methods at all, tidy.

    Columns ``task, metric, n_items`` (values per method the test compares), ``min_p``
    (:func:`min_attainable_p` for those sample sizes) and ``separable`` (``min_p <
    config.p_threshold``; if not, every method ties in that metric whatever the values).
    """
    rows = []
    for task, items in items_by_task.items():
        for metric, values in ranked_tables(items, methods, config).items():
            p = min_attainable_p(len(values), len(values))
            rows.append({"task": task, "metric": metric, "n_items": len(values), "min_p": p})
    power = pd.DataFrame(rows, columns=["task", "metric", "n_items", "min_p"])
    return power.assign(separable=power["min_p"] < config.p_threshold)


def rank_scores(
    items_by_task: Mapping[str, Mapping[str, pd.DataFrame]],
    methods: Sequence[str],
    config: RankConfig = RankConfig(),
) -> pd.DataFrame:
    """Rank scores of every task, tidy: columns ``method, task, metric, value``.

    One row per method, task and rank metric, one :data:`TASK_SCORE` row per method and task,
    and one row per method with task :data:`OVERALL_TASK`, metric :data:`OVERALL_METRIC`: the
    mean task score across tasks (a method missing a task has the worst values there).
    """
    rows: list[dict[str, object]] = []
    task_scores: dict[str, pd.Series] = {}
    for task, items in items_by_task.items():
        table = rank_task(items, methods, config)
        task_scores[task] = table[TASK_SCORE]
        for metric in table.columns:
            rows += [
                {"method": m, "task": task, "metric": metric, "value": float(table.at[m, metric])} for m in methods
            ]
    if task_scores:
        overall = pd.DataFrame(task_scores).mean(axis=1, skipna=True)
        rows += [
            {"method": m, "task": OVERALL_TASK, "metric": OVERALL_METRIC, "value": float(overall[m])} for m in methods
        ]
    return pd.DataFrame(rows, columns=["method", "task", "metric", "value"])
