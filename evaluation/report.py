"""Rendering of the leaderboard: Markdown tables, a self-contained HTML page, box plots.

Input are the frames of ``evaluation.leaderboard``: the wide table (rows = methods, columns =
MultiIndex ``(task, metric)``, NaN = "-") and the tidy rank scores (``method, task, metric,
value``, see ``evaluation.ranking.rank_scores``). Plots use matplotlib's object API with the Agg
canvas (no pyplot, no global backend state) and are embedded as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.ranking import OVERALL_METRIC, OVERALL_TASK, TASK_SCORE

#: Decimals per table metric (evaluator name or table column name); others use 3.
DECIMALS = {"TRE_lm": 2, "TRE_kp": 2, "DSC": 3, "SDlogJ": 3, "runtime": 2}
#: Column header per table metric; others use the metric name.
HEADER = {"TRE_lm": "TRE_lm (mm)", "TRE_kp": "TRE_kp (mm)", "runtime": "s"}
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eef; }
tr:nth-child(even) td { background: #f7f7f7; }
figure { display: inline-block; margin: 1em; }
.notes { color: #555; font-size: 0.9em; }
"""

Grid = tuple[list[str], list[list[str]]]  # header, rows of cells (already formatted text)


def fmt(value: float, decimals: int = 3) -> str:
    """A number with fixed decimals; "-" for NaN, "inf" for infinity."""
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}"


def table_grid(table: pd.DataFrame) -> Grid:
    """The leaderboard table as text cells, header ``"{task} {metric}"`` (runtime as "s")."""
    header = ["Method"] + [f"{task} {HEADER.get(metric, metric)}" for task, metric in table.columns]
    rows = [
        [str(method)]
        + [fmt(float(v), DECIMALS.get(metric, 3)) for (_, metric), v in zip(table.columns, row, strict=True)]
        for method, row in zip(table.index, table.to_numpy(), strict=True)
    ]
    return header, rows


def rank_order(ranks: pd.DataFrame) -> list[str]:
    """Methods by mean task score, best first (stable for ties; NaN last)."""
    overall = ranks.loc[(ranks["task"] == OVERALL_TASK) & (ranks["metric"] == OVERALL_METRIC)]
    scores = overall.set_index("method")["value"].reindex(pd.unique(ranks["method"]))
    return list(scores.sort_values(ascending=False, kind="stable", na_position="last").index)


def rank_summary_grid(ranks: pd.DataFrame) -> Grid:
    """Place, method, task score per task, mean task score."""
    order = rank_order(ranks)
    tasks = [t for t in pd.unique(ranks["task"]) if t != OVERALL_TASK]
    cell = ranks.set_index(["method", "task", "metric"])["value"]
    header = ["#", "Method"] + [str(t) for t in tasks] + ["mean"]
    rows = [
        [str(place), str(method)]
        + [fmt(cell.get((method, t, TASK_SCORE), math.nan)) for t in tasks]
        + [fmt(cell.get((method, OVERALL_TASK, OVERALL_METRIC), math.nan))]
        for place, method in enumerate(order, start=1)
    ]
    return header, rows


def rank_task_grid(ranks: pd.DataFrame, task: str) -> Grid:
    """One task's metric rank scores and task score, methods in overall rank order."""
    sub = ranks.loc[ranks["task"] == task]
    metrics = list(pd.unique(sub["metric"]))
    cell = sub.set_index(["method", "metric"])["value"]
    header = ["Method"] + [str(m) for m in metrics]
    rows = [[str(method)] + [fmt(cell.get((method, m), math.nan)) for m in metrics] for method in rank_order(ranks)]
    return header, rows


def markdown(grid: Grid) -> str:
    """A GitHub Markdown table ("|" in cells escaped)."""
    header, rows = grid

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def html_table(grid: Grid) -> str:
    """An HTML table with escaped cells."""
    header, rows = grid
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>\n" for r in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _rank_tasks(ranks: pd.DataFrame) -> list[str]:
    return [str(t) for t in pd.unique(ranks["task"]) if t != OVERALL_TASK]


def render_markdown(table: pd.DataFrame, ranks: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    """The whole Markdown report: leaderboard table, rank summary, per-task rank tables, notes."""
    parts = ["## Leaderboard", "", markdown(table_grid(table)), ""]
    if not ranks.empty:
        parts += [
            "## Rank scores (geometric mean per task; mean over tasks)",
            "",
            markdown(rank_summary_grid(ranks)),
            "",
        ]
        for task in _rank_tasks(ranks):
            parts += [f"### {task}", "", markdown(rank_task_grid(ranks, task)), ""]
    parts += [f"- {n}" for n in notes]
    return "\n".join(parts).rstrip() + "\n"


def boxplot_png(task: str, metric: str, values: Mapping[str, np.ndarray]) -> str:
    """Box plot of per-case values, one box per method; base64-encoded PNG.

    ``values``: method -> per-case values of ``metric`` (non-finite values are left out; a
    method without any is shown as an empty slot).
    """
    names = list(values)
    data = [np.asarray(values[m], dtype=np.float64) for m in names]
    data = [d[np.isfinite(d)] for d in data]
    fig = Figure(figsize=(1.6 + 0.9 * max(len(names), 1), 3.4), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = [i + 1 for i, d in enumerate(data) if d.size]
    if positions:
        ax.boxplot([d for d in data if d.size], positions=positions, widths=0.6, showfliers=False)
        for pos in positions:
            d = data[pos - 1]
            offsets = np.linspace(-0.15, 0.15, d.size) if d.size > 1 else np.zeros(1)
            ax.plot(pos + offsets, d, "o", markersize=3, alpha=0.6, color="tab:blue")
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set_xlim(0.5, len(names) + 0.5)
    ax.set_ylabel(HEADER.get(metric, metric))
    ax.set_title(f"{task}: per-case {metric}")
    ax.grid(axis="y", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(table: pd.DataFrame, ranks: pd.DataFrame, plots: Mapping[str, str], notes: Sequence[str] = ()) -> str:
    """A self-contained HTML page: inline CSS, the tables, the box plots as data-URI PNGs.

    ``plots``: task -> base64 PNG (see :func:`boxplot_png`).
    """
    parts = ["<h1>Leaderboard</h1>", html_table(table_grid(table))]
    if not ranks.empty:
        parts += ["<h2>Rank scores</h2>", "<p>Geometric mean of the metric rank scores per task; mean over tasks.</p>"]
        parts.append(html_table(rank_summary_grid(ranks)))
        for task in _rank_tasks(ranks):
            parts += [f"<h3>{html.escape(task)}</h3>", html_table(rank_task_grid(ranks, task))]
    if plots:
        parts.append("<h2>Per-case accuracy</h2>")
        for task, png in plots.items():
            alt = html.escape(f"box plot of per-case accuracy, task {task}")
            parts.append(
                f'<figure><img src="data:image/png;base64,{png}" alt="{alt}"><figcaption>{html.escape(task)}</figcaption></figure>'
            )
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Learn2Reg leaderboard</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
