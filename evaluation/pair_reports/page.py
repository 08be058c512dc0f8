"""The per-pair visual report, from arrays: numbers (per-label Dice and per-landmark TRE before/after,
folded voxels) and figures (``evaluation.pair_reports.figures``), rendered as one self-contained
HTML page (``evaluation.pair_reports.markup``; PNG figures embedded as base64).

Sections (``<section id=...>``): ``summary``; ``images`` (fixed, moving, warped); ``checkerboard``
(fixed against moving before and against warped after); ``grid`` (the fixed grid mapped into the
moving image, ``x + u(x)``); ``jacobian`` (det(I + grad u), folded voxels det <= 0 highlighted);
with both label maps ``labels`` (label contours, before and after) and ``dice`` (per label, names
from the task's ``dataset.json``); with point files for both images ``landmarks`` (the points on
the moving image, where the fixed points land before and after) and ``tre`` (per point).
The image figures show the three planes through the centre of the fixed labels (else the middle
of the grid); the label and landmark figures pick the planes that show the most of what they draw.

"Before" is the zero field: the moving image read on the fixed grid (``contract.warp`` of the
moving image by ``u = 0``, the evaluator's ``Initial``), "after" the field ``u``. Labels are
warped with the official nearest-neighbour rule (``contract.warp_labels``) and Dice is
``metrics.dice`` (NaN for a label absent from the fixed or the moving labels); TRE is the official
``metrics.tre`` (mm, the moving image's spacing; before: ``u = 0``). Many labels: the contours show
the :data:`MAX_DRAWN_LABELS` labels with the lowest Dice after registration, the page lists them
first and folds the full table away. numpy/matplotlib only; the files around it (reading, writing,
the command) are in ``evaluation.pair_reports.stage``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from evaluation import jacobian, metrics
from evaluation.pair_reports import slices as visual
from evaluation.pair_reports.figures import FOLD_COLOUR, MAX_DRAWN_LABELS, Figures, contour_colours
from evaluation.pair_reports.markup import Nav, render_html
from learn2reg import contract

__all__ = ["FOLD_COLOUR", "SECTIONS", "POINT_SECTIONS", "Nav", "PairInputs", "PairReport", "build_report", "render_html"]

SECTIONS = ("summary", "images", "checkerboard", "grid", "jacobian", "labels", "dice")
POINT_SECTIONS = ("landmarks", "tre")


@dataclass(frozen=True)
class PairInputs:
    """One registered pair as arrays.

    ``fixed``: ``X x Y x Z``; ``moving``: any 3-D grid; ``field``: ``X x Y x Z x 3`` voxels on the
    fixed grid, pull (``learn2reg.contract``); ``fixed_labels`` on the fixed grid and
    ``moving_labels`` on the moving grid (integer maps, both or neither); ``spacing``: the fixed
    image's voxel size in mm (for the pixel aspect of the figures only); ``fixed_points`` and
    ``moving_points``: corresponding ``N x 3`` voxel coordinates (row i of one is row i of the
    other; both or neither), ``moving_spacing`` the moving image's voxel size (mm, for TRE), and
    ``point_kind`` what they are (``landmarks`` or ``keypoints``).
    """

    fixed: np.ndarray
    moving: np.ndarray
    field: np.ndarray
    fixed_labels: np.ndarray | None = None
    moving_labels: np.ndarray | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fixed_points: np.ndarray | None = None
    moving_points: np.ndarray | None = None
    moving_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    point_kind: str = "landmarks"


@dataclass(frozen=True)
class DiceRow:
    """Official Dice of one label before (zero field) and after registration; NaN = absent."""

    label: int
    name: str
    before: float
    after: float


@dataclass(frozen=True)
class PointRow:
    """Official TRE (mm) of one point (``index``: its row in the point files, 0-based) before
    (zero field) and after registration; ``fixed``: its fixed voxel coordinates."""

    index: int
    fixed: tuple[float, float, float]
    before: float
    after: float


@dataclass(frozen=True)
class PairReport:
    """Everything the page shows: numbers, and the figures as base64 PNG per section id.

    ``drawn_labels``: the labels whose contours are drawn (worst Dice after first);
    ``points``: per-point TRE (file order), ``point_kind`` their kind."""

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
    drawn_labels: tuple[int, ...] = ()
    points: tuple[PointRow, ...] = ()
    point_kind: str = ""
    colours: dict[int, str] = field(default_factory=dict)

    @property
    def dice_before(self) -> float:
        return metrics.nanmean([r.before for r in self.dice]) if self.dice else math.nan

    @property
    def dice_after(self) -> float:
        return metrics.nanmean([r.after for r in self.dice]) if self.dice else math.nan

    @property
    def tre_before(self) -> float:
        return float(np.mean([r.before for r in self.points])) if self.points else math.nan

    @property
    def tre_after(self) -> float:
        return float(np.mean([r.after for r in self.points])) if self.points else math.nan

    def worst_labels(self) -> list[DiceRow]:
        """The drawn labels' rows, worst Dice after first."""
        by_id = {r.label: r for r in self.dice}
        return [by_id[i] for i in self.drawn_labels]

    def worst_points(self) -> list[PointRow]:
        """Every point, the largest error after registration first."""
        return sorted(self.points, key=lambda r: (-r.after, r.index))

    def summary(self) -> dict:
        """The numbers as JSON-ready values (the sidecar of the page; the index reads them)."""
        out = {
            "pair": self.title, "fixed_shape": list(self.fixed_shape), "moving_shape": list(self.moving_shape),
            "slices": list(self.slices), "dice_before": self.dice_before, "dice_after": self.dice_after,
            "dice": {str(r.label): {"name": r.name, "before": r.before, "after": r.after} for r in self.dice},
            "folded_voxels": self.folded_voxels, "voxels": self.voxels, "det_min": self.det_min, "det_max": self.det_max,
        }  # fmt: skip
        if self.points:
            out.update(point_kind=self.point_kind, tre_before=self.tre_before, tre_after=self.tre_after,
                       tre={str(r.index): {"before": r.before, "after": r.after} for r in self.points})
        return out


def check_inputs(p: PairInputs) -> None:
    """``ValueError`` naming what does not fit: dimensions, the field's grid, label grids, point counts."""
    if p.fixed.ndim != 3 or p.moving.ndim != 3:
        raise ValueError(f"images must be 3-D, got fixed {p.fixed.shape} and moving {p.moving.shape}")
    contract.check_field(p.field, p.fixed.shape)
    if (p.fixed_labels is None) != (p.moving_labels is None):
        raise ValueError("Dice and label contours need both label maps (fixed and moving), or neither")
    if p.fixed_labels is not None and p.fixed_labels.shape != p.fixed.shape:
        raise ValueError(f"fixed labels {p.fixed_labels.shape} differ from the fixed image grid {p.fixed.shape}")
    if p.moving_labels is not None and p.moving_labels.shape != p.moving.shape:
        raise ValueError(f"moving labels {p.moving_labels.shape} differ from the moving image grid {p.moving.shape}")
    if (p.fixed_points is None) != (p.moving_points is None):
        raise ValueError("TRE needs both point sets (fixed and moving), or neither")
    if p.fixed_points is not None and p.moving_points is not None and np.shape(p.fixed_points) != np.shape(p.moving_points):
        raise ValueError(f"{len(p.fixed_points)} fixed points but {len(p.moving_points)} moving points")


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


def labels_to_draw(rows: tuple[DiceRow, ...], most: int = MAX_DRAWN_LABELS) -> tuple[int, ...]:
    """The labels whose contours are drawn: the ``most`` with the lowest Dice after registration
    (labels absent from either image left out), worst first; ties by label id."""
    scored = [r for r in rows if not math.isnan(r.after)]
    return tuple(r.label for r in sorted(scored, key=lambda r: (r.after, r.label))[:most])


def point_rows(p: PairInputs) -> tuple[tuple[PointRow, ...], np.ndarray]:
    """Per-point TRE before (u = 0) and after (``metrics.tre``, the evaluator's), and where the
    fixed points land in the moving image after registration (``N x 3``, x + u(x))."""
    if p.fixed_points is None or p.moving_points is None:
        return (), np.zeros((0, 3))
    fixed = np.asarray(p.fixed_points, dtype=np.float64).reshape(-1, 3)
    moving = np.asarray(p.moving_points, dtype=np.float64).reshape(-1, 3)
    before = np.linalg.norm((fixed - moving) * np.asarray(p.moving_spacing, dtype=np.float64), axis=1)
    after = metrics.tre(p.field, fixed, moving, p.moving_spacing)
    landed = fixed + metrics.sample_cubic(p.field, fixed)
    rows = tuple(PointRow(i, (float(f[0]), float(f[1]), float(f[2])), float(b), float(a))
                 for i, (f, b, a) in enumerate(zip(fixed, before, after, strict=True)))
    return rows, landed


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
    draw = Figures(p.fixed, u, p.spacing, slices)
    figures = {
        "images": draw.images(before, warped),
        "checkerboard": draw.checkerboards(before, warped),
        "grid": draw.grid(before),
        "jacobian": draw.jacobian(det, fold),
    }
    rows: tuple[DiceRow, ...] = ()
    drawn: tuple[int, ...] = ()
    colours: dict[int, str] = {}
    if p.fixed_labels is not None and p.moving_labels is not None:
        ids = label_ids(p, names)
        moved_before = p.moving_labels if p.moving.shape == p.fixed.shape else contract.warp_labels(p.moving_labels, zero)
        moved_after = contract.warp_labels(p.moving_labels, u)
        d0 = metrics.dice(metrics.label_counts(p.fixed_labels, p.moving_labels, moved_before, ids)) if ids else []
        d1 = metrics.dice(metrics.label_counts(p.fixed_labels, p.moving_labels, moved_after, ids)) if ids else []
        rows = tuple(DiceRow(i, (names or {}).get(i, f"label {i}"), float(b), float(a)) for i, b, a in zip(ids, d0, d1, strict=True))
        drawn = labels_to_draw(rows)
        colours = contour_colours(drawn)
        figures["labels"] = draw.labels(p.fixed_labels, moved_before, moved_after, colours, {r.label: r.name for r in rows})
    points, landed = point_rows(p)
    if points and p.fixed_points is not None and p.moving_points is not None:
        truth = np.asarray(p.moving_points, dtype=np.float64).reshape(-1, 3)
        figures["landmarks"] = draw.landmarks(before, truth, np.asarray(p.fixed_points, dtype=np.float64).reshape(-1, 3), landed)
    planes = _shape3(tuple(int(visual.plane(fold, a, slices[a]).sum()) for a in range(3)))
    return PairReport(title, _shape3(p.fixed.shape), _shape3(p.moving.shape), slices, rows, int(fold.sum()), int(fold.size),
                      planes, float(det.min()), float(det.max()), figures, drawn, points, p.point_kind if points else "", colours)
