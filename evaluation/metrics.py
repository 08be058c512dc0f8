"""Learn2Reg metrics: the official definitions (default) plus clearly named corrected ones.

Frames and units: fields ``u`` are ``X x Y x Z x 3`` in voxels on the fixed grid (pull; see
``evaluation.contract``); label maps are integer ``X x Y x Z`` arrays; points are ``N x 3`` voxel
coordinates; spacings are mm per voxel along the array axes.

Official quirks reproduced here (learn2reg.md section 3): a label absent in the fixed OR moving
labels gives NaN for DSC and HD95, case values are NaN-means; HD95 uses spacing (1, 1, 1), so it is
in voxels; SDlogJ is ``std(log(clip(det(J) + 3, 1e-9, 1e9)))`` over the field cropped by 2 voxels
(and masked by the fixed mask == 1 when configured); ``num_foldings`` is counted after the +3 and
clipping and is therefore always 0. Ours, named as such: ``SDlogJ_true`` (std of log det J over the
voxels of the same region with det J > 0), ``num_foldings_true`` and ``folding_fraction`` (det J <= 0),
``*_mm`` HD95 with the fixed image's spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from evaluation import contract, surface

LOG_CLIP = (1e-9, 1e9)  # official clip of det + 3 before the log
DET_SHIFT = 3.0  # official (quirky) shift of det J before the log
CROP = 2  # voxels dropped on every face before SDlogJ
TRE_RADIUS = 16  # kernel half-width (voxels) of the fast TRE sampler: truncation < 1e-8 of |u|


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


def warp_labels(moving: np.ndarray, u: np.ndarray, margin: int = 2, chunk_voxels: int = 2_000_000) -> np.ndarray:
    """``evaluation.contract.warp_labels`` (official nearest-neighbour rule), computed only where
    it can be non-zero: fixed voxels ``x`` whose ``x + u(x)`` may reach the bounding box of the
    moving labels (per axis, using the extremes of ``u`` plus ``margin`` voxels). Elsewhere the
    nearest moving voxel is background or outside, i.e. 0. The crop is warped in chunks of about
    ``chunk_voxels`` (memory); each chunk's field carries its offset exactly in float64, so the
    sampling coordinates, hence the result, are identical to the full warp.
    """
    contract.check_field(u)
    box = surface.bounding_box(moving != 0)
    out = np.zeros(u.shape[:3], dtype=moving.dtype)
    if box is None:
        return out
    lo, hi = [], []
    for axis in range(3):
        comp = u[..., axis]
        lo.append(max(int(np.floor(box[axis].start - float(comp.max()))) - margin, 0))
        hi.append(min(int(np.ceil(box[axis].stop - 1 - float(comp.min()))) + margin + 1, u.shape[axis]))
    if any(a >= b for a, b in zip(lo, hi, strict=True)):
        return out
    step = max(1, chunk_voxels // ((hi[1] - lo[1]) * (hi[2] - lo[2])))
    for a0 in range(lo[0], hi[0], step):
        crop = (slice(a0, min(a0 + step, hi[0])), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        sub = u[crop].astype(np.float64)
        sub += np.asarray([a0, lo[1], lo[2]], dtype=np.float64)  # chunk voxel i is fixed voxel offset + i
        out[crop] = contract.warp_labels(moving, sub)
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
    code_dtype = np.uint16 if k * k <= 65536 else np.uint32 if k * k < 2**32 else np.uint64
    joint = np.bincount((f.astype(code_dtype) * code_dtype(k) + w).ravel(), minlength=k * k).reshape(k, k)
    moving_counts = np.bincount(m.ravel(), minlength=k)
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

    Surfels are extracted once per label inside its bounding box and reused for every spacing.
    Returns one list per spacing, NaN where the label is not present, ``inf`` where it vanished.
    """
    (f, w), index = _indexed((fixed, warped), counts.labels)
    boxes_f, boxes_w = ndimage.find_objects(f), ndimage.find_objects(w)
    tables = [surface.surfel_area_table(s) for s in spacings]
    out: list[list[float]] = [[] for _ in spacings]
    for ok, value in zip(counts.present, index, strict=True):
        if not ok:
            for values in out:
                values.append(float("nan"))
            continue
        a, b = _label_surface(f, boxes_f, value), _label_surface(w, boxes_w, value)
        voxel = surface.pair_distances(a, b)
        for values, spacing, table in zip(out, spacings, tables, strict=True):
            if float(min(spacing)) == float(max(spacing)):  # isotropic: the voxel distances, scaled
                dist = voxel if float(spacing[0]) == 1.0 else (voxel[0] * float(spacing[0]), voxel[1] * float(spacing[0]))
            else:
                dist = surface.pair_distances(a, b, spacing)
            values.append(surface.robust_hausdorff(a, b, 95.0, spacing, table, dist))
    return out


def _label_surface(labels: np.ndarray, boxes: list, value: int) -> surface.Surface:
    if value == 0:  # background configured as a label: no object box, use the whole grid
        return surface.mask_surface(labels == 0)
    box = boxes[value - 1] if value <= len(boxes) else None
    if box is None:
        return surface.Surface(np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.uint8))
    return surface.extract_surface(labels[box] == value, [s.start for s in box])


# ----------------------------------------------------------------------------- Jacobian


@dataclass(frozen=True)
class JacobianStats:
    """Jacobian-determinant statistics over the field cropped by ``CROP`` voxels (and masked).

    ``sdlogj`` and ``num_foldings`` are the official numbers (+3 quirk; the latter is always 0);
    the ``*_true`` ones use det(I + grad u) itself: ``sdlogj_true`` over the voxels with det > 0
    (population std of log det), ``num_foldings_true`` counts det <= 0, ``folding_fraction`` is
    that count over the number of voxels in the region.
    """

    sdlogj: float
    num_foldings: float
    sdlogj_true: float
    num_foldings_true: int
    folding_fraction: float
    voxels: int


def jacobian_stats(u: np.ndarray, mask: np.ndarray | None = None, slab: int = 1) -> JacobianStats:
    """Official SDlogJ (bit-identical determinants) and our corrected statistics.

    ``u``: ``X x Y x Z x 3`` voxel field; ``mask``: fixed mask on the same grid (voxels == 1
    count) or ``None``. Central differences ``(u[i+1] - u[i-1]) / 2`` on the interior equal the
    official zero-padded correlation after the 2-voxel crop; computed in float64 slabs of
    ``slab`` planes (cache-sized buffers) along the field's slowest axis in memory (axis 0 for C
    order, axis 2 for NIfTI's Fortran order), so no full-size float64 Jacobian is ever held.
    """
    contract.check_field(u)
    if min(u.shape[:3]) <= 2 * CROP:
        raise ValueError(f"field {u.shape[:3]} is too small for the {CROP}-voxel crop of SDlogJ")
    perm = _walk_order(u)
    v, c = u.transpose(*perm, 3), CROP
    region = None if mask is None else np.ascontiguousarray(mask.transpose(perm)[c:-c, c:-c, c:-c] == 1)
    log_shifted = np.empty(tuple(n - 2 * c for n in v.shape[:3]))
    work = _DetBuffers((slab, *log_shifted.shape[1:]))
    shifted_folds, folds, n_pos, s1, s2 = 0, 0, 0, 0.0, 0.0
    for i0 in range(c, v.shape[0] - c, slab):
        i1 = min(i0 + slab, v.shape[0] - c)
        det = _det_slab(v, i0, i1, work, perm)
        tmp, pos = work.t1[: i1 - i0], work.pos[: i1 - i0]
        np.add(det, DET_SHIFT, out=tmp)
        np.clip(tmp, *LOG_CLIP, out=tmp)
        shifted_folds += int(np.count_nonzero(tmp <= 0))  # the official count (unmasked): always 0
        np.log(tmp, out=log_shifted[i0 - c : i1 - c])
        np.greater(det, 0, out=pos)
        counted = det.size
        if region is not None:
            pos &= region[i0 - c : i1 - c]
            counted = int(np.count_nonzero(region[i0 - c : i1 - c]))
        n = int(np.count_nonzero(pos))
        np.log(det, out=tmp, where=pos)
        folds, n_pos = folds + counted - n, n_pos + n
        s1 += float(np.sum(tmp, where=pos))
        s2 += float(np.sum(np.square(tmp, out=tmp, where=pos), where=pos))
    values = log_shifted if region is None else log_shifted[region]
    voxels = int(values.size)
    sdlogj = float(values.std()) if voxels else float("nan")
    true_std = float(np.sqrt(max(s2 / n_pos - (s1 / n_pos) ** 2, 0.0))) if n_pos else float("nan")
    fraction = folds / voxels if voxels else float("nan")
    return JacobianStats(sdlogj, float(shifted_folds), true_std, folds, fraction, voxels)


def jacobian_det_interior(u: np.ndarray, slab: int = 1) -> np.ndarray:
    """The official determinant grid: det(I + grad u) with official central differences on the
    field cropped by ``CROP`` voxels per face -> ``(X-4) x (Y-4) x (Z-4)`` float64 (no +3)."""
    contract.check_field(u)
    perm = _walk_order(u)
    v = u.transpose(*perm, 3)
    work = _DetBuffers((slab, v.shape[1] - 2 * CROP, v.shape[2] - 2 * CROP))
    end = v.shape[0] - CROP
    slabs = [_det_slab(v, i0, min(i0 + slab, end), work, perm).copy() for i0 in range(CROP, end, slab)]
    return np.concatenate(slabs).transpose(perm)  # perm is its own inverse


def _walk_order(u: np.ndarray) -> tuple[int, int, int]:
    """Spatial axes, slowest in memory first: reversed for Fortran-ordered (NIfTI) fields."""
    return (2, 1, 0) if u.flags.f_contiguous and not u.flags.c_contiguous else (0, 1, 2)


class _DetBuffers:
    """Reusable float64 work arrays for :func:`_det_slab` (``slab x Y' x Z'`` each)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.g = [[np.empty(shape) for _ in range(3)] for _ in range(3)]
        self.t1, self.t2, self.det = np.empty(shape), np.empty(shape), np.empty(shape)
        self.pos = np.empty(shape, dtype=bool)


# (upper, lower) neighbour slices of the central difference along each axis, in a slab padded by 1
_DIFF = [
    ((slice(2, None), slice(1, -1), slice(1, -1)), (slice(0, -2), slice(1, -1), slice(1, -1))),
    ((slice(1, -1), slice(2, None), slice(1, -1)), (slice(1, -1), slice(0, -2), slice(1, -1))),
    ((slice(1, -1), slice(1, -1), slice(2, None)), (slice(1, -1), slice(1, -1), slice(0, -2))),
]


def _det_slab(v: np.ndarray, i0: int, i1: int, work: _DetBuffers, perm: tuple[int, int, int]) -> np.ndarray:
    """det(I + grad u) at interior planes ``i0..i1-1`` of the view ``v = u.transpose(*perm, 3)``
    (other axes cropped by ``CROP``), float64, a view into ``work`` (valid until the next call).

    ``j[a][c] = delta_ac + (u_c[x + e_a] - u_c[x - e_a]) / 2`` for *field* axis ``a`` (view axis
    ``b`` is field axis ``perm[b]``), computed in float64 exactly as the official
    ``-0.5 u[i-1] + 0.5 u[i+1]``; the cofactor expansion is the official one, term by term.
    """
    n, c = i1 - i0, CROP
    j: list[list[np.ndarray]] = [[work.g[a][comp][:n] for comp in range(3)] for a in range(3)]
    for comp in range(3):
        w = v[i0 - 1 : i1 + 1, c - 1 : v.shape[1] - c + 1, c - 1 : v.shape[2] - c + 1, comp]
        for b, (hi, lo) in enumerate(_DIFF):
            out = j[perm[b]][comp]
            np.subtract(w[hi], w[lo], out=out, dtype=np.float64)
            out *= 0.5
        j[comp][comp] += 1.0
    t1, t2, det = work.t1[:n], work.t2[:n], work.det[:n]
    np.multiply(j[1][1], j[2][2], out=t1)
    t1 -= np.multiply(j[1][2], j[2][1], out=t2)
    np.multiply(j[0][0], t1, out=det)
    np.multiply(j[0][1], j[2][2], out=t1)
    t1 -= np.multiply(j[0][2], j[2][1], out=t2)
    det -= np.multiply(j[1][0], t1, out=t1)
    np.multiply(j[0][1], j[1][2], out=t1)
    t1 -= np.multiply(j[0][2], j[1][1], out=t2)
    det += np.multiply(j[2][0], t1, out=t1)
    return det


# ----------------------------------------------------------------------------- TRE


def tre(
    u: np.ndarray, fixed_points: np.ndarray, moving_points: np.ndarray, spacing: Sequence[float], method: str = "auto"
) -> np.ndarray:
    """Official TRE per point (mm): ``|| (p_fixed + u(p_fixed) - p_moving) * spacing_moving ||``.

    ``u`` is sampled with the official cubic B-spline (``evaluation.contract.sample_field``
    semantics). ``method``: ``"full"`` prefilters the whole field (as the reference),
    ``"crop"`` only the points' bounding box plus a ``TRE_RADIUS`` margin, ``"kernel"`` sums the
    exact separable interpolation weights over a ``2 * TRE_RADIUS + 2`` window per point;
    ``"auto"`` picks the cheaper of the last two. All agree to ~1e-9 of |u|.
    """
    fixed_points = np.asarray(fixed_points, dtype=np.float64).reshape(-1, 3)
    moving_points = np.asarray(moving_points, dtype=np.float64).reshape(-1, 3)
    if fixed_points.shape != moving_points.shape:
        raise ValueError(f"fixed and moving point counts differ: {fixed_points.shape[0]} vs {moving_points.shape[0]}")
    disp = sample_cubic(u, fixed_points, method)
    return np.linalg.norm((fixed_points + disp - moving_points) * np.asarray(spacing, dtype=np.float64), axis=1)


def sample_cubic(u: np.ndarray, points: np.ndarray, method: str = "auto") -> np.ndarray:
    """Field values at voxel ``points`` (``N x 3``) by prefiltered cubic B-spline -> ``N x 3``."""
    contract.check_field(u)
    if points.shape[0] == 0:
        return np.zeros((0, 3))
    lo, hi = _crop_box(u.shape[:3], points)
    if method == "auto":
        window = (2 * TRE_RADIUS + 2) ** 3
        method = "kernel" if points.shape[0] * window < 40 * int(np.prod(hi - lo)) else "crop"
    if method == "full":
        return contract.sample_field(u.astype(np.float64), points)
    if method == "crop":
        sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        return contract.sample_field(u[sl].astype(np.float64), points - lo)
    if method == "kernel":
        return _sample_kernel(u, points)
    raise ValueError(f"unknown TRE sampling method {method!r} (auto, full, crop, kernel)")


def _crop_box(shape: Sequence[int], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.clip(np.floor(points.min(axis=0)).astype(int) - TRE_RADIUS, 0, None)
    hi = np.minimum(np.ceil(points.max(axis=0)).astype(int) + TRE_RADIUS + 1, np.asarray(shape))
    return lo, np.maximum(hi, lo + 1)


def _axis_weights(n: int, coords: np.ndarray) -> np.ndarray:
    """``P x n`` weights ``w[p, m]``: the value at ``coords[p]`` of the prefiltered cubic spline
    through the unit impulse at ``m`` on a line of ``n`` samples, with ``map_coordinates``'
    own filter and boundary rules (so the 3-D sample is ``sum w_x w_y w_z u``)."""
    coeffs = ndimage.spline_filter1d(np.eye(n), order=3, axis=0, output=np.float64, mode="constant")
    at = coords[None, :]
    return np.stack(
        [ndimage.map_coordinates(coeffs[:, m], at, order=3, mode="constant", prefilter=False) for m in range(n)], axis=1
    )


def _sample_kernel(u: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Separable-weight sampler: per point, a ``L^3`` window (``L = 2 * TRE_RADIUS + 2``)."""
    shape = u.shape[:3]
    weights = [_axis_weights(shape[a], points[:, a]) for a in range(3)]
    length = 2 * TRE_RADIUS + 2
    start = np.floor(points).astype(int) - TRE_RADIUS
    start = np.clip(start, 0, np.maximum(np.asarray(shape) - length, 0))
    fortran = u.flags.f_contiguous and not u.flags.c_contiguous
    out = np.empty((points.shape[0], 3))
    for p in range(points.shape[0]):
        sl = tuple(slice(int(start[p, a]), int(min(start[p, a] + length, shape[a]))) for a in range(3))
        wx, wy, wz = (weights[a][p, sl[a]] for a in range(3))
        if fortran:  # NIfTI layout: per component, x runs are contiguous; contract x first
            for c in range(3):
                block = np.asarray(u[(*sl, c)].T, dtype=np.float64)  # z, y, x; C order
                out[p, c] = ((block @ wx) @ wy) @ wz
        else:
            block = np.asarray(u[sl], dtype=np.float64)  # x, y, z, component; C order
            out[p] = wz @ np.tensordot(wy, np.tensordot(wx, block, axes=(0, 0)), axes=(0, 0))
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
