"""Rendering of the leaderboard: Markdown, a self-contained HTML page, box plots.

Input is a :class:`evaluation.leaderboard.board.Board`; its tables come from :mod:`evaluation.leaderboard.tables`.
Markdown: GitHub tables with one-line headers ("{task} {metric} ↑"), best values in bold, marks
and footnotes as text. HTML: the same tables with two-row headers (task or metric groups), best
cells of class ``best``, missing ones of class ``missing``, each table in a horizontally
scrollable wrapper inside a page at most 1366 px wide; inline CSS, plots as data-URI PNGs, no
script and nothing fetched from the network. Plots use matplotlib's object API with the Agg
canvas (no pyplot, no global backend state).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.leaderboard import tables
from evaluation.leaderboard.board import Board
from evaluation.leaderboard.tables import ARROW, DESCRIPTION, LABEL, Cell, Table

CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
main { max-width: 1366px; margin: 0 auto; padding: 0.5em 1.2em; box-sizing: border-box; }
h1 { margin: 0.4em 0; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 0.6em 0; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: right; vertical-align: top; }
td { white-space: nowrap; }
th { background: #eef; font-weight: 600; }
th.group { text-align: center; background: #dde; }
th.name, td.name { text-align: left; }
table.board th, table.board td, table.task th, table.task td { padding: 0.25em 0.4em; }
tbody tr:nth-child(even) td { background: #f7f7f7; }
tbody tr td.best { font-weight: bold; background: #dcefd9; }
td.missing { color: #a00; font-style: italic; }
.n { display: block; font-size: 0.8em; color: #666; font-weight: normal; white-space: normal; }
.marks { color: #a00; }
.footnotes, .notes { color: #444; font-size: 0.85rem; margin: 0.2em 0 1em; padding-left: 1.2em; }
figure { display: inline-block; margin: 0.5em; max-width: 100%; }
img { max-width: 100%; height: auto; }
@media (max-width: 1000px) { main { padding: 0.5em; } table { font-size: 0.75rem; } }
"""


def markdown(table: Table) -> str:
    """A GitHub Markdown table ("|" in cells escaped; best cells bold), then its footnotes as a list."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    def text(cell: Cell) -> str:
        value = f"{cell.text} {cell.spread}" if cell.spread else cell.text
        core = f"**{value}**" if cell.best else value
        return core + cell.marks + (f" ({cell.detail})" if cell.detail else "")

    lines = [line([c.flat for c in table.columns]), "|" + "---|" * len(table.columns)]
    lines += [line([text(c) for c in row]) for row in table.rows]
    if table.footnotes:
        lines += [""] + [f"- {n}" for n in table.footnotes]
    return "\n".join(lines)


def _th(column: tables.Column, attrs: str = "") -> str:
    if column.higher is None:
        attrs += ' class="name"'
    title = f' title="{html.escape(column.title)}"' if column.title else ""
    arrow = f'\u00a0<span class="dir">{column.arrow}</span>' if column.arrow else ""  # no break before the arrow
    marks = f'<span class="marks">{html.escape(column.marks)}</span>' if column.marks else ""
    return f"<th{attrs}{title}>{html.escape(column.label)}{arrow}{marks}</th>"


def _header(columns: Sequence[tables.Column]) -> str:
    """One header row, or two when columns have groups (group cells span their columns)."""
    if not any(c.group for c in columns):
        return "<tr>" + "".join(_th(c) for c in columns) + "</tr>"
    top, bottom, i = [], [], 0
    while i < len(columns):
        group = columns[i].group
        if not group:
            top.append(_th(columns[i], attrs=' rowspan="2"'))
            i += 1
            continue
        span = 1
        while i + span < len(columns) and columns[i + span].group == group:
            span += 1
        top.append(f'<th class="group" colspan="{span}" scope="colgroup">{html.escape(group)}</th>')
        bottom += [_th(c) for c in columns[i : i + span]]
        i += span
    return "<tr>" + "".join(top) + "</tr>\n<tr>" + "".join(bottom) + "</tr>"


def _td(cell: Cell, column: tables.Column) -> str:
    flags = (("name", column.higher is None), ("best", cell.best), ("missing", cell.missing))
    classes = " ".join(k for k, on in flags if on)
    attrs = f' class="{classes}"' if classes else ""
    marks = f'<span class="marks">{html.escape(cell.marks)}</span>' if cell.marks else ""
    # "± 0.011 · n=4" under the value; it may wrap at the dot when a wide table needs the room
    small = " · ".join(x.replace(" ", "\u00a0") for x in (cell.spread, cell.detail) if x)
    detail = f'<span class="n">{html.escape(small)}</span>' if small else ""
    return f"<td{attrs}>{html.escape(cell.text)}{marks}{detail}</td>"


def html_table(table: Table, css_class: str) -> str:
    """An HTML table in a scrolling wrapper, then its footnotes; every text escaped."""
    body = "".join(
        "<tr>" + "".join(_td(c, k) for c, k in zip(row, table.columns, strict=True)) + "</tr>\n" for row in table.rows
    )
    parts = [
        f'<div class="table-wrap"><table class="{css_class}">',
        f"<thead>\n{_header(table.columns)}\n</thead>",
        f"<tbody>\n{body}</tbody>",
        "</table></div>",
    ]
    if table.footnotes:
        parts.append('<ul class="footnotes">' + "".join(f"<li>{html.escape(n)}</li>" for n in table.footnotes) + "</ul>")
    return "\n".join(parts)


def legend(board: Board) -> list[str]:
    """General notes: the board's caveats, what arrows and bold mean, the metrics' definitions."""
    shown = {m for _, m in board.table.columns} | set(board.stats["metric"])
    defs = "; ".join(f"{LABEL.get(m, m)}: {DESCRIPTION[m]}" for m in DESCRIPTION if m in shown)
    return [
        *board.notes,
        f"{ARROW[True]} higher is better, {ARROW[False]} lower is better; bold = best in its column"
        " (every tied value at the shown precision; missing values, and rank scores of metrics a method lacks, never count).",
        f"Metrics: {defs}.",
    ]


def render_markdown(board: Board) -> str:
    """The whole Markdown report: Table 1, rank summary, per-task tables, notes."""
    parts = ["## Leaderboard", "", markdown(tables.main_table(board)), ""]
    if not board.ranks.empty:
        parts += ["## Rank scores (geometric mean per task; mean over tasks)", "", markdown(tables.rank_summary(board)), ""]
        for task in tables.rank_tasks(board.ranks):
            parts += [f"### {task}", "", markdown(tables.task_table(board, task)), ""]
    parts += [f"- {n}" for n in legend(board)]
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
    ax.set_ylabel(f"{LABEL.get(metric, metric)} {ARROW[tables.higher_is_better(metric)]}")
    ax.set_title(f"{task}: per-case {metric}")
    ax.grid(axis="y", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(board: Board, plots: Mapping[str, str]) -> str:
    """A self-contained HTML page: inline CSS, the tables, the box plots as data-URI PNGs.

    ``plots``: task -> base64 PNG (see :func:`boxplot_png`).
    """
    parts = ["<h1>Leaderboard</h1>", html_table(tables.main_table(board), "board")]
    if not board.ranks.empty:
        parts += ["<h2>Rank scores</h2>", "<p>Geometric mean of the metric rank scores per task; mean over tasks.</p>"]
        parts.append(html_table(tables.rank_summary(board), "ranks"))
        for task in tables.rank_tasks(board.ranks):
            parts += [f"<h3>{html.escape(task)}</h3>", html_table(tables.task_table(board, task), "task")]
    if plots:
        parts.append("<h2>Per-case accuracy</h2>")
        for task, png in plots.items():
            alt = html.escape(f"box plot of per-case accuracy, task {task}")
            parts.append(
                f'<figure><img src="data:image/png;base64,{png}" alt="{alt}"><figcaption>{html.escape(task)}</figcaption></figure>'
            )
    parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in legend(board)) + "</ul>")
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>Learn2Reg leaderboard</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
