"""Metrics (evaluation.metrics, evaluation.jacobian): analytic cases and cross-checks with tests/official_reference.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from evaluation import jacobian, metrics
from learn2reg import contract
from tests.evaluation import official_reference as ref


def _smooth_field(shape, amp, seed, sigma=2.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(3)], axis=-1)
    return (u * amp / u.std()).astype(np.float32)


def _box(shape, lo, hi, value=1) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = value
    return out


# ----------------------------------------------------------------------------- Jacobian


def test_zero_field_has_unit_jacobian_and_zero_sdlogj():
    stats = jacobian.jacobian_stats(np.zeros((9, 10, 11, 3), np.float32))
    assert stats.sdlogj == 0.0 and stats.sdlogj_true == 0.0
    assert stats.num_foldings == 0.0 and stats.num_foldings_true == 0 and stats.folding_fraction == 0.0
    assert stats.voxels == 5 * 6 * 7


def test_affine_field_has_det_a_everywhere_inside():
    a = np.array([[1.1, 0.2, 0.0, 1.0], [-0.1, 0.9, 0.3, 0.0], [0.05, 0.0, 1.2, -2.0]])
    u = contract.affine_to_field(a, (12, 13, 14))
    det = jacobian.jacobian_det_interior(u)
    assert det.shape == (8, 9, 10)
    np.testing.assert_allclose(det, np.linalg.det(a[:, :3]), rtol=1e-5)  # field stored as float32
    stats = jacobian.jacobian_stats(u)
    assert stats.sdlogj == pytest.approx(0.0, abs=1e-6) and stats.sdlogj_true == pytest.approx(0.0, abs=1e-6)


def test_folded_field_true_fraction_while_official_count_stays_zero():
    # mirror along axis 0 in the upper half: det = -1 there (shape 16: interior planes 2..13)
    x = np.arange(16, dtype=np.float32)[:, None, None]
    u = np.zeros((16, 8, 8, 3), np.float32)
    u[..., 0] = np.where(x >= 8, 2 * (8 - x), 0.0)  # phi_0(x) = x + u = 16 - x for x >= 8
    det = jacobian.jacobian_det_interior(u)
    stats = jacobian.jacobian_stats(u)
    assert stats.num_foldings == 0.0  # the official quirk: counted after +3 and clipping
    assert stats.num_foldings_true == int((det <= 0).sum()) > 0
    # planes 9..13 have det -1, plane 8 sees the kink ((-2 + 0)/2 -> det 0): 6 of 12 planes fold
    assert stats.folding_fraction == pytest.approx(6 / 12)
    _, ref_folds, ref_fraction = ref.true_jacobian(ref.sdlogj(u.astype(np.float64), None)[2], None)
    assert (stats.num_foldings_true, stats.folding_fraction) == (ref_folds, ref_fraction)
    official = jacobian.jacobian_stats(u, true=False)  # rule sets without our extras: official numbers only
    assert (official.sdlogj, official.num_foldings, official.voxels) == (stats.sdlogj, 0.0, stats.voxels)
    assert (official.sdlogj_true, official.num_foldings_true, official.folding_fraction) == (None, None, None)


@pytest.mark.parametrize("masked", [None, "box", "blobs"])
@pytest.mark.parametrize("order", ["C", "F"])  # F: NIfTI data, walked along the last axis
def test_sdlogj_bit_identical_to_the_official_formula(masked, order):
    u = np.asarray(_smooth_field((20, 22, 18), 1.5, seed=4), order=order)
    mask = None
    if masked == "box":
        mask = np.zeros(u.shape[:3], order=order)
        mask[3:15, 5:20, 2:12] = 1
        mask[4:6, 6:8, 3:5] = 2  # official: only mask == 1 counts
    elif masked == "blobs":  # scattered pieces: planes without mask voxels, holes, ragged rectangles
        blobs = ndimage.gaussian_filter(np.random.default_rng(5).standard_normal(u.shape[:3]), 1.5) > 0.12
        mask = np.asarray(blobs, dtype=np.float32, order=order)
        mask[:, :, 9] = 0
    stats = jacobian.jacobian_stats(u, mask)
    official, official_folds, det = ref.sdlogj(u.astype(np.float64), mask)
    np.testing.assert_array_equal(jacobian.jacobian_det_interior(u), det)
    assert stats.sdlogj == pytest.approx(official, rel=1e-12)
    assert stats.num_foldings == official_folds == 0.0
    true_std, folds, fraction = ref.true_jacobian(det, mask)
    assert stats.sdlogj_true == pytest.approx(true_std, rel=1e-9)
    assert (stats.num_foldings_true, stats.folding_fraction) == (folds, fraction)


def test_strong_random_field_folds():
    u = _smooth_field((20, 20, 20), 4.0, seed=1, sigma=1.5)
    stats = jacobian.jacobian_stats(u)
    det = ref.sdlogj(u.astype(np.float64), None)[2]
    assert stats.num_foldings_true == int((det <= 0).sum()) > 0
    assert stats.num_foldings == 0.0


# ----------------------------------------------------------------------------- labels


def test_dice_of_shifted_cubes_and_identity_warp():
    shape = (12, 12, 12)
    fixed = _box(shape, (2, 2, 2), (6, 6, 6))
    moving = _box(shape, (3, 2, 2), (7, 6, 6))
    warped = contract.warp_labels(moving, np.zeros((*shape, 3), np.float32))
    counts = metrics.label_counts(fixed, moving, warped, [1])
    assert metrics.dice(counts) == [0.75]  # overlap 3x4x4 = 48, 2*48 / (64 + 64)
    # the field that undoes the shift (pull: fixed x reads moving at x + 1)
    u = np.zeros((*shape, 3), np.float32)
    u[..., 0] = 1.0
    counts = metrics.label_counts(fixed, moving, contract.warp_labels(moving, u), [1])
    assert metrics.dice(counts) == [1.0]


def test_label_counts_match_brute_force():
    rng = np.random.default_rng(0)
    fixed, moving, warped = (rng.integers(0, 6, (9, 10, 11)).astype(np.uint8) for _ in range(3))
    labels = [5, 1, 3, 9]  # 9 is absent everywhere
    counts = metrics.label_counts(fixed, moving, warped, labels)
    for i, lab in enumerate(labels):
        assert counts.fixed[i] == (fixed == lab).sum() and counts.moving[i] == (moving == lab).sum()
        assert counts.warped[i] == (warped == lab).sum()
        assert counts.overlap[i] == ((fixed == lab) & (warped == lab)).sum()
    ours = metrics.dice(counts)
    mean, theirs = ref.compute_dice(fixed, moving, warped, labels)
    np.testing.assert_array_equal(ours, theirs)
    assert metrics.nanmean(ours) == mean


@pytest.mark.parametrize("labels", [(1, 2, 3, 4), (0, 2), (2, 300)])
def test_counts_and_object_boxes_inside_the_labelled_box_equal_whole_grid_ones(labels):
    """Labels fill a corner of the grid: counting and ``find_objects`` run on the labelled box only,
    with the rest added as background; same numbers as over the whole grid (background as a label
    and the compacting path for wide label values included)."""
    rng = np.random.default_rng(len(labels))
    maps = []
    for shift in (0, 1, 2):
        m = np.zeros((20, 22, 18), np.uint16 if max(labels) > 255 else np.uint8, order="F")
        m[3 + shift : 11, 12 : 19 - shift, 2:9] = rng.choice([0, *labels], size=(8 - shift, 7 - shift, 7))
        maps.append(m)
    fixed, moving, warped = maps
    counts = metrics.label_counts(fixed, moving, warped, labels)
    for i, lab in enumerate(labels):
        assert counts.fixed[i] == (fixed == lab).sum() and counts.moving[i] == (moving == lab).sum()
        assert counts.warped[i] == (warped == lab).sum() and counts.overlap[i] == ((fixed == lab) & (warped == lab)).sum()
    for m in maps:
        values = metrics.compact_labels(m, labels) if m.dtype != np.uint8 else m
        assert metrics.object_boxes(values) == ndimage.find_objects(values)
    assert metrics.object_boxes(np.zeros((4, 4, 4), np.uint8)) == [] == ndimage.find_objects(np.zeros((4, 4, 4), np.uint8))
    assert metrics.nonzero_box(np.zeros((4, 4, 4), np.uint8)) is None


def test_object_boxes_equal_find_objects_on_random_maps():
    """Boxes from the runs along the contiguous axis: random sparse maps, both memory orders,
    thin grids, absent values, one-voxel labels."""
    rng = np.random.default_rng(8)
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers(1, 11, 3))
        dtype = rng.choice([np.uint8, np.uint16])
        values = rng.integers(0, int(rng.integers(2, 9)), shape) * (rng.random(shape) < rng.random())
        labels = np.asarray(values.astype(dtype), order=rng.choice(["C", "F"]))
        assert metrics.object_boxes(labels) == ndimage.find_objects(labels)


def test_missing_label_is_nan_and_ignored_vanished_label_is_zero_and_inf():
    shape = (16, 16, 16)
    fixed = _box(shape, (2, 2, 2), (6, 6, 6), 1) + _box(shape, (9, 9, 9), (13, 13, 13), 2)
    moving = _box(shape, (2, 2, 2), (6, 6, 6), 1) + _box(shape, (9, 9, 9), (13, 13, 13), 3)
    moving[10:12, 2:4, 2:4] = 4  # label 4: only in moving
    u = np.zeros((*shape, 3), np.float32)
    u[:8, :8, :8, 0] = -20.0  # label 1 is pulled from outside the volume: it vanishes
    warped = contract.warp_labels(moving, u)
    counts = metrics.label_counts(fixed, moving, warped, [1, 2, 3, 4])
    dsc = metrics.dice(counts)
    assert dsc[0] == 0.0 and np.isnan(dsc[1]) and np.isnan(dsc[2]) and np.isnan(dsc[3])
    hd = metrics.hd95(fixed, warped, counts)[0]
    assert hd[0] == np.inf and all(np.isnan(hd[1:]))
    assert metrics.nanmean(dsc) == 0.0 and metrics.nanmean(hd) == np.inf
    ref_mean, ref_hd = ref.compute_hd95(fixed.astype(float), moving.astype(float), warped.astype(float), [1, 2, 3, 4])
    np.testing.assert_array_equal(hd, ref_hd)


def test_nanmean_all_nan_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.nanmean([np.nan, np.nan]))
    assert metrics.nanmean([1.0, np.nan, 3.0]) == 2.0


def test_hd95_of_labels_equals_reference_with_and_without_spacing():
    rng = np.random.default_rng(5)
    g = ndimage.gaussian_filter(rng.standard_normal((22, 24, 20)), 2)
    fixed = np.digitize(g, [-0.1, 0.0, 0.08]).astype(np.uint8)
    u = _smooth_field(fixed.shape, 1.5, seed=2)
    moving = np.roll(fixed, 1, axis=1)
    warped = contract.warp_labels(moving, u)
    counts = metrics.label_counts(fixed, moving, warped, [1, 2, 3])
    vox, mm, iso = metrics.hd95(fixed, warped, counts, [(1.0, 1.0, 1.0), (1.2, 0.8, 2.0), (2.0, 2.0, 2.0)])
    assert vox == ref.compute_hd95(fixed, moving, warped, [1, 2, 3])[1]
    np.testing.assert_allclose(mm, ref.compute_hd95(fixed, moving, warped, [1, 2, 3], (1.2, 0.8, 2.0))[1], rtol=1e-12)
    np.testing.assert_allclose(iso, ref.compute_hd95(fixed, moving, warped, [1, 2, 3], (2.0, 2.0, 2.0))[1], rtol=1e-12)
    zero = metrics.label_counts(fixed, moving, warped, [0])  # background as a label, as the official code allows
    assert metrics.hd95(fixed, warped, zero)[0] == ref.compute_hd95(fixed, moving, warped, [0])[1]
    # wider label maps take the compacting path: same numbers
    wide = metrics.label_counts(fixed.astype(np.uint16), moving.astype(np.uint16), warped.astype(np.uint16), [1, 2, 3])
    np.testing.assert_array_equal(wide.overlap, counts.overlap)
    assert metrics.hd95(fixed.astype(np.uint16), warped.astype(np.uint16), wide)[0] == vox


# ----------------------------------------------------------------------------- TRE


def test_zero_field_tre_is_initial_distance_times_spacing():
    rng = np.random.default_rng(2)
    fixed_pts, moving_pts = rng.uniform(2, 10, (7, 3)), rng.uniform(2, 10, (7, 3))
    spacing = (1.5, 0.7, 2.0)
    tre = metrics.tre(np.zeros((12, 12, 12, 3), np.float32), fixed_pts, moving_pts, spacing)
    np.testing.assert_allclose(tre, np.linalg.norm((fixed_pts - moving_pts) * spacing, axis=1), rtol=1e-12)


def test_constant_shift_is_reproduced_inside():
    u = np.zeros((20, 20, 20, 3), np.float32)
    u[...] = (1.25, -0.5, 2.0)
    pts = np.array([[8.3, 9.1, 10.7], [10.0, 10.0, 10.0]])
    for method in ("full", "crop", "kernel"):
        np.testing.assert_allclose(metrics.sample_cubic(u, pts, method), [[1.25, -0.5, 2.0]] * 2, atol=1e-9)
        assert metrics.tre(u, pts, pts + (1.25, -0.5, 2.0), (1, 1, 1), method) == pytest.approx([0, 0], abs=1e-9)


@pytest.mark.parametrize("method", ["crop", "kernel", "auto"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_fast_tre_samplers_agree_with_the_full_prefilter(method, order):
    shape = (48, 40, 44)
    u = np.asarray(_smooth_field(shape, 3.0, seed=9, sigma=3), order=order)
    rng = np.random.default_rng(1)
    pts = np.vstack([rng.uniform(0, np.array(shape) - 1, (40, 3)), [[0, 0, 0], [47, 39, 43], [0.4, 39, 20.5]]])
    full = metrics.sample_cubic(u, pts, "full")
    oracle = np.stack([ndimage.map_coordinates(u[..., k].astype(np.float64), pts.T) for k in range(3)], axis=1)
    np.testing.assert_allclose(full, oracle, rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.sample_cubic(u, pts, method), full, rtol=0, atol=1e-12 * np.abs(u).max())
    moving = pts + rng.normal(0, 2, pts.shape)
    tre = metrics.tre(u, pts, moving, (1.1, 0.9, 1.7), method)
    np.testing.assert_allclose(tre, ref.compute_tre(pts, moving, u.astype(np.float64), (1.1, 0.9, 1.7)), rtol=1e-7)


def test_tre_rejects_mismatched_point_counts():
    with pytest.raises(ValueError, match="point counts differ"):
        metrics.tre(np.zeros((8, 8, 8, 3), np.float32), np.zeros((3, 3)), np.zeros((4, 3)), (1, 1, 1))


# ----------------------------------------------------------------------------- aggregates


def test_aggregate_quantiles_by_metric_and_2020_variant():
    v = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert metrics.aggregate(v, "dice") == {"mean": 3.0, "std": pytest.approx(np.sqrt(2.0)), "30": pytest.approx(2.2)}
    assert metrics.aggregate(v, "hd95")["30"] == pytest.approx(2.2)
    assert metrics.aggregate(v, "sdlogj")["30"] == pytest.approx(3.8)
    assert metrics.aggregate(v, "tre")["30"] == pytest.approx(3.8)
    old = metrics.aggregate(v, "tre", "2020")
    assert old["std"] == pytest.approx(np.std(v, ddof=1)) and old["30"] == pytest.approx(2.2)
    with pytest.raises(ValueError):
        metrics.aggregate(v, "dice", "nope")


def test_compact_labels_maps_positions_and_drops_the_rest():
    arr = np.array([0, 1, 2, 7, 300, 5], dtype=np.uint16)
    np.testing.assert_array_equal(metrics.compact_labels(arr, [5, 2, 7]), [0, 0, 2, 3, 0, 1])


@pytest.mark.parametrize("seed", range(3))
def test_cropped_label_warp_equals_the_contract_warp(seed):
    rng = np.random.default_rng(seed)
    moving = np.zeros((18, 20, 16), np.uint8)
    moving[rng.integers(0, 18, 40), rng.integers(0, 20, 40), rng.integers(0, 16, 40)] = rng.integers(1, 5, 40)
    moving[0, 5:9, 3] = 7  # on the border
    u = _smooth_field((22, 19, 21), 6.0, seed=seed, sigma=2.0)  # fixed grid differs from the moving one
    u[..., 0] += 4.0
    expected = contract.warp_labels(moving, u)
    np.testing.assert_array_equal(metrics.warp_labels(moving, u), expected)
    # NIfTI layout (Fortran order) of the field and of the labels: same result, field's order
    fortran = metrics.warp_labels(np.asfortranarray(moving), np.asfortranarray(u))
    np.testing.assert_array_equal(fortran, expected)
    assert fortran.flags.f_contiguous
    np.testing.assert_array_equal(metrics.warp_labels(moving, u[::-1, :, ::2]), contract.warp_labels(moving, u[::-1, :, ::2]))
    empty = np.zeros_like(moving)
    np.testing.assert_array_equal(metrics.warp_labels(empty, u), np.zeros(u.shape[:3], np.uint8))
    half = u.copy()
    half[...] = 0.5  # exact ties of the nearest-neighbour rounding
    np.testing.assert_array_equal(metrics.warp_labels(moving, half), contract.warp_labels(moving, half))
    # ties, and coordinates just outside the grid (-1e-12 reads 0, -0.0 reads voxel 0), per axis
    ties = rng.choice(np.array([-1.5, -0.5, -1e-12, 0.0, 0.5, 1.5, 2.5], np.float32), size=(18, 20, 16, 3))
    np.testing.assert_array_equal(metrics.warp_labels(moving + 1, ties), contract.warp_labels(moving + 1, ties))
