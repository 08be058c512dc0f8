"""evaluation.metrics: the numpy weights of scipy's cubic B-spline sampling, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from evaluation import metrics


def _scipy_weights(n: int, coords: np.ndarray) -> np.ndarray:
    """``P x n``: ``map_coordinates`` (order 3, its defaults) of each unit impulse at ``coords``."""
    eye = np.eye(n)
    return np.stack([ndimage.map_coordinates(eye[:, m], coords[None, :], order=3) for m in range(n)], axis=1)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 40])
def test_axis_weights_are_scipys_inside_at_the_ends_and_outside(n):
    edges = [0.0, 1e-9, n - 1.0, n - 1 - 1e-9, -1e-9, n - 1 + 1e-9, -0.5, n - 0.5, -2.0, n + 1.0, np.nan, np.inf, -np.inf]
    coords = np.concatenate([np.linspace(-1.5, n + 0.5, 53), edges])
    np.testing.assert_allclose(metrics.axis_weights(n, coords), _scipy_weights(n, coords), rtol=0, atol=1e-14)


def test_mirror_reflects_about_the_end_samples():
    assert metrics.mirror(np.arange(-3, 9), 4).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert metrics.mirror(np.array([-2, 0, 5]), 1).tolist() == [0, 0, 0]


@pytest.mark.parametrize("n", [1, 2, 3, 6, 50])
def test_coefficient_rows_invert_the_interpolation_matrix(n):
    a = np.zeros((n, n))  # f_i = c_{m(i-1)} / 6 + 2 c_i / 3 + c_{m(i+1)} / 6
    for i in range(n):
        for d, tap in ((-1, 1 / 6), (0, 2 / 3), (1, 1 / 6)):
            a[i, metrics.mirror(np.array(i + d), n)] += tap
    np.testing.assert_allclose(metrics.coefficient_rows(np.arange(n), n), np.linalg.inv(a), rtol=0, atol=1e-15)


def test_weights_reproduce_the_samples_and_sum_to_one_inside():
    n = 12
    w = metrics.axis_weights(n, np.arange(n, dtype=float))
    np.testing.assert_allclose(w, np.eye(n), atol=1e-14)  # interpolating: the samples themselves
    inside = metrics.axis_weights(n, np.linspace(0, n - 1, 31))
    np.testing.assert_allclose(inside.sum(axis=1), 1.0, rtol=1e-14)  # constants are reproduced


@pytest.mark.parametrize("order", ["C", "F"])
def test_window_sampler_is_map_coordinates(order):
    rng = np.random.default_rng(4)
    shape = (36, 33, 40)
    u = np.asarray(rng.normal(0, 2, (*shape, 3)).astype(np.float32), order=order)
    pts = np.vstack([rng.uniform(-0.5, np.array(shape) - 0.5, (25, 3)), [[0, 0, 0], [35, 32, 39], [0.2, 32, 17.5], [-0.5, 3, 3], [np.nan, 3, 3]]])
    oracle = np.stack([ndimage.map_coordinates(u[..., k].astype(np.float64), pts.T, order=3) for k in range(3)], axis=1)
    # windows cover these grids: the exact weights, round-off only
    np.testing.assert_allclose(metrics.sample_window(u, pts), oracle, rtol=0, atol=1e-13 * np.abs(u).max())


def test_the_window_truncation_on_a_long_axis_is_round_off():
    """Along an axis of 140 voxels the window (2 * TRE_RADIUS + 2) holds a third of the line: the
    weights it leaves out decay as 0.268^24, ~1e-13 of max |u| in all (a TRE radius of 14 left ~1e-8,
    2e-7 relative on real-anatomy TREs of 0.06 mm)."""
    rng = np.random.default_rng(7)
    u = np.asarray(rng.normal(0, 5, (140, 9, 8, 3)), dtype=np.float32, order="F")
    pts = np.column_stack([rng.uniform(30, 110, 12), rng.uniform(0, 8, 12), rng.uniform(0, 7, 12)])
    oracle = np.stack([ndimage.map_coordinates(u[..., k].astype(np.float64), pts.T, order=3) for k in range(3)], axis=1)
    assert u.shape[0] / 2 > 2 * metrics.TRE_RADIUS + 2
    np.testing.assert_allclose(metrics.sample_window(u, pts), oracle, rtol=0, atol=1e-12 * np.abs(u).max())


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
    many = metrics.sample_window(u, pts)
    assert len(pts) * metrics.window_voxels(u.shape[:3]) > u[..., 0].size  # the box path
    np.testing.assert_allclose(many, oracle, rtol=0, atol=1e-12 * np.abs(u).max())
    for i in range(40, len(pts) - 1):  # alone with a point at the other end: the per-window path
        pair = pts[[i, 1 if i != 41 else 0]]
        assert 2 * metrics.window_voxels(u.shape[:3]) < u[..., 0].size
        np.testing.assert_allclose(metrics.sample_window(u, pair)[0], many[i], rtol=0, atol=1e-13 * np.abs(u).max())
