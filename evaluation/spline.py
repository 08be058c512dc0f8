"""The official TRE's cubic B-spline sampling at a few points, in numpy (no scipy import).

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

import numpy as np

from learn2reg import contract

TRE_RADIUS = 14  # half-width (voxels) of the sampling window: truncation ~2e-9 of max |u| (|pole|^14 ~ 1e-8)
POLE = 3.0**0.5 - 2.0  # the pole of the cubic B-spline prefilter


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
    period, j = 2 * n - 2, np.arange(n)
    powers = np.cumprod(np.concatenate([[1.0], np.full(period, POLE)]))  # z^0 .. z^N
    h = np.sqrt(3.0) * (powers[:-1] + powers[:0:-1]) / (1.0 - powers[-1])  # h(m), m = 0 .. N - 1

    rows = h[np.mod(k[:, None] - j, period)]
    twice = (j > 0) & (j < n - 1)
    rows[:, twice] += h[np.mod(k[:, None] + j[twice], period)]
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


def sample_window(u: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``u`` at voxel ``points`` (``N x 3``) -> ``N x 3`` (float64), summing the exact separable
    weights over a ``L^3`` window per point (``L = 2 * TRE_RADIUS + 2``; the weights decay as
    ``0.268^distance``).

    Points are visited along the field's slowest axis in memory, so that consecutive windows
    share their planes in the cache (the windows are memory-bound: ~1.6x faster than file order).
    """
    shape = u.shape[:3]
    weights = [axis_weights(shape[a], points[:, a]) for a in range(3)]
    length = 2 * TRE_RADIUS + 2
    start = np.floor(np.where(np.isfinite(points), points, 0.0)).astype(int) - TRE_RADIUS  # NaN: weights 0
    start = np.clip(start, 0, np.maximum(np.asarray(shape) - length, 0))
    fortran = contract.memory_order(u) == "F"
    out = np.empty((points.shape[0], 3))
    for p in np.argsort(points[:, contract.walk_order(u)[0]], kind="stable"):
        sl = tuple(slice(int(start[p, a]), int(min(start[p, a] + length, shape[a]))) for a in range(3))
        wx, wy, wz = (weights[a][p, sl[a]] for a in range(3))
        if fortran:  # NIfTI layout: per component, x runs are contiguous; contract x first
            for c in range(3):
                block = np.asarray(u[(*sl, c)].T, dtype=np.float64)  # type: ignore[arg-type]  # numpy's stubs reject a slices + int index tuple
                out[p, c] = ((block @ wx) @ wy) @ wz
        else:
            block = np.asarray(u[sl], dtype=np.float64)  # x, y, z, component; C order
            out[p] = wz @ np.tensordot(wy, np.tensordot(wx, block, axes=(0, 0)), axes=(0, 0))
    return out
