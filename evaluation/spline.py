"""The official TRE's cubic B-spline sampling at a few points, in numpy (no scipy import).

The TRE itself: ``evaluation.metrics.tre``.

The organisers' evaluators sample ``u`` at the fixed points with
``scipy.ndimage.map_coordinates(u[..., c], points.T, order=3)``: defaults ``prefilter=True`` and
``mode='constant'``, whose rules (scipy >= 1.6, checked against scipy 1.13 and 1.17) are, along
each axis of ``n`` samples ``f_0 .. f_{n-1}``:

- the prefilter finds coefficients ``c`` with ``f_i = sum_k B(i - k) c_{m(k)}``, where ``B`` is
  the cubic B-spline (``B(0) = 2/3``, ``B(+-1) = 1/6``) and ``m`` mirrors an index about the end
  samples (``... c_2 c_1 | c_0 c_1 .. c_{n-1} | c_{n-2} ...``): ``c = A^-1 f`` for the
  tridiagonal ``A`` of these conditions (its inverse in closed form: :func:`coefficient_rows`);
- the value at ``x`` in ``[0, n - 1]`` is ``sum_k B(x - k) c_{m(k)}`` over the four knots
  ``k = floor(x) - 1 .. floor(x) + 2``; outside ``[0, n - 1]`` it is 0 (``cval``).

Both steps are linear in ``f``, so the value is ``w(x) . f`` with ``w(x) = b(x) A^-1`` (``b``: the
four B-spline taps folded by ``m``), and the 3-D value is ``sum w_x w_y w_z u``: the exact
weights of scipy's separable filter and interpolation, to round-off (the tests compare them with
scipy's). Importing ``scipy.ndimage`` costs ~0.2 CPU s, more than ReMIND2Reg's whole computation
on six pairs; these weights cost microseconds.

Frames and units: ``u`` is ``X x Y x Z x 3`` (voxels, ``learn2reg.contract``), points are ``N x 3``
voxel coordinates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from learn2reg import contract

# Half-width (voxels) of the full sampling window, and the crop's margin: the weights decay as
# |pole|^d, so the truncation is ~5e-14 of max |u| (|pole|^24 ~ 2e-14), round-off for the
# organisers' 1e-6 relative comparison of any TRE above ~1e-5 mm. 14 (truncation ~1e-8 of max |u|)
# gave real-anatomy TREs of 0.06 mm 2e-7 relative off the organisers' full prefilter
# (bench/results/organisers_parity_brain.md): hence windows chosen per point (tre_radii), from a
# bound, never from a guess.
TRE_RADIUS = 24
TRE_RELATIVE = 1e-9  # the most a window's truncation may move a TRE, relative to it (proved per point)
POLE = 3.0**0.5 - 2.0  # the pole of the cubic B-spline prefilter


def window_voxels(shape: Sequence[int]) -> int:
    """Voxels of one point's sampling window (:func:`sample_window`) on a grid of ``shape``: a
    window never exceeds the grid."""
    return math.prod(min(2 * TRE_RADIUS + 2, int(n)) for n in shape)


def mirror(k: np.ndarray, n: int) -> np.ndarray:
    """Indices ``k`` (any integers) mirrored about the end samples of ``0 .. n - 1`` (scipy's
    ``'mirror'``: ``.. 2 1 | 0 1 .. n-1 | n-2 ..``)."""
    if n == 1:
        return np.zeros_like(k)
    period = 2 * n - 2
    k = np.mod(k, period)
    return np.where(k >= n, period - k, k)


def coefficient_rows(k: np.ndarray, n: int) -> np.ndarray:
    """Rows ``k`` of ``A^-1`` (``len(k) x n``, float64): ``c_k = sum_j A^-1[k, j] f_j``.

    Closed form, no linear solve: mirrored, the samples are periodic with period ``N = 2n - 2``
    (``f_j`` at ``j`` and ``N - j``), and on a period the inverse of ``[1/6, 2/3, 1/6]`` is the
    periodised ``sqrt(3) z^|m|`` with the pole ``z = sqrt(3) - 2``:
    ``h(m) = sqrt(3) (z^m + z^(N - m)) / (1 - z^N)`` for ``m`` in ``0 .. N - 1``, so
    ``A^-1[k, j] = h(k - j) + h(k + j)`` (indices mod ``N``; the second term only for the
    samples ``0 < j < n - 1``, which appear twice in a period)."""
    k = np.asarray(k, dtype=np.int64).reshape(-1)
    if n == 1:
        return np.ones((k.size, 1))
    return _inverse_rows(n)[np.mod(k, 2 * n - 2)]


@functools.lru_cache(maxsize=4)
def _inverse_rows(n: int) -> np.ndarray:
    """All rows ``k = 0 .. 2n - 3`` of :func:`coefficient_rows` on a line of ``n`` (read-only;
    cached: the points of every pair of a task lie on the same grid)."""
    period, j = 2 * n - 2, np.arange(n)
    powers = np.cumprod(np.concatenate([[1.0], np.full(period, POLE)]))  # z^0 .. z^N
    h = np.sqrt(3.0) * (powers[:-1] + powers[:0:-1]) / (1.0 - powers[-1])  # h(m), m = 0 .. N - 1
    k = np.arange(period)
    rows = h[np.mod(k[:, None] - j, period)]
    twice = (j > 0) & (j < n - 1)
    rows[:, twice] += h[np.mod(k[:, None] + j[twice], period)]
    rows.flags.writeable = False
    return rows


def axis_weights(n: int, coords: np.ndarray) -> np.ndarray:
    """``P x n`` weights ``w[p, m]``: the value at ``coords[p]`` of scipy's prefiltered cubic
    spline (``mode='constant'``) through the unit impulse at sample ``m`` of a line of ``n``;
    rows of points outside ``[0, n - 1]`` (or not finite) are 0 (module docstring)."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1)
    outside = ~((coords >= 0) & (coords <= n - 1))  # NaN too: scipy gives 0 there
    coords = np.where(outside, 0.0, coords)  # a placeholder; those rows are zeroed below
    base = np.floor(coords)
    t = coords - base
    t2, t3 = t * t, t * t * t
    taps = np.stack([(1 - t) ** 3 / 6, (4 - 6 * t2 + 3 * t3) / 6, (1 + 3 * t + 3 * t2 - 3 * t3) / 6, t3 / 6], axis=1)
    knots = mirror(base.astype(np.int64)[:, None] + np.arange(-1, 3), n)  # P x 4
    rows = coefficient_rows(knots, n).reshape(coords.size, 4, n)
    weights = np.einsum("pt,ptm->pm", taps, rows)
    weights[outside] = 0.0
    return weights


def tre_radii(
    u: np.ndarray, fixed: np.ndarray, moving: np.ndarray, spacing: np.ndarray, weights: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the smallest window half-width (``4 .. TRE_RADIUS``) whose truncation provably
    moves its TRE by at most ``TRE_RELATIVE / 2`` of an estimate of it, and that bound (mm).

    The bound: a window keeps, per axis, the weights ``I_a`` of the line's absolute sum ``S_a``
    (``weights``: :func:`axis_weights`, exact over the whole line), so each sampled component is
    off by at most ``max |u_c| (S_x S_y S_z - I_x I_y I_z)``, and the TRE by at most that vector
    times the spacing. The estimate: the TRE with ``u`` at the nearest voxel; :func:`tre` checks
    the bound against the TRE it then computes and samples again where the estimate was off.
    """
    shape = u.shape[:3]
    size = np.maximum(u.max(axis=(0, 1, 2)), -u.min(axis=(0, 1, 2))).astype(np.float64)
    scale = float(np.sqrt(np.sum((size * spacing) ** 2)))  # mm per unit of weight left out
    candidates = np.arange(4, TRE_RADIUS + 1)
    kept, total = np.ones((fixed.shape[0], candidates.size)), np.ones(fixed.shape[0])
    for a in range(3):
        sums = np.concatenate([np.zeros((fixed.shape[0], 1)), np.cumsum(np.abs(weights[a]), axis=1)], axis=1)
        start, stop = _window(fixed[:, a, None], shape[a], candidates)
        rows = np.arange(fixed.shape[0])[:, None]
        kept *= sums[rows, stop] - sums[rows, start]
        total *= sums[:, -1]
    bound = np.maximum(total[:, None] - kept, 0.0) * scale
    finite = np.isfinite(fixed).all(axis=1)
    nearest = np.clip(np.rint(np.where(finite[:, None], fixed, 0.0)), 0, np.asarray(shape) - 1).astype(np.intp)
    guess = np.linalg.norm((fixed + u[nearest[:, 0], nearest[:, 1], nearest[:, 2]] - moving) * spacing, axis=1)
    enough = bound <= 0.5 * TRE_RELATIVE * guess[:, None]
    enough[:, -1] = True
    pick = enough.argmax(axis=1)
    return candidates[pick], bound[np.arange(fixed.shape[0]), pick]


def _window(coords: np.ndarray, n: int, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop of the sampling windows of half-width ``radius`` around ``coords`` on an
    axis of ``n`` (``2 radius + 2`` samples, shifted to stay inside, never longer than the axis;
    NaN coordinates: any window, their weights are 0)."""
    length = 2 * radius + 2
    start = np.floor(np.where(np.isfinite(coords), coords, 0.0)).astype(np.intp) - radius
    start = np.clip(start, 0, np.maximum(n - length, 0))
    return start, np.minimum(start + length, n)


def sample_window(
    u: np.ndarray, points: np.ndarray, radii: np.ndarray | None = None, weights: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """``u`` at voxel ``points`` (``N x 3``) -> ``N x 3`` (float64), summing the exact separable
    weights over a ``(2 r + 2)^3`` window per point (``r``: ``radii``, default ``TRE_RADIUS``;
    the weights decay as ``0.268^distance``; ``weights``: :func:`axis_weights` of the points, if
    already computed).

    Points are visited along the field's slowest axis in memory, so that consecutive windows
    share their planes in the cache (the windows are memory-bound: ~1.6x faster than file order).
    Where the windows overlap (more window voxels than the box of all windows holds), that box is
    converted to float64 once, one component at a time (NIfTI layout), rather than window by
    window: the same values, so the same sums (100 landmarks on an 80x96x80 grid: 23 -> 14 ms).
    """
    shape = u.shape[:3]
    if weights is None:
        weights = [axis_weights(shape[a], points[:, a]) for a in range(3)]
    radii = np.full(points.shape[0], TRE_RADIUS) if radii is None else np.asarray(radii)
    start, stop = (np.stack(ends, axis=1) for ends in zip(*(_window(points[:, a], shape[a], radii) for a in range(3)), strict=True))
    box: tuple[slice, ...] | None = None
    if u.dtype != np.float64 and points.shape[0] > 0:
        lo, hi = start.min(axis=0), stop.max(axis=0)
        if int(np.prod(stop - start, axis=1).sum()) > math.prod((hi - lo).tolist()):
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
            weights = [w[:, int(lo[a]) : int(hi[a])] for a, w in enumerate(weights)]
            start, stop = start - lo, stop - lo
    order = np.argsort(points[:, contract.walk_order(u)[0]], kind="stable")
    windows = [tuple(slice(int(start[p, a]), int(stop[p, a])) for a in range(3)) for p in range(points.shape[0])]
    out = np.empty((points.shape[0], 3))
    if contract.memory_order(u) == "F":  # NIfTI layout: per component, x runs are contiguous; contract x first
        for c in range(3):
            part = u[..., c]
            if box is not None:  # this component's box, converted once
                part = np.asarray(part[box], dtype=np.float64, order="F")
            for p in order:
                wx, wy, wz = (weights[a][p, windows[p][a]] for a in range(3))
                block = np.asarray(part[windows[p]].T, dtype=np.float64)
                out[p, c] = ((block @ wx) @ wy) @ wz
        return out
    if box is not None:
        u = np.asarray(u[box], dtype=np.float64)
    for p in order:
        wx, wy, wz = (weights[a][p, windows[p][a]] for a in range(3))
        block = np.asarray(u[windows[p]], dtype=np.float64)  # x, y, z, component; C order
        out[p] = wz @ np.tensordot(wy, np.tensordot(wx, block, axes=(0, 0)), axes=(0, 0))
    return out
