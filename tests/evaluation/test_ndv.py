"""LUMIR's NDV (evaluation.ndv) and landmark-centroid TRE (metrics.centroid_tre): values derived by
hand, and agreement with the plain full-volume formulas (tests/evaluation/official_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from evaluation import jacobian, metrics
from tests.evaluation import official_reference as ref

SHAPE = (12, 14, 10)


def _field(seed: int, amp: float, sigma: float = 1.5, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.standard_normal((*shape, 3)), (sigma, sigma, sigma, 0)) * amp).astype(np.float32)


def test_identity_and_translation_have_no_folding():
    image = np.ones(SHAPE)
    assert jacobian.ndv(np.zeros((*SHAPE, 3), np.float32), image) == 0.0
    assert jacobian.ndv(np.full((*SHAPE, 3), 7.25, np.float32), image) == 0.0


def test_a_reflection_folds_every_tetrahedron():
    """phi(x) = (-x0, x1, x2): the eight one-sided determinants are -1 and both central-tetrahedron
    ones -2, so every voxel contributes 8 * 0.5/6 + 2 * 0.5 * 2/6 = 1 voxel: NDV = 100 %."""
    u = np.zeros((*SHAPE, 3))
    u[..., 0] = -2.0 * np.arange(SHAPE[0])[:, None, None]
    dets = ref.ndv_dets(u)
    assert all(np.all(dets[k] == (-2.0 if k.startswith("Jstar") else -1.0)) for k in ref.NDV_ORDER)
    assert jacobian.ndv(u, np.ones(SHAPE)) == pytest.approx(100.0, rel=1e-14)  # sums of 1/12 and 1/6


def test_only_the_mask_counts_and_an_empty_mask_is_nan():
    u = np.zeros((*SHAPE, 3))
    u[..., 0] = -2.0 * np.arange(SHAPE[0])[:, None, None]  # folds everywhere
    image = np.zeros(SHAPE, np.uint8)
    assert np.isnan(jacobian.ndv(u, image))  # 0 / 0, as the organisers' division
    image[4:6, 4:6, 4:6] = 200
    assert jacobian.ndv(u, image) == pytest.approx(100.0, rel=1e-14)
    image[0] = 7  # the cropped face never counts
    assert jacobian.ndv(u, image) == pytest.approx(100.0, rel=1e-14)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("seed", "amp"), [(0, 0.5), (1, 6.0), (2, 30.0)])  # smooth, folding in places, folding a lot
def test_equals_the_full_volume_formulas(order, dtype, seed, amp):
    u = np.asarray(_field(seed, amp), dtype=dtype, order=order)
    image = np.asarray((np.random.default_rng(seed + 9).random(SHAPE) > 0.2) * 100, order=order)
    ours, theirs = jacobian.ndv(u, image), ref.ndv(u, image)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    if amp > 1:
        assert ours > 0


def test_every_determinant_is_bit_identical_and_the_pruning_exact(monkeypatch):
    """Sums per determinant equal the reference's; with the provable skip turned off (every voxel
    computed densely) the sums are the same, so the skipped voxels contribute nothing."""
    u = _field(3, 6.0, shape=(16, 18, 14))
    image = np.ones(u.shape[:3])
    dets = ref.ndv_dets(u)
    expected = {k: np.sum(-0.5 * np.minimum(d, 0) / 6) for k, d in dets.items()}
    sums, voxels = jacobian.ndv_sums(u, image)
    assert voxels == image[1:-1, 1:-1, 1:-1].size
    for k in ref.NDV_ORDER:
        assert sums[k] == pytest.approx(expected[k], rel=1e-13, abs=1e-15), k
    monkeypatch.setattr(jacobian, "SAFE", -1.0)
    dense, _ = jacobian.ndv_sums(u, image)
    assert dense == pytest.approx(sums, rel=1e-13, abs=1e-15)


def test_slabs_cover_the_volume_whatever_their_size(monkeypatch):
    u, image = _field(4, 8.0, shape=(9, 11, 13)), np.ones((9, 11, 13))
    whole = jacobian.ndv(u, image)
    for voxels in (1, 50, 1 << 20):
        monkeypatch.setattr(jacobian, "SLAB_VOXELS", voxels)
        assert jacobian.ndv(u, image) == pytest.approx(whole, rel=1e-13)


def test_too_small_a_grid_has_no_interior():
    assert np.isnan(jacobian.ndv(np.zeros((2, 5, 5, 3)), np.ones((2, 5, 5))))


# ----------------------------------------------------------------------------- centroid TRE


def _landmarks(shape=(16, 18, 14), labels=(1, 2, 5)) -> np.ndarray:
    vol = np.zeros(shape, np.uint8)
    for i, label in enumerate(labels):
        vol[3 + 3 * i : 5 + 3 * i, 4:6, 3 + 2 * i : 6 + 2 * i] = label
    return vol


def test_a_shift_by_whole_voxels_is_its_length():
    fixed = _landmarks()
    moving = np.roll(fixed, (1, 2, -2), axis=(0, 1, 2))
    zero = np.zeros((*fixed.shape, 3))
    assert metrics.centroid_tre(fixed, metrics.warp_labels(moving, zero)) == pytest.approx(3.0)  # sqrt(1 + 4 + 4)
    u = np.zeros((*fixed.shape, 3))
    u[..., 0], u[..., 1], u[..., 2] = 1, 2, -2  # the field that undoes it
    assert metrics.centroid_tre(fixed, metrics.warp_labels(moving, u)) == 0.0


def test_a_vanished_landmark_makes_it_nan_and_moving_only_labels_are_ignored():
    fixed = _landmarks()
    moving = fixed.copy()
    moving[0, 0, 0] = 9  # only in the moving volume: ignored
    assert metrics.centroid_tre(fixed, moving) == 0.0
    moving[moving == 5] = 0
    assert np.isnan(metrics.centroid_tre(fixed, moving))


def test_the_smallest_label_is_taken_for_background():
    fixed = _landmarks()
    fixed[fixed == 0] = 7  # no zero: label 1 is now the first unique value, skipped as "background"
    moving = fixed.copy()
    moving[moving == 1] = 0  # label 1 vanishes: not counted, else the result would be NaN
    assert metrics.centroid_tre(fixed, moving) == 0.0


@pytest.mark.parametrize("order", ["C", "F"])
def test_centroid_tre_equals_the_reference(order):
    fixed = np.asarray(_landmarks(), order=order)
    moving = np.asarray(np.roll(_landmarks(), (1, -1, 0), axis=(0, 1, 2)), order=order)
    u = np.asarray(_field(5, 2.0, shape=fixed.shape), order=order)
    ours = metrics.centroid_tre(fixed, metrics.warp_labels(moving, u))
    assert ours == ref.centroid_tre(fixed, moving, u)


@pytest.mark.parametrize("amp", [0.3, 0.45, 0.6, 6.0])  # edges around the skip threshold, and folding
def test_the_skip_test_in_the_fields_own_float32_never_drops_a_fold(monkeypatch, amp):
    """The skip test runs on u in its stored type (float32 here): the same sums as with every voxel
    computed, bit for bit, for fields whose largest edges sit around the threshold."""
    u = _field(5, amp, shape=(15, 13, 17)).astype(np.float32)
    image = np.ones(u.shape[:3])
    pruned, _ = jacobian.ndv_sums(u, image)
    monkeypatch.setattr(jacobian, "SAFE", -1.0)
    dense, _ = jacobian.ndv_sums(u, image)
    assert pruned == dense
