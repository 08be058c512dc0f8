"""Learn2Reg metrics: the official definitions (default) plus clearly named corrected ones.

Frames and units: fields ``u`` are ``X x Y x Z x 3`` in voxels on the fixed grid (pull; see
``learn2reg.contract``); label maps are integer ``X x Y x Z`` arrays; points are ``N x 3`` voxel
coordinates; spacings are mm per voxel along the array axes.

Official quirks reproduced here (../shared/docs/learn2reg.md section 3): a label absent in the fixed OR moving
labels gives NaN for DSC and HD95, case values are NaN-means; HD95 uses spacing (1, 1, 1), so it is
in voxels; SDlogJ is ``std(log(clip(det(J) + 3, 1e-9, 1e9)))`` over the field cropped by 2 voxels
(and masked by the fixed mask == 1 when configured); ``num_foldings`` is counted after the +3 and
clipping and is therefore always 0. Ours, named as such: ``SDlogJ_true`` (std of log det J over the
voxels of the same region with det J > 0), ``num_foldings_true`` and ``folding_fraction`` (det J <= 0),
``*_mm`` HD95 with the fixed image's spacing. The Jacobian statistics live in ``evaluation.jacobian``.

The official TRE's cubic sampling at the points: ``evaluation.spline``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation import spline, surface
from learn2reg import contract

# ----------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelCounts:
    """Voxel counts per configured label (arrays aligned with ``labels``)."""

    labels: tuple[int, ...]
    fixed: np.ndarray
    moving: np.ndarray
    warped: np.ndarray
    overlap: np.ndarray  # |fixed == l  and  warped == l|

    @property
    def present(self) -> np.ndarray:
        """Official rule: a label counts only if present in both the fixed and the moving labels."""
        return (self.fixed > 0) & (self.moving > 0)


def compact_labels(labels: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
    """Map label values to ``1..len(wanted)`` (position in ``wanted``), everything else to 0.

    ``labels`` is a non-negative integer array; returns uint8/uint16 of the same shape.
    """
    wanted = [int(w) for w in wanted]
    dtype = np.uint8 if len(wanted) < 255 else np.uint16
    lut = np.zeros(max(wanted) + 2, dtype=dtype)  # last entry: every larger value -> 0
    for k, value in enumerate(wanted, start=1):
        if lut[value] == 0:
            lut[value] = k
    return np.take(lut, labels, mode="clip")


def warp_labels(moving: np.ndarray, u: np.ndarray, margin: int = 2) -> np.ndarray:
    """``learn2reg.contract.warp_labels`` (the official nearest-neighbour rule), computed directly.

    ``map_coordinates(order=0, mode="constant")`` reads ``moving[floor(c + 0.5)]`` per axis when
    every coordinate ``c = x + u(x)`` (float64) lies in ``[0, n - 1]`` and 0 otherwise; this does the
    same with array arithmetic, one plane at a time along the field's slowest axis in memory, and only
    on the fixed voxels whose ``x + u(x)`` may reach the bounding box of the moving labels (per axis,
    from the extremes of ``u`` plus ``margin``): elsewhere the result is 0. Bit-identical to the
    contract's warp (tested, ties and borders included); the result has the field's memory order.
    """
    contract.check_field(u)
    box = surface.bounding_box(moving)
    out = np.zeros(u.shape[:3], dtype=moving.dtype, order=contract.memory_order(u))
    if box is None:
        return out
    lo, hi = [], []
    for axis in range(3):
        comp = u[..., axis]
        lo.append(max(int(np.floor(box[axis].start - float(comp.max()))) - margin, 0))
        hi.append(min(int(np.ceil(box[axis].stop - 1 - float(comp.min()))) + margin + 1, u.shape[axis]))
    if any(a >= b for a, b in zip(lo, hi, strict=True)):
        return out
    if not (moving.flags.c_contiguous or moving.flags.f_contiguous):
        moving = np.ascontiguousarray(moving)
    flat_moving = moving.ravel(order="K")  # memory order, so that strides index it
    stride = [s // moving.itemsize for s in moving.strides]
    perm = contract.walk_order(u)
    crop = tuple(slice(lo[a], hi[a]) for a in perm)
    v, dst = u.transpose(*perm, 3)[crop], out.transpose(perm)[crop]
    # voxel coordinate of each view axis, broadcast against a plane (view axes 1, 2)
    grids = [np.arange(lo[a], hi[a], dtype=np.float64) for a in perm]
    plane_grid: list[Any] = [None, grids[1][:, None], grids[2][None, :]]
    plane = v.shape[1:3]
    coord, flat_index = np.empty(plane), np.empty(plane)
    inside, flag, index = np.empty(plane, dtype=bool), np.empty(plane, dtype=bool), np.empty(plane, dtype=np.intp)
    for i in range(v.shape[0]):
        clipped = False
        for b, a in enumerate(perm):  # view axis b is field (and moving) axis a
            np.copyto(coord, v[i, :, :, a])  # float64, then + the voxel coordinate: the official x + u(x)
            coord += grids[0][i] if b == 0 else plane_grid[b]
            top = moving.shape[a] - 1
            if float(coord.min()) < 0.0 or float(coord.max()) > top:  # some voxels map outside
                np.greater_equal(coord, 0.0, out=inside if not clipped else flag)
                if clipped:
                    inside &= flag
                inside &= np.less_equal(coord, top, out=flag)
                np.maximum(coord, 0.0, out=coord)  # outside voxels: any valid index
                np.minimum(coord, top, out=coord)
                clipped = True
            coord += 0.5
            np.floor(coord, out=coord)
            coord *= stride[a]  # exact: integers far below 2^53
            if b == 0:
                flat_index[...] = coord
            else:
                flat_index += coord
        index[...] = flat_index
        np.take(flat_moving, index, out=dst[i])
        if clipped:
            dst[i][~inside] = 0
    return out


def _indexed(maps: Sequence[np.ndarray], labels: tuple[int, ...]) -> tuple[list[np.ndarray], list[int]]:
    """Label maps and the value each configured label has in them: uint8 maps are used as they
    are (value = label, labels > 255 get 256: never present); others are compacted."""
    if all(m.dtype == np.uint8 for m in maps):
        return list(maps), [v if v < 256 else 256 for v in labels]
    first = {v: k for k, v in reversed(list(enumerate(labels, start=1)))}  # duplicates share a value
    return [compact_labels(m, labels) for m in maps], [first[v] for v in labels]


def label_counts(fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray, labels: Sequence[int]) -> LabelCounts:
    """Counts for DSC: one joint histogram of (fixed, warped) label values, one of moving."""
    labels = tuple(int(v) for v in labels)
    (f, m, w), index = _indexed((fixed, moving, warped), labels)
    k = int(max(f.max(initial=0), w.max(initial=0), m.max(initial=0), max(index))) + 1
    code_dtype = np.dtype(np.uint16 if k * k <= 65536 else np.uint32 if k * k < 2**32 else np.uint64)
    # counted inside the box of the nonzero values only; the voxels outside are (0, 0)
    box = nonzero_box(f, w)
    f, w = (f, w) if box is None else (f[box], w[box])
    joint = np.bincount((f.astype(code_dtype) * code_dtype.type(k) + w).ravel(order="K"), minlength=k * k).reshape(k, k)
    joint[0, 0] += fixed.size - f.size
    box = nonzero_box(m)
    m_box = m if box is None else m[box]
    moving_counts = np.bincount(m_box.ravel(order="K"), minlength=k)
    moving_counts[0] += m.size - m_box.size
    idx = np.asarray(index)
    return LabelCounts(labels, joint.sum(axis=1)[idx], moving_counts[idx], joint.sum(axis=0)[idx], joint[idx, idx])


def dice(counts: LabelCounts) -> list[float]:
    """Official DSC per label: ``2|A and B| / (|A| + |B|)``, NaN where the label is not present."""
    out = []
    for i, ok in enumerate(counts.present):
        out.append(float(2 * counts.overlap[i] / (counts.fixed[i] + counts.warped[i])) if ok else float("nan"))
    return out


def nanmean(values: Sequence[float]) -> float:
    """``np.nanmean`` without its warning: NaN if every value is NaN (as the official result)."""
    arr = np.asarray(values, dtype=np.float64)
    valid = ~np.isnan(arr)
    if not valid.any():
        return float("nan")
    return float(np.sum(np.where(valid, arr, 0.0)) / valid.sum())


def hd95(
    fixed: np.ndarray, warped: np.ndarray, counts: LabelCounts, spacings: Sequence[Sequence[float]] = ((1.0, 1.0, 1.0),)
) -> list[list[float]]:
    """HD95 per label for each spacing in ``spacings`` (official: ``(1, 1, 1)``, voxels).

    Surfels are extracted once per label inside its bounding box and reused for every spacing;
    their squared voxel distances (exact integers) serve every isotropic spacing, scaled.
    Returns one list per spacing, NaN where the label is not present, ``inf`` where it vanished.
    """
    (f, w), index = _indexed((fixed, warped), counts.labels)
    boxes_f, boxes_w = object_boxes(f), object_boxes(w)
    keys = [tuple(float(v) for v in s) for s in spacings]
    found: dict[tuple[float, ...], list[float]] = {k: [] for k in keys}  # a repeated spacing (1 mm images) once
    for i, (ok, value) in enumerate(zip(counts.present, index, strict=True)):
        if not ok:
            for values in found.values():
                values.append(float("nan"))
            continue
        a, b = _label_surface(f, boxes_f, value), _label_surface(w, boxes_w, value)
        if len(a) == 0 or len(b) == 0:  # vanished in the warp (or no surfel): inf, as the reference
            for values in found.values():
                values.append(float("inf"))
            continue
        # voxel units, exact integers; -1 for distances beyond what can decide the 95th percentile
        # (the local search, for labels that overlap well: their surfaces lie close)
        close = 2 * counts.overlap[i] >= surface.LOCAL_MIN_DICE * (counts.fixed[i] + counts.warped[i])
        squared = surface.pair_squared_distances(a, b, grid=f.shape, percent=95.0 if close else None)
        for spacing, values in found.items():
            if min(spacing) == max(spacing):  # isotropic: the voxel distances, scaled
                scale = None if spacing[0] == 1.0 else spacing[0]
                directed = _directed_hd95(squared, (a, b), spacing, scale)
                if None in directed:  # the unknown distances could decide it (rounding margin): all of them
                    squared = surface.pair_squared_distances(a, b, grid=f.shape)
                    directed = _directed_hd95(squared, (a, b), spacing, scale)
                values.append(max(d for d in directed if d is not None))  # complete distances: never None
            else:
                dist = surface.pair_distances(a, b, spacing)
                values.append(surface.robust_hausdorff(a, b, 95.0, spacing, surface.surfel_area_table(spacing), dist))
    return [list(found[k]) for k in keys]


def _directed_hd95(squared: tuple[np.ndarray, np.ndarray], surfaces: tuple[surface.Surface, surface.Surface],
                   spacing: tuple[float, ...], scale: float | None) -> list[float | None]:
    """Both directions' 95th percentiles (``surface.directed_percentile_squared``; ``None`` where
    unknown distances could decide one)."""
    return [surface.directed_percentile_squared(sq, s.codes, spacing, 95.0, scale) for sq, s in zip(squared, surfaces, strict=True)]


def nonzero_box(*maps: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box holding every nonzero voxel of the (same-shape) ``maps``, as slices;
    ``None`` if there is none, the whole grid if some map is not 3-D. A few ms per map, and
    the label statistics then run on the labelled part of the grid only (typically 10-30 %)."""
    if any(m.ndim != 3 for m in maps):
        return tuple(slice(0, n) for n in maps[0].shape)
    boxes = [b for b in (surface.bounding_box(m) for m in maps) if b is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def object_boxes(labels: np.ndarray) -> list[tuple[slice, ...] | None]:
    """``scipy.ndimage.find_objects(labels)`` of a 3-D non-negative integer label map: for each
    value ``1..max``, the slices of its bounding box, or ``None`` where the value is absent.

    Found from the runs of equal values along the contiguous axis inside the box of the nonzero
    voxels (a run's first voxel bounds the two slower axes, its first and last the fast one):
    ~2x faster than ``find_objects``, and scipy is not imported (its start-up is ~0.2 CPU s)."""
    box = nonzero_box(labels)
    if box is None:
        return []
    perm = contract.walk_order(labels)
    sub = labels[box].transpose(perm)  # slowest axis first, contiguous last
    flat = sub.ravel()  # memory order (a copy when the box is a strict part of the grid)
    starts = np.empty(flat.size, dtype=bool)
    starts[0] = True
    np.not_equal(flat[1:], flat[:-1], out=starts[1:])
    starts[:: sub.shape[2]] = True  # every line starts a run
    first = np.flatnonzero(starts)
    last = np.empty_like(first)
    last[:-1] = first[1:] - 1
    last[-1] = flat.size - 1
    values = flat[first]
    keep = values != 0
    first, last, values = first[keep], last[keep], values[keep].astype(np.intp)
    size = int(values.max()) + 1
    slow, rest = np.divmod(first, sub.shape[1] * sub.shape[2])
    middle, fast = np.divmod(rest, sub.shape[2])
    lo = np.full((3, size), np.iinfo(np.intp).max, dtype=np.intp)
    hi = np.full((3, size), -1, dtype=np.intp)
    for b, (low, high) in enumerate(((slow, slow), (middle, middle), (fast, fast + last - first))):
        np.minimum.at(lo[b], values, low)
        np.maximum.at(hi[b], values, high)
    offset = [box[a].start for a in perm]
    out: list[tuple[slice, ...] | None] = []
    for v in range(1, size):
        if hi[0, v] < 0:
            out.append(None)
            continue
        view = [slice(int(lo[b, v]) + offset[b], int(hi[b, v]) + 1 + offset[b]) for b in range(3)]
        out.append(tuple(view[perm.index(a)] for a in range(3)))
    return out


def _label_surface(labels: np.ndarray, boxes: list, value: int) -> surface.Surface:
    if value == 0:  # background configured as a label: no object box, use the whole grid
        return surface.mask_surface(labels == 0)
    box = boxes[value - 1] if value <= len(boxes) else None
    if box is None:
        return surface.Surface(np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.uint8))
    return surface.extract_surface(labels[box] == value, [s.start for s in box])


# ----------------------------------------------------------------------------- TRE


def tre(
    u: np.ndarray,
    fixed_points: np.ndarray,
    moving_points: np.ndarray,
    spacing: Sequence[float],
    method: str = "auto",
    sample_dtype: Any = None,
) -> np.ndarray:
    """Official TRE per point (mm): ``|| (p_fixed + u(p_fixed) - p_moving) * spacing_moving ||``.

    ``u`` is sampled with the official cubic B-spline (``learn2reg.contract.sample_field``
    semantics). ``method``: ``"full"`` prefilters the whole field (as the reference), ``"crop"``
    only the points' bounding box plus a ``spline.TRE_RADIUS`` margin (both with scipy),
    ``"kernel"`` sums the exact separable weights over a window per point (numpy,
    :func:`spline.sample_window`: no scipy import), as small as :func:`spline.tre_radii` can
    prove harmless (each TRE within ``spline.TRE_RELATIVE`` of the exact one); ``"auto"`` picks
    the cheaper of the last two. All agree to ~1e-13 of max |u| or ``spline.TRE_RELATIVE`` of
    each TRE. ``sample_dtype``: the samples are rounded to it first (``np.float32``: as
    ``map_coordinates`` returns them for a float32 field, L2R HEAD's ``.npz``).
    """
    fixed_points = np.asarray(fixed_points, dtype=np.float64).reshape(-1, 3)
    moving_points = np.asarray(moving_points, dtype=np.float64).reshape(-1, 3)
    if fixed_points.shape != moving_points.shape:
        raise ValueError(f"fixed and moving point counts differ: {fixed_points.shape[0]} vs {moving_points.shape[0]}")
    mm = np.asarray(spacing, dtype=np.float64)

    def errors(disp: np.ndarray, which: Any = slice(None)) -> np.ndarray:
        if sample_dtype is not None:
            disp = disp.astype(sample_dtype).astype(np.float64)
        return np.linalg.norm((fixed_points[which] + disp - moving_points[which]) * mm, axis=1)

    contract.check_field(u)
    if fixed_points.shape[0] == 0 or _sampler(u.shape[:3], fixed_points, method) != "kernel":
        return errors(sample_cubic(u, fixed_points, method))
    weights = [spline.axis_weights(u.shape[a], fixed_points[:, a]) for a in range(3)]
    radii, bound = spline.tre_radii(u, fixed_points, moving_points, mm, weights)
    values = errors(spline.sample_window(u, fixed_points, radii, weights))
    # the window's truncation moves each TRE by at most bound (rigorous); where that is not
    # spline.TRE_RELATIVE of it (the estimate behind the radius was off), the point is sampled again
    # with the full spline.TRE_RADIUS window: round-off, as every point was before
    again = (bound > spline.TRE_RELATIVE * (values - bound)) & (radii < spline.TRE_RADIUS)
    if again.any():
        full = np.full(int(again.sum()), spline.TRE_RADIUS)
        values[again] = errors(spline.sample_window(u, fixed_points[again], full, [w[again] for w in weights]), again)
    return values


def sample_cubic(u: np.ndarray, points: np.ndarray, method: str = "auto") -> np.ndarray:
    """Field values at voxel ``points`` (``N x 3``) by prefiltered cubic B-spline -> ``N x 3``
    (``"kernel"``: the full ``spline.TRE_RADIUS`` window, round-off)."""
    contract.check_field(u)
    if points.shape[0] == 0:
        return np.zeros((0, 3))
    method = _sampler(u.shape[:3], points, method)
    lo, hi = _crop_box(u.shape[:3], points)
    if method == "full":
        return contract.sample_field(u.astype(np.float64), points)
    if method == "crop":
        sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        return contract.sample_field(u[sl].astype(np.float64), points - lo)
    if method == "kernel":
        return spline.sample_window(u, points)
    raise ValueError(f"unknown TRE sampling method {method!r} (auto, full, crop, kernel)")


def _sampler(shape: Sequence[int], points: np.ndarray, method: str) -> str:
    """``method``, with ``"auto"`` resolved: the window sampler unless the windows would hold
    more than 40x the voxels of the points' crop (many points on a small grid)."""
    if method != "auto":
        return method
    lo, hi = _crop_box(shape, points)
    return "kernel" if points.shape[0] * spline.window_voxels(shape) < 40 * int(np.prod(hi - lo)) else "crop"


def _crop_box(shape: Sequence[int], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.clip(np.floor(points.min(axis=0)).astype(int) - spline.TRE_RADIUS, 0, None)
    hi = np.minimum(np.ceil(points.max(axis=0)).astype(int) + spline.TRE_RADIUS + 1, np.asarray(shape))
    return lo, np.maximum(hi, lo + 1)


def centroid_tre(fixed: np.ndarray, warped: np.ndarray) -> float:
    """LUMIR's landmark TRE (voxels): mean distance between the centroids of each landmark label
    in the fixed volume and in the warped moving volume (``warp_labels`` of the moving one).

    Their rules, reproduced (SPEC 2.5, 7.2-7.4): the labels are the values present in ``fixed``
    except the smallest (assumed background); the spacing is never applied; a label that
    vanished in the warp has a NaN centroid, so the result is NaN. Integer label volumes on
    one grid; sums of integer coordinates are exact, so the centroids equal theirs bit for bit.
    """
    counts = np.bincount(fixed.ravel(order="K"))
    present = np.flatnonzero(counts)[1:]  # np.unique(fixed)[1:]
    if present.size == 0:
        return float("nan")
    size = int(present[-1]) + 1
    centres = [_centroids(vol, size)[present] for vol in (warped, fixed)]
    with np.errstate(invalid="ignore"):
        return float(np.mean(np.sqrt(np.sum((centres[0] - centres[1]) ** 2, axis=1))))


def _centroids(labels: np.ndarray, size: int) -> np.ndarray:
    """Centroid (voxel index, float64; NaN where absent) of every label value below ``size``,
    from the box of the nonzero voxels (label 0 is never asked for: it is the smallest value)."""
    out = np.full((size, 3), np.nan)
    box = nonzero_box(labels)
    if box is None:
        return out
    order = contract.memory_order(labels)
    values = labels[box].ravel(order=order)
    keep = values < size
    flat = values[keep].astype(np.intp)
    counts = np.bincount(flat, minlength=size)[:size].astype(np.float64)
    shape = labels[box].shape
    for axis, sl in enumerate(box):
        index = np.arange(sl.start, sl.stop, dtype=np.float64).reshape([-1 if a == axis else 1 for a in range(3)])
        coord = np.broadcast_to(index, shape).ravel(order=order)
        sums = np.bincount(flat, weights=coord[keep], minlength=size)[:size]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, axis] = sums / counts  # 0 / 0 = NaN for an absent label, as theirs
    return out


# ----------------------------------------------------------------------------- aggregates

QUANTILE_HIGH = ("sdlogj", "tre", "runtime", "folding")  # lower is better: the "30" is the 0.7 quantile


def aggregate(values: Sequence[float], kind: str, variant: str = "l2r") -> dict[str, float]:
    """Aggregate per-case values into ``{"mean", "std", "30"}``.

    ``variant="l2r"`` (current evaluator): mean, population std, and the 0.3 quantile for DSC
    and HD95 but the 0.7 quantile for SDlogJ and TRE (``kind`` is the metric type; our runtime
    and folding metrics use 0.7 too). ``variant="2020"``: std with ddof=1 and 0.3 everywhere.
    NaN values propagate as in numpy.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "30": float("nan")}
    if variant == "2020":
        std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
        return {"mean": float(arr.mean()), "std": std, "30": float(np.quantile(arr, 0.3))}
    if variant != "l2r":
        raise ValueError(f"unknown aggregate variant {variant!r} (l2r, 2020)")
    q = 0.7 if kind in QUANTILE_HIGH else 0.3
    return {"mean": float(arr.mean()), "std": float(arr.std()), "30": float(np.quantile(arr, q))}
