"""The figures of the per-pair report, drawn with matplotlib's object API (Agg canvas, no pyplot)
and returned as base64 PNG: fixed/moving/warped images, checkerboards, the deformation grid,
the Jacobian determinant, label contours and landmarks (``evaluation.pair_reports.page`` puts
them on the page; what is shown comes from ``evaluation.pair_reports.slices`` as arrays).

Each figure has one column per plane (array axis 0, 1, 2), one row per view. Label contours
and landmarks choose their own planes (where the drawn labels / most landmarks are), named in
every panel's title.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, to_hex, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from evaluation.pair_reports import slices as visual

FOLD_COLOUR = "#ff00ff"
#: Label contours: ten colours that stay apart (tab10); a page draws at most this many labels.
PALETTE = tuple(to_hex(colormaps["tab10"](k)) for k in range(10))
#: Labels whose contours a page draws (the worst after registration when there are more).
MAX_DRAWN_LABELS = len(PALETTE)
TRUTH_COLOUR, MOVED_COLOUR, ERROR_COLOUR = "#00e060", "#ff3030", "#ffd000"


def contour_colours(ids: Sequence[int]) -> dict[int, str]:
    """Label id -> colour of the labels drawn (in order; :data:`PALETTE` has room for ten)."""
    return {int(label): PALETTE[k % len(PALETTE)] for k, label in enumerate(ids)}


def png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class Figures:
    """The figures of one pair: ``fixed`` image (``X x Y x Z``), ``field`` (``X x Y x Z x 3``
    voxels, pull), ``spacing`` (mm, pixel aspect only), the default ``slices``."""

    def __init__(self, fixed: np.ndarray, field: np.ndarray, spacing: Sequence[float], slices: tuple[int, int, int]) -> None:
        self.field, self.spacing, self.slices = field, tuple(float(s) for s in spacing), slices
        self.fixed = visual.normalise(fixed)

    def _figure(self, rows: int, row_names: list[str], slices: Sequence[int] | None = None, width: float = 8.4) -> tuple[Figure, np.ndarray]:
        slices = self.slices if slices is None else slices
        fig = Figure(figsize=(width, width / 8.4 * 2.7 * rows + 0.3), dpi=80, layout="constrained")
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
                ax.set_title(f"axis {a} = {slices[a]}", fontsize=9)
        return fig, axes

    def _show(self, ax, volume: np.ndarray, a: int, index: int | None = None, **kwargs):
        """Draw the plane of ``volume`` along axis ``a`` (first in-plane axis horizontal)."""
        return self._show_plane(ax, visual.plane(volume, a, self.slices[a] if index is None else index), a, **kwargs)

    def _show_plane(self, ax, plane: np.ndarray, a: int, **kwargs):
        h, v = visual.IN_PLANE[a]
        kwargs = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0, **kwargs}
        return ax.imshow(plane.T, origin="lower", aspect=self.spacing[v] / self.spacing[h], interpolation="nearest", **kwargs)

    def images(self, before: np.ndarray, warped: np.ndarray) -> str:
        window = visual.intensity_window(before)
        views = [("fixed", self.fixed), ("moving", visual.normalise(before, window)), ("warped", visual.normalise(warped, window))]
        fig, axes = self._figure(3, [n for n, _ in views])
        for r, (_, vol) in enumerate(views):
            for a in range(3):
                self._show(axes[r, a], vol, a)
        return png(fig)

    def checkerboards(self, before: np.ndarray, warped: np.ndarray) -> str:
        fig, axes = self._figure(2, ["fixed | moving", "fixed | warped"])
        window = visual.intensity_window(before)
        for r, other in enumerate((before, warped)):
            norm = visual.normalise(other, window)
            for a in range(3):
                f, m = (visual.plane(x, a, self.slices[a]) for x in (self.fixed, norm))
                board = visual.checkerboard(f, m, max(int(round(max(f.shape) / 8)), 1))
                self._show_plane(axes[r, a], board, a)
        return png(fig)

    def grid(self, before: np.ndarray) -> str:
        fig, axes = self._figure(1, ["moving"])
        moving = visual.normalise(before)
        for a in range(3):
            ax = axes[0, a]
            self._show(ax, moving, a)
            u2 = visual.in_plane_field(self.field, a, self.slices[a])
            for line in visual.grid_lines(u2, visual.grid_step(u2.shape[:2])):
                ax.plot(line[:, 0], line[:, 1], color="#ffcc00", linewidth=0.8)
            ax.set_xlim(-0.5, u2.shape[0] - 0.5)
            ax.set_ylim(-0.5, u2.shape[1] - 0.5)
        return png(fig)

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
        return png(fig)

    def labels(self, fixed: np.ndarray, before: np.ndarray, after: np.ndarray, colours: Mapping[int, str],
               names: Mapping[int, str]) -> str:
        """The labels ``colours`` (id -> colour) on the fixed image: fixed labels filled, moving labels
        (zero field, then warped) as solid contours of the same colour; planes that cut the most of them."""
        ids = list(colours)
        slices = tuple(visual.richest_plane((fixed, before, after), a, ids) for a in range(3))
        fig, axes = self._figure(2, ["before", "after"], slices, width=13.5)
        for r, moved in enumerate((before, after)):
            for a in range(3):
                ax = axes[r, a]
                self._show(ax, self.fixed, a, slices[a])
                f, m = visual.plane(fixed, a, slices[a]), visual.plane(moved, a, slices[a])
                for label, colour in colours.items():
                    fill = np.ma.masked_array(np.ones(f.shape), mask=f != label)
                    self._show_plane(ax, fill, a, cmap=ListedColormap([colour]), vmin=0, vmax=1, alpha=0.35)
                    mask = m == label
                    if mask.any() and not mask.all():
                        ax.contour(mask.T.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.6)
        handles: list[Artist] = [Patch(facecolor=to_rgba(c, 0.5), edgecolor=c, label=f"{k}: {names.get(k, f'label {k}')}")
                                 for k, c in colours.items()]
        handles += [Patch(facecolor="#999999", alpha=0.5, label="fill: fixed label"), Line2D([], [], color="#444444", label="line: moving label")]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
        return png(fig)

    def landmarks(self, moving: np.ndarray, truth: np.ndarray, before: np.ndarray, after: np.ndarray) -> str:
        """Points on the moving image (read on the fixed grid): the moving points (``truth``) and
        where the fixed points land, before (``before``: the zero field, the fixed points) and after
        registration (``after``: x + u(x)), joined by their error; all ``N x 3`` moving voxels.
        Per axis the plane with the most moving points within its slab."""
        shape = moving.shape
        slabs = [visual.plane_slab(n) for n in shape]
        slices = tuple(visual.densest_plane(truth, a, shape[a], slabs[a]) for a in range(3))
        fig, axes = self._figure(2, ["zero field", "registered"], slices, width=13.5)
        image = visual.normalise(moving)
        for r, landed in enumerate((before, after)):
            for a in range(3):
                ax = axes[r, a]
                self._show(ax, image, a, slices[a])
                near = visual.points_near(truth, a, slices[a], slabs[a])
                h, v = visual.IN_PLANE[a]
                for t, p in zip(truth[near], landed[near], strict=True):
                    ax.plot([t[h], p[h]], [t[v], p[v]], color=ERROR_COLOUR, linewidth=1.0)
                ax.plot(truth[near, h], truth[near, v], "o", color=TRUTH_COLOUR, markersize=4, markeredgecolor="black", markeredgewidth=0.4)
                ax.plot(landed[near, h], landed[near, v], "x", color=MOVED_COLOUR, markersize=5, markeredgewidth=1.4)
                ax.set_xlim(-0.5, shape[h] - 0.5)
                ax.set_ylim(-0.5, shape[v] - 0.5)
                ax.set_title(f"axis {a} = {slices[a]}: {int(near.sum())} points within ±{slabs[a]} voxels", fontsize=9)
        handles = [
            Line2D([], [], marker="o", ls="", color=TRUTH_COLOUR, markeredgecolor="black", label="moving landmark (truth)"),
            Line2D([], [], marker="x", ls="", color=MOVED_COLOUR, label="fixed landmark mapped: x + u(x)"),
            Line2D([], [], color=ERROR_COLOUR, label="error (in-plane part)"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
        return png(fig)
