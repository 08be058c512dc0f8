"""The per-pair visual report, from arrays: numbers (per-label Dice before/after, folded voxels)
and figures, rendered as one self-contained HTML page (PNG figures embedded as base64).

Sections (``<section id=...>``, see :data:`SECTIONS`): ``summary``; ``images`` (fixed, moving,
warped); ``checkerboard`` (fixed against moving before and against warped after); ``grid``
(the fixed grid mapped into the moving image, ``x + u(x)``); ``jacobian`` (det(I + grad u),
folded voxels det <= 0 highlighted); ``labels`` (label contours on the fixed image, before and
after) and ``dice`` (per label, names from the task's ``dataset.json``), when both label maps
are given. Each figure shows the three planes through the centre of the fixed labels (else
the middle of the grid).

"Before" is the zero field: the moving image read on the fixed grid (``contract.warp`` of the
moving image by ``u = 0``, the evaluator's ``Initial``), "after" the field ``u``. Labels are
warped with the official nearest-neighbour rule (``contract.warp_labels``) and Dice is
``metrics.dice`` (NaN for a label absent from the fixed or the moving labels). The determinant
is ``jacobian.determinant_map`` (``contract.jacobian_determinant``). numpy/matplotlib only;
the files around it (reading, writing, the command) are in ``evaluation.pair_reports.stage``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, to_hex
from matplotlib.figure import Figure

from evaluation import jacobian, metrics
from evaluation.pair_reports import slices as visual
from learn2reg import contract

SECTIONS = ("summary", "images", "checkerboard", "grid", "jacobian", "labels", "dice")
FOLD_COLOUR = "#ff00ff"
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, td.name { text-align: left; }
th { background: #eef; }
img { max-width: 100%; }
.caption { color: #555; font-size: 0.9em; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em; vertical-align: middle; }
"""


@dataclass(frozen=True)
class PairInputs:
    """One registered pair as arrays.

    ``fixed``: ``X x Y x Z``; ``moving``: any 3-D grid; ``field``: ``X x Y x Z x 3`` voxels on the
    fixed grid, pull (``learn2reg.contract``); ``fixed_labels`` on the fixed grid and
    ``moving_labels`` on the moving grid (integer maps, both or neither); ``spacing``: the fixed
    image's voxel size in mm (for the pixel aspect of the figures only).
    """

    fixed: np.ndarray
    moving: np.ndarray
    field: np.ndarray
    fixed_labels: np.ndarray | None = None
    moving_labels: np.ndarray | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class DiceRow:
    """Official Dice of one label before (zero field) and after registration; NaN = absent."""

    label: int
    name: str
    before: float
    after: float


@dataclass(frozen=True)
class PairReport:
    """Everything the page shows: numbers, and the figures as base64 PNG per section id."""

    title: str
    fixed_shape: tuple[int, int, int]
    moving_shape: tuple[int, int, int]
    slices: tuple[int, int, int]
    dice: tuple[DiceRow, ...]
    folded_voxels: int
    voxels: int
    folded_in_planes: tuple[int, int, int]  # highlighted pixels in the plane along axis 0, 1, 2
    det_min: float
    det_max: float
    figures: dict[str, str]

    @property
    def dice_before(self) -> float:
        return metrics.nanmean([r.before for r in self.dice]) if self.dice else math.nan

    @property
    def dice_after(self) -> float:
        return metrics.nanmean([r.after for r in self.dice]) if self.dice else math.nan

    def summary(self) -> dict:
        """The numbers as JSON-ready values (the sidecar of the page; the index reads them)."""
        return {
            "pair": self.title, "fixed_shape": list(self.fixed_shape), "moving_shape": list(self.moving_shape),
            "slices": list(self.slices), "dice_before": self.dice_before, "dice_after": self.dice_after,
            "dice": {str(r.label): {"name": r.name, "before": r.before, "after": r.after} for r in self.dice},
            "folded_voxels": self.folded_voxels, "voxels": self.voxels, "det_min": self.det_min, "det_max": self.det_max,
        }


def check_inputs(p: PairInputs) -> None:
    """``ValueError`` naming what does not fit: dimensions, the field's grid, label grids."""
    if p.fixed.ndim != 3 or p.moving.ndim != 3:
        raise ValueError(f"images must be 3-D, got fixed {p.fixed.shape} and moving {p.moving.shape}")
    contract.check_field(p.field, p.fixed.shape)
    if (p.fixed_labels is None) != (p.moving_labels is None):
        raise ValueError("Dice and label contours need both label maps (fixed and moving), or neither")
    if p.fixed_labels is not None and p.fixed_labels.shape != p.fixed.shape:
        raise ValueError(f"fixed labels {p.fixed_labels.shape} differ from the fixed image grid {p.fixed.shape}")
    if p.moving_labels is not None and p.moving_labels.shape != p.moving.shape:
        raise ValueError(f"moving labels {p.moving_labels.shape} differ from the moving image grid {p.moving.shape}")


def _shape3(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return int(shape[0]), int(shape[1]), int(shape[2])


def label_ids(p: PairInputs, names: Mapping[int, str] | None) -> tuple[int, ...]:
    """The labels scored: those the task names (as the evaluator), else every nonzero value present."""
    if names:
        return tuple(sorted(int(k) for k in names))
    if p.fixed_labels is None or p.moving_labels is None:
        return ()
    values = np.union1d(np.unique(p.fixed_labels), np.unique(p.moving_labels))
    return tuple(int(v) for v in values if v != 0)


def build_report(p: PairInputs, title: str, names: Mapping[int, str] | None = None) -> PairReport:
    """Compute the numbers and draw the figures of one pair (``ValueError`` for inputs that do
    not fit, see :func:`check_inputs`)."""
    check_inputs(p)
    u = p.field
    zero = np.zeros(u.shape, np.float32)
    before = p.moving if p.moving.shape == p.fixed.shape else contract.warp(p.moving, zero)
    warped = contract.warp(p.moving, u)
    det = jacobian.determinant_map(u)
    fold = visual.folded(det)
    slices = visual.slice_indices(p.fixed.shape, p.fixed_labels)
    rows: tuple[DiceRow, ...] = ()
    label_maps = None
    if p.fixed_labels is not None and p.moving_labels is not None:
        ids = label_ids(p, names)
        moved_before = p.moving_labels if p.moving.shape == p.fixed.shape else contract.warp_labels(p.moving_labels, zero)
        moved_after = contract.warp_labels(p.moving_labels, u)
        d0 = metrics.dice(metrics.label_counts(p.fixed_labels, p.moving_labels, moved_before, ids)) if ids else []
        d1 = metrics.dice(metrics.label_counts(p.fixed_labels, p.moving_labels, moved_after, ids)) if ids else []
        rows = tuple(DiceRow(i, (names or {}).get(i, f"label {i}"), float(b), float(a)) for i, b, a in zip(ids, d0, d1, strict=True))
        label_maps = (p.fixed_labels, moved_before, moved_after, ids)
    planes = _shape3(tuple(int(visual.plane(fold, a, slices[a]).sum()) for a in range(3)))
    draw = _Drawing(p, slices)
    figures = {
        "images": draw.images(before, warped),
        "checkerboard": draw.checkerboards(before, warped),
        "grid": draw.grid(before),
        "jacobian": draw.jacobian(det, fold),
    }
    if label_maps is not None:
        figures["labels"] = draw.labels(*label_maps)
    return PairReport(title, _shape3(p.fixed.shape), _shape3(p.moving.shape), slices, rows, int(fold.sum()), int(fold.size),
                      planes, float(det.min()), float(det.max()), figures)


def label_colour(k: int) -> str:
    """Contour colour of the ``k``-th scored label (0-based), also its swatch in the Dice table:
    the ten strong colours of ``tab20`` first, then its ten light ones, then again."""
    k %= 20
    return to_hex(colormaps["tab20"](2 * k if k < 10 else 2 * (k - 10) + 1))


class _Drawing:
    """The figures of one pair: one column per plane (axis 0, 1, 2), one row per view."""

    def __init__(self, p: PairInputs, slices: tuple[int, int, int]) -> None:
        self.p, self.slices = p, slices
        self.fixed = visual.normalise(p.fixed)

    def _figure(self, rows: int, row_names: list[str]) -> tuple[Figure, np.ndarray]:
        fig = Figure(figsize=(8.4, 2.7 * rows + 0.3), dpi=80, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, 3, squeeze=False)
        for r, name in enumerate(row_names):
            for a in range(3):
                ax = axes[r, a]
                ax.set_xticks([])
                ax.set_yticks([])
                h, v = visual.IN_PLANE[a]
                ax.set_xlabel(f"axis {h}", fontsize=8)
                ax.set_ylabel(f"{name}\naxis {v}" if a == 0 else f"axis {v}", fontsize=8)
                ax.set_title(f"axis {a} = {self.slices[a]}", fontsize=9)
        return fig, axes

    def _show(self, ax, volume: np.ndarray, a: int, **kwargs):
        """Draw the plane of ``volume`` along axis ``a`` (first in-plane axis horizontal)."""
        return self._show_plane(ax, visual.plane(volume, a, self.slices[a]), a, **kwargs)

    def _show_plane(self, ax, plane: np.ndarray, a: int, **kwargs):
        h, v = visual.IN_PLANE[a]
        kwargs = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0, **kwargs}
        return ax.imshow(plane.T, origin="lower", aspect=self.p.spacing[v] / self.p.spacing[h], interpolation="nearest", **kwargs)

    def images(self, before: np.ndarray, warped: np.ndarray) -> str:
        window = visual.intensity_window(before)
        views = [("fixed", self.fixed), ("moving", visual.normalise(before, window)), ("warped", visual.normalise(warped, window))]
        fig, axes = self._figure(3, [n for n, _ in views])
        for r, (_, vol) in enumerate(views):
            for a in range(3):
                self._show(axes[r, a], vol, a)
        return _png(fig)

    def checkerboards(self, before: np.ndarray, warped: np.ndarray) -> str:
        fig, axes = self._figure(2, ["fixed | moving", "fixed | warped"])
        window = visual.intensity_window(before)
        for r, other in enumerate((before, warped)):
            norm = visual.normalise(other, window)
            for a in range(3):
                f, m = (visual.plane(x, a, self.slices[a]) for x in (self.fixed, norm))
                board = visual.checkerboard(f, m, max(int(round(max(f.shape) / 8)), 1))
                self._show_plane(axes[r, a], board, a)
        return _png(fig)

    def grid(self, before: np.ndarray) -> str:
        fig, axes = self._figure(1, ["moving"])
        moving = visual.normalise(before)
        for a in range(3):
            ax = axes[0, a]
            self._show(ax, moving, a)
            u2 = visual.in_plane_field(self.p.field, a, self.slices[a])
            for line in visual.grid_lines(u2, visual.grid_step(u2.shape[:2])):
                ax.plot(line[:, 0], line[:, 1], color="#ffcc00", linewidth=0.8)
            ax.set_xlim(-0.5, u2.shape[0] - 0.5)
            ax.set_ylim(-0.5, u2.shape[1] - 0.5)
        return _png(fig)

    def jacobian(self, det: np.ndarray, fold: np.ndarray) -> str:
        fig, axes = self._figure(1, ["det(I + grad u)"])
        for a in range(3):
            ax = axes[0, a]
            image = self._show(ax, det, a, cmap="RdBu_r", vmin=0.0, vmax=2.0)
            plane_fold = visual.plane(fold, a, self.slices[a])
            if plane_fold.any():  # folded pixels opaque, the others transparent (masked)
                overlay = np.ma.masked_array(plane_fold, mask=~plane_fold)
                self._show_plane(ax, overlay, a, cmap=ListedColormap([FOLD_COLOUR]), vmin=0, vmax=1)
            ax.set_title(f"axis {a} = {self.slices[a]}: {int(plane_fold.sum())} folded", fontsize=9)
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="det (folded: det <= 0, magenta)")
        return _png(fig)

    def labels(self, fixed: np.ndarray, before: np.ndarray, after: np.ndarray, ids: tuple[int, ...]) -> str:
        fig, axes = self._figure(2, ["before", "after"])
        for r, moved in enumerate((before, after)):
            for a in range(3):
                ax = axes[r, a]
                self._show(ax, self.fixed, a)
                f, m = visual.plane(fixed, a, self.slices[a]), visual.plane(moved, a, self.slices[a])
                for k, label in enumerate(ids):
                    for plane_labels, style in ((f, "dashed"), (m, "solid")):
                        mask = plane_labels == label
                        if mask.any() and not mask.all():
                            ax.contour(mask.T.astype(np.float32), levels=[0.5], colors=[label_colour(k)], linewidths=1.0, linestyles=style)
        return _png(fig)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def fmt(value: float, decimals: int = 3) -> str:
    """A number with fixed decimals; "-" for NaN."""
    return "-" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


CAPTIONS = {
    "images": ("Fixed, moving, warped", "The moving image is shown on the fixed grid before registration (zero field) "
               "and warped by the field after it, both with the moving image's intensity window."),
    "checkerboard": ("Checkerboards", "Tiles alternate between the fixed image and the moving image before "
                     "registration (top) and the warped image after it (bottom); edges that continue across tiles are aligned."),
    "grid": ("Deformation grid", "Lines of the fixed grid moved to x + u(x) (in-plane components), drawn over the "
             "moving image: where each fixed voxel reads the moving image (pull direction)."),
    "jacobian": ("Jacobian determinant", "det(I + grad u) (central differences; below 1 compresses, above 1 expands); "
                 f"folded voxels (det <= 0) in magenta ({FOLD_COLOUR})."),
    "labels": ("Label contours", "Fixed labels dashed, moving labels solid, on the fixed image: before registration "
               "(zero field) and after it (warped with the official nearest-neighbour rule)."),
}


def render_html(r: PairReport) -> str:
    """The self-contained page: inline CSS, figures as data-URI PNGs, the Dice table."""
    esc = html.escape
    fold_pct = 100.0 * r.folded_voxels / r.voxels if r.voxels else math.nan
    facts = [
        ("fixed grid", " x ".join(map(str, r.fixed_shape))), ("moving grid", " x ".join(map(str, r.moving_shape))),
        ("planes shown", ", ".join(f"axis {a} = {i}" for a, i in enumerate(r.slices))),
        ("folded voxels (det <= 0)", f"{r.folded_voxels} of {r.voxels} ({fmt(fold_pct, 3)} %)"),
        ("det(I + grad u) min / max", f"{fmt(r.det_min)} / {fmt(r.det_max)}"),
    ]
    if r.dice:
        facts.append(("mean Dice before / after", f"{fmt(r.dice_before)} / {fmt(r.dice_after)}"))
    parts = [f"<h1>{esc(r.title)}</h1>", '<section id="summary">\n<h2>Summary</h2>\n<table>',
             *(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts), "</table>\n</section>"]
    for section in SECTIONS[1:-1]:
        if section in r.figures:
            heading, caption = CAPTIONS[section]
            parts.append(f'<section id="{section}">\n<h2>{esc(heading)}</h2>\n<p class="caption">{esc(caption)}</p>\n'
                         f'<img src="data:image/png;base64,{r.figures[section]}" alt="{esc(heading)}, {esc(r.title)}">\n</section>')
    if r.dice:
        parts.append(_dice_html(r))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Registration report: {esc(r.title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _dice_html(r: PairReport) -> str:
    rows = "".join(
        f'<tr><td>{row.label}</td><td class="name"><span class="swatch" style="background:{label_colour(k)}"></span>'
        f"{html.escape(row.name)}</td><td>{fmt(row.before)}</td><td>{fmt(row.after)}</td>"
        f"<td>{fmt(row.after - row.before)}</td></tr>\n"
        for k, row in enumerate(r.dice)
    )
    mean = (f'<tr><td>mean</td><td class="name">NaN-mean over labels (official)</td><td>{fmt(r.dice_before)}</td>'
            f"<td>{fmt(r.dice_after)}</td><td>{fmt(r.dice_after - r.dice_before)}</td></tr>\n")
    return ('<section id="dice">\n<h2>Dice per label</h2>\n<p class="caption">Official Dice of the fixed labels against the '
            'moving labels before (zero field) and the warped labels after registration; "-": the label is absent from '
            "the fixed or the moving labels (official rule, not counted in the mean).</p>\n<table>\n<thead><tr><th>label</th>"
            f"<th>name</th><th>before</th><th>after</th><th>change</th></tr></thead>\n<tbody>\n{rows}{mean}</tbody>\n</table>\n</section>")
