"""The per-pair report as HTML: one self-contained page (inline CSS, figures as data-URI PNGs, no
script), with links to the index and to the previous and next pair (:class:`Nav`).

Long tables are folded into ``<details>``: with more labels than the contours draw, the page
shows the drawn (worst) labels first and the full Dice table folded; the per-point TRE table is
folded, worst first, under a summary of the errors before and after registration.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from evaluation.pair_reports.figures import FOLD_COLOUR, MAX_DRAWN_LABELS

if TYPE_CHECKING:  # (page imports this module to render its reports)
    from evaluation.pair_reports.page import DiceRow, PairReport

CSS = """
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, td.name { text-align: left; }
th { background: #eef; }
img { max-width: 100%; }
.caption { color: #555; font-size: 0.9em; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em; vertical-align: middle; }
nav.pairs { display: flex; gap: 1.5em; padding: 0.4em 0; border-bottom: 1px solid #ccc; }
nav.pairs .here { color: #555; }
details > summary { cursor: pointer; font-weight: 600; margin: 0.5em 0; }
"""

CAPTIONS = {
    "images": ("Fixed, moving, warped", "The moving image is shown on the fixed grid before registration (zero field) "
               "and warped by the field after it, both with the moving image's intensity window."),
    "checkerboard": ("Checkerboards", "Tiles alternate between the fixed image and the moving image before "
                     "registration (top) and the warped image after it (bottom); edges that continue across tiles are aligned."),
    "grid": ("Deformation grid", "Lines of the fixed grid moved to x + u(x) (in-plane components), drawn over the "
             "moving image: where each fixed voxel reads the moving image (pull direction)."),
    "jacobian": ("Jacobian determinant", "det(I + grad u) (central differences; below 1 compresses, above 1 expands); "
                 f"folded voxels (det <= 0) in magenta ({FOLD_COLOUR})."),
    "labels": ("Label contours", "On the fixed image, each drawn label filled where the fixed labels have it and outlined "
               "(solid line, same colour) where the moving labels have it: before registration (zero field) and after it "
               "(warped with the official nearest-neighbour rule). Planes that cut the most drawn labels."),
    "landmarks": ("Landmarks", "On the moving image (read on the fixed grid): the moving points (green) and where the "
                  "fixed points land (red x: the fixed point itself with the zero field, x + u(x) after registration), joined "
                  "by their error (yellow, its in-plane part). Only points near the plane are drawn (the slab in each title); "
                  "per axis the plane with the most points."),
}
FIGURES = ("images", "checkerboard", "grid", "jacobian", "labels", "landmarks")


@dataclass(frozen=True)
class Nav:
    """Links of a page in a set of reports: the ``index`` page, the ``prev``/``next`` pages (None at
    the ends) and their titles, and where this page stands (``position`` of ``total``, 1-based)."""

    index: str
    prev: str | None = None
    next: str | None = None
    prev_title: str = ""
    next_title: str = ""
    position: int = 0
    total: int = 0


def fmt(value: float, decimals: int = 3) -> str:
    """A number with fixed decimals; "-" for NaN."""
    return "-" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def nav_html(nav: Nav | None) -> str:
    if nav is None:
        return ""
    esc = html.escape
    parts = [f'<a href="{esc(nav.index)}">all pairs (index)</a>']
    parts.append(f'<a href="{esc(nav.prev)}" rel="prev">← previous: {esc(nav.prev_title)}</a>' if nav.prev else
                 '<span class="here">first pair</span>')
    if nav.total:
        parts.append(f'<span class="here">pair {nav.position} of {nav.total}</span>')
    parts.append(f'<a href="{esc(nav.next)}" rel="next">next: {esc(nav.next_title)} →</a>' if nav.next else
                 '<span class="here">last pair</span>')
    return '<nav class="pairs">' + "".join(parts) + "</nav>"


def _facts(r: PairReport) -> list[tuple[str, str]]:
    fold_pct = 100.0 * r.folded_voxels / r.voxels if r.voxels else math.nan
    facts = [
        ("fixed grid", " x ".join(map(str, r.fixed_shape))), ("moving grid", " x ".join(map(str, r.moving_shape))),
        ("planes shown", ", ".join(f"axis {a} = {i}" for a, i in enumerate(r.slices))),
        ("folded voxels (det <= 0)", f"{r.folded_voxels} of {r.voxels} ({fmt(fold_pct, 3)} %)"),
        ("det(I + grad u) min / max", f"{fmt(r.det_min)} / {fmt(r.det_max)}"),
    ]  # fmt: skip
    if r.dice:
        facts.append(("mean Dice before / after", f"{fmt(r.dice_before)} / {fmt(r.dice_after)} ({len(r.dice)} labels)"))
        worst = r.worst_labels()
        if worst:
            facts.append(("lowest Dice after", f"{fmt(worst[0].after)} ({worst[0].label}: {worst[0].name})"))
    if r.points:
        after = np.array([p.after for p in r.points])
        facts.append((f"mean TRE before / after ({r.point_kind})", f"{fmt(r.tre_before, 2)} / {fmt(r.tre_after, 2)} mm ({len(r.points)} points)"))
        facts.append(("TRE after: median / max", f"{fmt(float(np.median(after)), 2)} / {fmt(float(after.max()), 2)} mm"))
    return facts


def render_html(r: PairReport, nav: Nav | None = None) -> str:
    """The self-contained page: inline CSS, figures as data-URI PNGs, the Dice and TRE tables."""
    esc = html.escape
    parts = [nav_html(nav), f"<h1>{esc(r.title)}</h1>", '<section id="summary">\n<h2>Summary</h2>\n<table>',
             *(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _facts(r)), "</table>\n</section>"]
    for section in FIGURES:
        if section in r.figures:
            heading, caption = CAPTIONS[section]
            parts.append(f'<section id="{section}">\n<h2>{esc(heading)}</h2>\n<p class="caption">{esc(caption)}</p>\n'
                         f'<img src="data:image/png;base64,{r.figures[section]}" alt="{esc(heading)}, {esc(r.title)}">\n</section>')
        if section == "labels" and r.dice:
            parts.append(dice_html(r))
        if section == "landmarks" and r.points:
            parts.append(tre_html(r))
    parts.append(nav_html(nav))
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Registration report: {esc(r.title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _dice_rows(rows: Sequence[DiceRow], colours: dict[int, str]) -> str:
    def swatch(label: int) -> str:
        return f'<span class="swatch" style="background:{colours[label]}"></span>' if label in colours else ""

    return "".join(
        f'<tr><td>{row.label}</td><td class="name">{swatch(row.label)}{html.escape(row.name)}</td><td>{fmt(row.before)}</td>'
        f"<td>{fmt(row.after)}</td><td>{fmt(row.after - row.before)}</td></tr>\n"
        for row in rows
    )


def _dice_table(body: str, r: PairReport) -> str:
    mean = (f'<tr><td>mean</td><td class="name">NaN-mean over all labels (official)</td><td>{fmt(r.dice_before)}</td>'
            f"<td>{fmt(r.dice_after)}</td><td>{fmt(r.dice_after - r.dice_before)}</td></tr>\n")
    return ("<table>\n<thead><tr><th>label</th><th>name</th><th>before</th><th>after</th><th>change</th></tr></thead>\n"
            f"<tbody>\n{body}{mean}</tbody>\n</table>")


def dice_html(r: PairReport) -> str:
    """Every label's Dice; with more labels than the contours draw, the drawn ones (the worst after
    registration) first and the full table, by label id, folded in ``<details>``."""
    caption = ('<p class="caption">Official Dice of the fixed labels against the moving labels before (zero field) and the '
               'warped labels after registration; "-": the label is absent from the fixed or the moving labels (official '
               "rule, not counted in the mean).</p>")
    full = _dice_table(_dice_rows(r.dice, r.colours), r)
    if len(r.dice) <= MAX_DRAWN_LABELS:
        return f'<section id="dice">\n<h2>Dice per label</h2>\n{caption}\n{full}\n</section>'
    worst = _dice_table(_dice_rows(r.worst_labels(), r.colours), r)
    return (f'<section id="dice">\n<h2>Dice per label: the {len(r.drawn_labels)} lowest after registration</h2>\n{caption}\n'
            f'<p class="caption">These are the labels drawn in the contours above, worst first; all {len(r.dice)} labels '
            f"follow, by label id.</p>\n{worst}\n<details id=\"dice-all\">\n<summary>All {len(r.dice)} labels (by label id)"
            f"</summary>\n{full}\n</details>\n</section>")


def tre_html(r: PairReport) -> str:
    """Per-point TRE before/after, largest error after registration first, folded in ``<details>``."""
    rows = "".join(
        f"<tr><td>{p.index}</td><td>{', '.join(f'{c:.1f}' for c in p.fixed)}</td><td>{fmt(p.before, 2)}</td>"
        f"<td>{fmt(p.after, 2)}</td><td>{fmt(p.after - p.before, 2)}</td></tr>\n"
        for p in r.worst_points()
    )
    kind = html.escape(r.point_kind)
    return (f'<section id="tre">\n<h2>Target registration error per point ({kind})</h2>\n<p class="caption">Official TRE: '
            "|| (x + u(x) - y) * spacing of the moving image || in mm for fixed point x and moving point y (u sampled with "
            f"cubic B-splines); before = zero field. Mean before {fmt(r.tre_before, 2)} mm, after {fmt(r.tre_after, 2)} mm."
            f'</p>\n<details id="tre-all">\n<summary>All {len(r.points)} {kind}, largest error after registration first</summary>\n'
            "<table>\n<thead><tr><th>point (row)</th><th>fixed position (voxels)</th><th>before (mm)</th><th>after (mm)</th>"
            f"<th>change</th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n</details>\n</section>")
