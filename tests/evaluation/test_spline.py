"""evaluation.spline: the numpy weights of scipy's cubic B-spline sampling, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from evaluation import metrics, spline


def _scipy_weights(n: int, coords: np.ndarray) -> np.ndarray:
    """``P x n``: ``map_coordinates`` (order 3, its defaults) of each unit impulse at ``coords``."""
    eye = np.eye(n)
    return np.stack([ndimage.map_coordinates(eye[:, m], coords[None, :], order=3) for m in range(n)], axis=1)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 40])
def test_axis_weights_are_scipys_inside_at_the_ends_and_outside(n):
    edges = [0.0, 1e-9, n - 1.0, n - 1 - 1e-9, -1e-9, n - 1 + 1e-9, -0.5, n - 0.5, -2.0, n + 1.0, np.nan, np.inf, -np.inf]
    coords = np.concatenate([np.linspace(-1.5, n + 0.5, 53), edges])
    np.testing.assert_allclose(spline.axis_weights(n, coords), _scipy_weights(n, coords), rtol=0, atol=1e-14)


def test_mirror_reflects_about_the_end_samples():
    assert spline.mirror(np.arange(-3, 9), 4).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert spline.mirror(np.array([-2, 0, 5]), 1).tolist() == [0, 0, 0]


@pytest.mark.parametrize("n", [1, 2, 3, 6, 50])
def test_coefficient_rows_invert_the_interpolation_matrix(n):
    a = np.zeros((n, n))  # f_i = c_{m(i-1)} / 6 + 2 c_i / 3 + c_{m(i+1)} / 6
    for i in range(n):
        for d, tap in ((-1, 1 / 6), (0, 2 / 3), (1, 1 / 6)):
            a[i, spline.mirror(np.array(i + d), n)] += tap
    np.testing.assert_allclose(spline.coefficient_rows(np.arange(n), n), np.linalg.inv(a), rtol=0, atol=1e-15)


def test_weights_reproduce_the_samples_and_sum_to_one_inside():
    n = 12
    w = spline.axis_weights(n, np.arange(n, dtype=float))
    np.testing.assert_allclose(w, np.eye(n), atol=1e-14)  # interpolating: the samples themselves
    inside = spline.axis_weights(n, np.linspace(0, n - 1, 31))
    np.testing.assert_allclose(inside.sum(axis=1), 1.0, rtol=1e-14)  # constants are reproduced


@pytest.mark.parametrize("order", ["C", "F"])
def test_window_sampler_is_map_coordinates(order):
    rng = np.random.default_rng(4)
    shape = (36, 33, 40)
    u = np.asarray(rng.normal(0, 2, (*shape, 3)).astype(np.float32), order=order)
    pts = np.vstack([rng.uniform(-0.5, np.array(shape) - 0.5, (25, 3)), [[0, 0, 0], [35, 32, 39], [0.2, 32, 17.5], [-0.5, 3, 3], [np.nan, 3, 3]]])
    oracle = np.stack([ndimage.map_coordinates(u[..., k].astype(np.float64), pts.T, order=3) for k in range(3)], axis=1)
    # windows cover these grids: the exact weights, round-off only
    np.testing.assert_allclose(spline.sample_window(u, pts), oracle, rtol=0, atol=1e-13 * np.abs(u).max())


def test_the_window_truncation_on_a_long_axis_is_round_off():
    """Along an axis of 140 voxels the window (2 * TRE_RADIUS + 2) holds a third of the line: the
    weights it leaves out decay as 0.268^24, ~1e-13 of max |u| in all (a TRE radius of 14 left ~1e-8,
    2e-7 relative on real-anatomy TREs of 0.06 mm)."""
    rng = np.random.default_rng(7)
    u = np.asarray(rng.normal(0, 5, (140, 9, 8, 3)), dtype=np.float32, order="F")
    pts = np.column_stack([rng.uniform(30, 110, 12), rng.uniform(0, 8, 12), rng.uniform(0, 7, 12)])
    oracle = np.stack([ndimage.map_coordinates(u[..., k].astype(np.float64), pts.T, order=3) for k in range(3)], axis=1)
    assert u.shape[0] / 2 > 2 * spline.TRE_RADIUS + 2
    np.testing.assert_allclose(spline.sample_window(u, pts), oracle, rtol=0, atol=1e-12 * np.abs(u).max())


@pytest.mark.parametrize("order", ["C", "F"])
def test_overlapping_windows_read_from_one_float64_box_give_the_same_samples(order):
    """Many points: the box of all windows is converted to float64 once; two points: each window
    is converted by itself. Windows clipped at both ends of a long axis and integer coordinates
    (a window one voxel past the points' own box) included: scipy's values either way."""
    rng = np.random.default_rng(11)
    u = np.asarray(rng.normal(0, 3, (130, 10, 9, 3)), dtype=np.float32, order=order)
    ends = [[0, 0, 0], [129, 9, 8], [3.0, 4, 4], [126.5, 2, 7], [64, 5, 4], [np.nan, 1, 1], [-3, 1, 1]]
    pts = np.vstack([rng.uniform(0, [129, 9, 8], (40, 3)), ends])
    oracle = np.stack([ndimage.map_coordinates(u[..., k].astype(np.float64), pts.T, order=3) for k in range(3)], axis=1)
    many = spline.sample_window(u, pts)
    assert len(pts) * spline.window_voxels(u.shape[:3]) > u[..., 0].size  # the box path
    np.testing.assert_allclose(many, oracle, rtol=0, atol=1e-12 * np.abs(u).max())
    for i in range(40, len(pts) - 1):  # alone with a point at the other end: the per-window path
        pair = pts[[i, 1 if i != 41 else 0]]
        assert 2 * spline.window_voxels(u.shape[:3]) < u[..., 0].size
        np.testing.assert_allclose(spline.sample_window(u, pair)[0], many[i], rtol=0, atol=1e-13 * np.abs(u).max())


def _oracle(u: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.map_coordinates(u[..., k].astype(np.float64), pts.T, order=3) for k in range(3)], axis=1)


def _long_field(seed: int, order: str = "F") -> np.ndarray:
    """Rough values along a 150-voxel axis: windows of every half-width cut the line there."""
    rng = np.random.default_rng(seed)
    return np.asarray(rng.normal(0, 4, (150, 12, 10, 3)), dtype=np.float32, order=order)


@pytest.mark.parametrize("radius", [4, 9, 16, 24])
def test_the_truncation_bound_holds_for_every_window_half_width(radius):
    """tre_radii's bound (max |u| times the weight a window leaves out, times the spacing) is at
    least the true change of each TRE: the samples of the truncated window against scipy's."""
    u = _long_field(3)
    rng = np.random.default_rng(5)
    fixed = np.column_stack([rng.uniform(0, 149, 30), rng.uniform(0, 11, 30), rng.uniform(0, 9, 30)])
    spacing = np.array([0.7, 1.1, 2.0])
    weights = [spline.axis_weights(u.shape[a], fixed[:, a]) for a in range(3)]
    sampled = spline.sample_window(u, fixed, np.full(len(fixed), radius), weights)
    off = np.linalg.norm((sampled - _oracle(u, fixed)) * spacing, axis=1)  # the most a TRE can move
    bounds = _bounds(u, fixed, spacing, weights, radius)
    assert np.all(off <= bounds * (1 + 1e-6) + 1e-13)
    assert bounds.max() > (1e-6 if radius < 10 else 0)  # real truncations: the bound is not vacuous
    # tre_radii computes the same bound: with TREs of ~1e12 mm any window is enough, it picks 4
    radii, bound = spline.tre_radii(u, fixed, fixed + 1e12, spacing, weights)
    assert np.all(radii == 4)
    np.testing.assert_allclose(bound, _bounds(u, fixed, spacing, weights, 4), rtol=1e-9, atol=1e-15)


def _bounds(u, fixed, spacing, weights, radius):
    """The bound of a window of half-width ``radius``, point by point (an independent loop)."""
    size = np.maximum(u.max(axis=(0, 1, 2)), -u.min(axis=(0, 1, 2))).astype(np.float64)
    kept, total = np.ones(len(fixed)), np.ones(len(fixed))
    for a in range(3):
        start, stop = spline._window(fixed[:, a], u.shape[a], np.full(len(fixed), radius))
        w = np.abs(weights[a])
        kept *= np.array([w[p, start[p] : stop[p]].sum() for p in range(len(fixed))])
        total *= w.sum(axis=1)
    return np.maximum(total - kept, 0) * np.sqrt(np.sum((size * spacing) ** 2))


@pytest.mark.parametrize("order", ["C", "F"])
def test_tre_takes_small_windows_where_they_are_provably_enough(order):
    """Realistic TREs (millimetres) on a long axis: most points get windows well below the full
    half-width, and every TRE is within TRE_RELATIVE of scipy's (the organisers' computation)."""
    u = _long_field(8, order)
    rng = np.random.default_rng(9)
    fixed = np.column_stack([rng.uniform(20, 130, 40), rng.uniform(0, 11, 40), rng.uniform(0, 9, 40)])
    moving = fixed + rng.normal(0, 3, fixed.shape)
    spacing = (0.8, 0.8, 1.5)
    truth = np.linalg.norm((fixed + _oracle(u, fixed) - moving) * spacing, axis=1)
    weights = [spline.axis_weights(u.shape[a], fixed[:, a]) for a in range(3)]
    radii, _ = spline.tre_radii(u, fixed, moving, np.asarray(spacing), weights)
    assert np.median(radii) < spline.TRE_RADIUS - 4
    np.testing.assert_allclose(metrics.tre(u, fixed, moving, spacing, "kernel"), truth, rtol=2 * spline.TRE_RELATIVE, atol=0)


def test_a_tre_near_zero_is_sampled_again_with_the_full_window():
    """Moving points where the field takes the fixed ones (TRE ~1e-7 mm), beside ordinary ones:
    the nearest-voxel guess is far larger than those TREs, so their first windows cannot prove
    1e-9 of them; they alone are sampled again with the full half-width (as every point was
    before per-point windows), the others keep their small windows."""
    u = _long_field(12)
    rng = np.random.default_rng(13)
    fixed = np.column_stack([rng.uniform(30, 120, 12), rng.uniform(1, 10, 12), rng.uniform(1, 8, 12)])
    moving = fixed + rng.normal(0, 3, fixed.shape)
    near = np.arange(12) % 3 == 0
    moving[near] = fixed[near] + _oracle(u, fixed[near]) + 1e-7
    full = np.linalg.norm((fixed + spline.sample_window(u, fixed) - moving), axis=1)
    got = metrics.tre(u, fixed, moving, (1.0, 1.0, 1.0), "kernel")
    np.testing.assert_array_equal(got[near], full[near])
    np.testing.assert_allclose(got[near], np.sqrt(3) * 1e-7, rtol=1e-5)
    assert np.any(got[~near] != full[~near])  # smaller windows there: the last bits differ
    np.testing.assert_allclose(got[~near], full[~near], rtol=spline.TRE_RELATIVE, atol=0)
