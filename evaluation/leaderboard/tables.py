"""The leaderboard's tables as text cells, ready for Markdown or HTML (see :mod:`evaluation.leaderboard.render`).

Three kinds, built from a :class:`evaluation.leaderboard.board.Board`:

- :func:`main_table`: the seed paper's Table 1 (per task accuracy, SDlogJ, folding, runtime);
- :func:`rank_summary`: place, task scores, mean task score;
- :func:`task_table`: one task's metric values (mean ± std, n) beside their rank scores (DSC30 and
  TRE30 beside the values of the hard items they compare): every rank score that enters the task
  score stands beside the values it ranks, for every metric the task is ranked on.

Every metric column says which direction is better (:data:`ARROW`); the best value of a column
is flagged (all of them on a tie at the shown precision; the initial method's SDlogJ / folding /
runtime and a method's missing values or metric ranks never count, while task scores and their
mean, the ranking's verdict, do even when computed with missing = worst); a method's gaps are
marked in every cell they touch
(:data:`MISSING` "†": nothing there, ranked as worst; :data:`INCOMPLETE` "‡": fewer cases than
other methods) with a footnote naming method and task. Rank metrics that cannot separate any
two methods with the task's sample sizes carry :data:`NO_POWER` "°" and a footnote.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from evaluation.leaderboard import board as bd
from evaluation.leaderboard.ranking import HARD_OF, HIGHER_IS_BETTER, OVERALL_METRIC, OVERALL_TASK, TASK_SCORE

ARROW = {True: "↑", False: "↓"}  # higher is better -> arrow
MISSING, INCOMPLETE, NO_POWER = "†", "‡", "°"
#: Decimals per table metric; others use 3. Folding is shown in percent.
DECIMALS = {"TRE_lm": 2, "TRE_kp": 2, "TRE30": 2, "DSC": 3, "DSC30": 3, "SDlogJ": 3, "runtime": 2, "HD95": 2,
            "folding_fraction": 3}
#: Column label per table metric (name and unit); others use the metric name.
LABEL = {"TRE_lm": "TRE_lm (mm)", "TRE_kp": "TRE_kp (mm)", "HD95": "HD95 (vox)", "runtime": "s", "folding_fraction": "fold (%)"}
#: Group label per metric in the per-task tables where it differs from :data:`LABEL`.
TASK_LABEL = {"runtime": "runtime (s)"}
#: Longer description per table metric (HTML tooltips, legend).
DESCRIPTION = {
    "TRE_lm": "target registration error of the landmarks, mm",
    "TRE_kp": "target registration error of the keypoints, mm",
    "DSC": "Dice overlap of the labels (mean over labels per case)",
    "HD95": "95th percentile Hausdorff distance, voxels (official spacing 1)",
    "SDlogJ": "std of log det J (official, with its +3 quirk)",
    "folding_fraction": "voxels with det(I + grad u) <= 0, % of the field (ours; the official num_foldings is always 0)",
    "runtime": "runtime per pair, seconds",
    "DSC30": "Dice of the 30 % (case, label) items where Initial is worst: the items the DSC30 rank compares",
    "TRE30": "TRE of the 30 % landmarks where Initial is worst: the items the TRE30 rank compares, mm",
}
#: Rank metric -> table metric whose values it ranks (TRE: the task's TRE metric).
RANK_SOURCE = {"DSC": "DSC", "DSC30": "DSC", "HD95": "HD95", "SDlogJ": "SDlogJ", "runtime": "runtime"}


@dataclass(frozen=True)
class Column:
    """A column header: ``label`` under an optional ``group`` (a task or a metric), its direction
    (``higher`` True/False; None = not a metric), footnote ``marks`` and a ``title`` (tooltip)."""

    label: str
    higher: bool | None = None
    group: str = ""
    marks: str = ""
    title: str = ""
    flat_label: str = ""  # the label in one-line headers, instead of "{group} {label}"

    @property
    def arrow(self) -> str:
        return "" if self.higher is None else ARROW[self.higher]

    @property
    def flat(self) -> str:
        """One-line header: group, label, arrow, marks (the group is not repeated)."""
        name = self.flat_label or (f"{self.group} {self.label}" if self.group else self.label)
        return " ".join(p for p in (name, self.arrow) if p) + self.marks


@dataclass(frozen=True)
class Cell:
    """A cell: ``text``, an optional small ``detail`` (such as ``n=3``), footnote ``marks``;
    ``spread`` (such as ``± 0.011``) belongs to the text: Markdown writes it on the text's line,
    HTML on the small line of the detail (narrower columns)."""

    text: str
    detail: str = ""
    marks: str = ""
    best: bool = False
    missing: bool = False
    spread: str = ""


@dataclass(frozen=True)
class Table:
    """Columns, rows of cells (one per column), footnotes to print under the table."""

    columns: list[Column]
    rows: list[list[Cell]]
    footnotes: list[str] = field(default_factory=list)


def fmt(value: float, decimals: int = 3) -> str:
    """A number with fixed decimals; "-" for NaN, "inf" for infinity."""
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}"


def fmt_metric(metric: str, value: float) -> str:
    """A table metric's value; folding as a percentage ("<0.001" rather than 0 for any folding)."""
    decimals = DECIMALS.get(metric, 3)
    if metric == bd.FOLDING and math.isfinite(value):
        percent = 100.0 * value
        return f"<{10.0**-decimals:.{decimals}f}" if 0 < percent < 0.5 * 10.0**-decimals else f"{percent:.{decimals}f}"
    return fmt(value, decimals)


def higher_is_better(metric: str) -> bool:
    return metric in ("DSC", "DSC30")


def best_flags(values: Sequence[float | None], higher: bool, text: Callable[[float], str]) -> list[bool]:
    """Which entries are best: the best finite value and every value shown as the same text.

    ``values``: None for cells that do not compete (missing, not applicable).
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return [False] * len(values)
    best = text(max(finite) if higher else min(finite))
    return [v is not None and math.isfinite(v) and text(v) == best for v in values]


def with_best(rows: list[list[Cell]], column: int, flags: Sequence[bool]) -> None:
    """Set ``best`` of one column's cells in place."""
    for row, flag in zip(rows, flags, strict=True):
        if flag:
            row[column] = dataclasses.replace(row[column], best=True)


class Gaps:
    """Lookup of :class:`evaluation.leaderboard.board.Gap` marks by method, task and table metric."""

    def __init__(self, gaps: Sequence[bd.Gap]) -> None:
        self.gaps = list(gaps)

    def mark(self, method: str, task: str, metric: str | None = None) -> str:
        """"†", "‡" or "" for one cell (``metric`` None: anything on the task)."""
        hits = [
            g for g in self.gaps
            if g.method == method and g.task == task and (g.metric is None or metric is None or bd.table_name(g.metric) == metric)
        ]  # fmt: skip
        if metric is None:
            hits = [g for g in hits if g.ranked]
        return MISSING if any(g.missing for g in hits) else INCOMPLETE if hits else ""

    def footnotes(self, task: str | None = None) -> list[str]:
        """One footnote per gap (of one task if given), with its mark."""
        return [f"{MISSING if g.missing else INCOMPLETE} {g.describe()}." for g in self.gaps if task in (None, g.task)]


def main_table(board: bd.Board) -> Table:
    """Table 1: method rows in input order; per task accuracy, SDlogJ, folding (%), runtime."""
    table, initial, gaps = board.table, board.config.initial_name, Gaps(board.gaps)
    columns = [Column("Method")]
    columns += [
        Column(LABEL.get(m, m), higher_is_better(m), group=task, title=DESCRIPTION.get(m, "")) for task, m in table.columns
    ]
    rows, competing = [], []
    for method, values in zip(table.index, table.to_numpy(), strict=True):
        row, entries = [Cell(str(method))], []
        for (task, metric), value in zip(table.columns, values, strict=True):
            by_rule = method == initial and metric in {bd.table_name(m) for m in bd.NOT_FOR_INITIAL}
            mark = "" if by_rule else gaps.mark(method, task, metric)
            missing = mark == MISSING and math.isnan(value)
            row.append(Cell("missing" if missing else fmt_metric(metric, value), marks=mark, missing=missing))
            entries.append(None if by_rule or mark == MISSING else float(value))
        rows.append(row)
        competing.append(entries)
    for j, (_, metric) in enumerate(table.columns):
        flags = best_flags([c[j] for c in competing], higher_is_better(metric), functools.partial(fmt_metric, metric))
        with_best(rows, j + 1, flags)
    return Table(columns, rows, gaps.footnotes())


def rank_order(ranks: pd.DataFrame) -> list[str]:
    """Methods by mean task score, best first (stable for ties; NaN last)."""
    overall = ranks.loc[(ranks["task"] == OVERALL_TASK) & (ranks["metric"] == OVERALL_METRIC)]
    scores = overall.set_index("method")["value"].reindex(pd.unique(ranks["method"]))
    return list(scores.sort_values(ascending=False, kind="stable", na_position="last").index)


def rank_tasks(ranks: pd.DataFrame) -> list[str]:
    """Tasks with rank scores, in their order."""
    return [str(t) for t in pd.unique(ranks["task"]) if t != OVERALL_TASK]


def _worst(marks: Sequence[str]) -> str:
    return MISSING if MISSING in marks else INCOMPLETE if INCOMPLETE in marks else ""


def rank_summary(board: bd.Board) -> Table:
    """Place, method, task score per task, mean task score (methods by mean task score)."""
    ranks, gaps = board.ranks, Gaps(board.gaps)
    tasks = rank_tasks(ranks)
    cell = ranks.set_index(["method", "task", "metric"])["value"]
    title = "task score: geometric mean of the task's metric rank scores"
    columns = [Column("#"), Column("Method")] + [Column(t, True, title=title) for t in tasks]
    columns.append(Column(OVERALL_METRIC, True, title="mean of the task scores"))
    rows, competing = [], []
    for place, method in enumerate(rank_order(ranks), start=1):
        marks = [gaps.mark(method, t) for t in tasks]
        values = [cell.get((method, t, TASK_SCORE), math.nan) for t in tasks]
        values.append(cell.get((method, OVERALL_TASK, OVERALL_METRIC), math.nan))
        marks.append(_worst(marks))
        rows.append([Cell(str(place)), Cell(str(method))] + [Cell(fmt(v), marks=k) for v, k in zip(values, marks, strict=True)])
        competing.append([float(v) for v in values])  # scores by the rule (missing = worst) compete, marked
    for j in range(len(tasks) + 1):
        with_best(rows, j + 2, best_flags([c[j] for c in competing], True, fmt))
    footnotes = [
        f"{MISSING if g.missing else INCOMPLETE} Computed with missing = worst: {g.describe()}."
        for g in board.gaps
        if g.ranked
    ]
    weak = board.power.loc[~board.power["separable"]]
    if not weak.empty:
        where = "; ".join(f"{t} ({', '.join(g['metric'])})" for t, g in weak.groupby("task", sort=False))
        footnotes.append(f"{NO_POWER} n too small to separate methods in: {where} (see the task tables).")
    return Table(columns, rows, footnotes)


def power_footnote(power: pd.DataFrame, p_threshold: float) -> list[str]:
    """One footnote per group of a task's rank metrics that cannot separate methods."""
    notes = []
    for (n, p), group in power.loc[~power["separable"]].groupby(["n_items", "min_p"], sort=False):
        names = ", ".join(group["metric"])
        notes.append(
            f"{NO_POWER} n too small to separate methods: {names} (n = {n} per method): the smallest attainable"
            f" rank-sum p is {p:.3f} ≥ {p_threshold:g}, so every method ties there whatever the values"
            " (equal rank scores do not mean equal quality)."
        )
    return notes


def _task_columns(
    board: bd.Board, task: str, metrics: list[str], rank_metrics: list[str], hard_values: set[str]
) -> list[tuple[Column, str, str]]:
    """Per-task columns as (column, kind "value"/"hard"/"rank"/"score", metric): each metric's values
    then its rank scores; DSC30/TRE30 ranks follow the values of their hard items ("hard")."""
    acc = bd.table_name(board.accuracy.get(task) or "")
    power = board.power.loc[board.power["task"] == task].set_index("metric")
    out: list[tuple[Column, str, str]] = [(Column("Method"), "name", "")]
    for metric in metrics:
        group = TASK_LABEL.get(metric, LABEL.get(metric, metric))
        title = DESCRIPTION.get(metric, "") + "; mean ± population std over cases, n cases"
        out.append((Column("mean ± std (n)", higher_is_better(metric), group, title=title), "value", metric))
        for rank in rank_metrics:
            if RANK_SOURCE.get(rank, acc) != metric:
                continue
            weak = rank in power.index and not bool(power.at[rank, "separable"])
            hard = rank in HARD_OF
            if hard and rank in hard_values:
                name = f"{rank} mean ± std (n)"
                hint = DESCRIPTION.get(rank, "") + "; mean ± population std over those items, n items"
                out.append((Column(name, higher_is_better(rank), group, title=hint, flat_label=name), "hard", rank))
            label = f"{rank} rank" if hard else "rank"
            note = f"rank score of {rank} (1 = best, 0.1 = worst)" + ("; the 30 % items hardest for Initial" if hard else "")
            column = Column(label, True, group, NO_POWER if weak else "", note, flat_label=label if hard else "")
            out.append((column, "rank", rank))
    out.append((Column(TASK_SCORE, True, title="geometric mean of the rank scores"), "score", TASK_SCORE))
    return out


def task_table(board: bd.Board, task: str) -> Table:
    """One task: per metric the values (mean ± std, n) and the rank scores; rows in rank order."""
    initial, gaps = board.config.initial_name, Gaps(board.gaps)
    stats = board.stats.loc[board.stats["task"] == task].set_index(["method", "metric"])
    ranks = board.ranks.loc[board.ranks["task"] == task].set_index(["method", "metric"])["value"]
    shown = list(pd.unique(stats.index.get_level_values("metric")))
    metrics = [m for m in shown if m not in HARD_OF]
    rank_metrics = [m for m in pd.unique(ranks.index.get_level_values("metric")) if m in HIGHER_IS_BETTER]
    spec = _task_columns(board, task, metrics, rank_metrics, {m for m in shown if m in HARD_OF})
    acc = bd.table_name(board.accuracy.get(task) or "")
    not_initial = {bd.table_name(m) for m in bd.NOT_FOR_INITIAL} | set(board.config.not_for_initial)
    rows: list[list[Cell]] = []
    competing: list[list[float | None]] = []
    for method in rank_order(board.ranks):
        row: list[Cell] = []
        entries: list[float | None] = []
        for _, kind, metric in spec:
            source = RANK_SOURCE.get(metric, acc) if kind in ("rank", "hard") else metric
            by_rule = method == initial and source in not_initial
            if kind == "name":
                row.append(Cell(str(method)))
                entries.append(None)
                continue
            mark = gaps.mark(method, task) if kind == "score" else "" if by_rule else gaps.mark(method, task, source)
            if kind in ("value", "hard"):
                cell, value = _value_cell(stats, method, metric, by_rule, mark, "items" if kind == "hard" else "")
            else:
                value = float(ranks.get((method, metric), math.nan))
                cell = Cell(fmt(value), marks=mark)
            row.append(cell)
            entries.append(None if by_rule or (mark == MISSING and kind != "score") else value)
        rows.append(row)
        competing.append(entries)
    for j, (_, kind, metric) in enumerate(spec):
        if kind == "name":
            continue
        values = kind in ("value", "hard")
        higher = higher_is_better(metric) if values else True
        text = (lambda v, m=metric: fmt_metric(m, v)) if values else fmt
        with_best(rows, j, best_flags([c[j] for c in competing], higher, text))
    power = board.power.loc[board.power["task"] == task]
    footnotes = gaps.footnotes(task) + power_footnote(power, board.config.p_threshold)
    return Table([c for c, _, _ in spec], rows, footnotes)


def _value_cell(stats: pd.DataFrame, method: str, metric: str, by_rule: bool, mark: str, unit: str = "") -> tuple[Cell, float]:
    """The "mean ± std" cell of one method and metric and its mean (NaN if none); ``unit`` after n (e.g. "items")."""
    if by_rule or (method, metric) not in stats.index:
        return Cell("-"), math.nan
    mean, std, n = (stats.at[(method, metric), k] for k in ("mean", "std", "n"))
    if int(n) == 0 and math.isnan(mean):
        return Cell("missing" if mark == MISSING else "-", marks=mark, missing=mark == MISSING), math.nan
    spread = "" if math.isnan(std) else f"± {fmt_metric(metric, std)}"
    return Cell(fmt_metric(metric, mean), f"n={int(n)}" + (f" {unit}" if unit else ""), mark, spread=spread), float(mean)
