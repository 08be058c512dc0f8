"""LapIRN losses: analytic values (self-similarity, linear fields, folds) and independent cross-checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from learn2reg import contract as C
from pipeline.config import LossConfig
from pipeline.model import losses as L
from pipeline.model.contract import field_from_numpy


def textured(shape=(24, 20, 22), seed=0) -> torch.Tensor:
    """Smoothed noise in [0, 1], ``1 x 1 x ...``."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 0.7)
    img = (img - img.min()) / (img.max() - img.min())
    return torch.from_numpy(img.astype(np.float32))[None, None]


def linear_field(a: np.ndarray, shape) -> torch.Tensor:
    """Voxel field ``u_k(x) = sum_j a_kj x_j`` as ``1 x 3 x ...``."""
    grid = C.identity_grid(shape, np.float64)  # 3 x X x Y x Z
    u = np.einsum("kj,j...->k...", a, grid)
    return torch.from_numpy(u.astype(np.float32))[None]


# ------------------------------------------------------------------------------- NCC


@pytest.mark.parametrize("window", [3, 5, 9])
def test_ncc_of_image_with_itself_is_minus_one(window):
    img = textured()
    loss = L.local_ncc(img, img, window)
    assert -1.0 <= loss.item() < -0.999
    assert loss.item() > -1.0001


@pytest.mark.parametrize(("a", "b"), [(2.0, 0.3), (0.5, -0.1), (-1.0, 1.0)])
def test_ncc_is_invariant_to_affine_intensity_changes(a, b):
    img = textured(seed=1)
    loss = L.local_ncc(img, a * img + b, 5)
    assert -1.0001 < loss.item() < -0.999


def test_ncc_of_independent_noise_is_near_zero_and_matches_the_chance_level():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 1, 32, 32, 32, generator=gen)
    b = torch.randn(1, 1, 32, 32, 32, generator=gen)
    assert abs(L.local_ncc(a, b, 9).item()) < 0.01
    # full 3^3 windows only: E[r^2] = 1 / (n - 1) for n = 27 independent Gaussian pairs
    interior = torch.zeros_like(a)
    interior[..., 1:-1, 1:-1, 1:-1] = 1
    chance = -L.local_ncc(a, b, 3, mask=interior).item()
    assert chance == pytest.approx(1 / 26, rel=0.1)


def _naive_cc(a: np.ndarray, b: np.ndarray, x: tuple[int, int, int], r: int, eps: float) -> float:
    """cc at voxel x over the in-image part of the (2r+1)^3 box, straight from the definition."""
    sl = tuple(slice(max(i - r, 0), i + r + 1) for i in x)
    wa, wb = a[sl].astype(np.float64).ravel(), b[sl].astype(np.float64).ravel()
    da, db = wa - wa.mean(), wb - wb.mean()
    return float((da @ db) ** 2 / ((da @ da) * (db @ db) + eps))


def test_ncc_map_matches_the_definition_inside_and_at_the_border():
    a, b = textured(seed=2), textured(seed=3)
    cc = L.ncc_map(a, b, 5, eps=1e-5)[0, 0].numpy()
    an, bn = a[0, 0].numpy(), b[0, 0].numpy()
    for x in [(10, 10, 10), (0, 0, 0), (1, 19, 5), (23, 3, 21), (12, 0, 17)]:
        assert cc[x] == pytest.approx(_naive_cc(an, bn, x, 2, 1e-5), rel=1e-4, abs=1e-6)


def test_masked_ncc_is_the_mean_over_the_mask_voxels():
    a, b = textured(seed=4), textured(seed=5)
    cc = L.ncc_map(a, b, 3)
    mask = torch.zeros_like(a)
    mask[..., 3:9, 2:15, 4:7] = 1
    assert L.local_ncc(a, b, 3, mask=mask).item() == pytest.approx(-cc[mask > 0].mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="mask grid"):
        L.local_ncc(a, b, 3, mask=mask[..., :-1])


def test_ncc_rejects_bad_input():
    with pytest.raises(ValueError, match="same|one shape"):
        L.local_ncc(textured(), textured()[..., :-1])
    with pytest.raises(ValueError, match="odd"):
        L.box_sum(textured(), 4)


@pytest.mark.parametrize("shape, window", [((9, 12, 7), 1), ((9, 12, 7), 3), ((9, 12, 7), 7), ((3, 2, 4), 5)])
def test_box_sum_is_the_zero_padded_box_filter_and_self_adjoint(shape, window):
    x, y = textured(shape, seed=11).double(), textured(shape, seed=12).double()  # (3, 2, 4): smaller than the box
    x = torch.cat([x, 2 * x - 0.5], dim=1)  # two channels, negative values
    ones = np.ones((window,) * 3)
    for c in range(2):
        expected = ndimage.correlate(x[0, c].numpy(), ones, mode="constant", cval=0.0)
        assert np.allclose(L.box_sum(x, window)[0, c].numpy(), expected, atol=1e-9)
    # the box filter is symmetric, so its backward is the filter itself: <B x, y> = <x, B y>
    xg = x[:, :1].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((L.box_sum(xg, window) * y).sum(), xg)
    assert torch.allclose(grad, L.box_sum(y, window), atol=1e-9)


def test_similarity_pyramid_is_the_weighted_sum_of_ncc_over_scales():
    a, b = textured(seed=6), textured(seed=7)
    assert L.similarity_pyramid(a, b, 1).item() == pytest.approx(L.local_ncc(a, b, 3).item(), rel=1e-6)
    a2, b2 = L.avg_downsample(a), L.avg_downsample(b)
    a4, b4 = L.avg_downsample(a2), L.avg_downsample(b2)
    by_hand = L.local_ncc(a, b, 7) + L.local_ncc(a2, b2, 5) / 2 + L.local_ncc(a4, b4, 3) / 4
    assert L.similarity_pyramid(a, b, 3).item() == pytest.approx(by_hand.item(), rel=1e-6)
    # texture at every scale (4^3 blocks survive two poolings, noise fills the blocks) keeps eps negligible
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.random((6, 5, 6)), np.ones((4, 4, 4)))
    img = torch.from_numpy((0.7 * blocks + 0.3 * rng.random(blocks.shape)).astype(np.float32))[None, None]
    assert L.similarity_pyramid(img, img, 3).item() == pytest.approx(-1.75, abs=1e-3)


def test_avg_downsample_halves_with_ceil_and_averages_in_image_voxels_only():
    x = torch.ones(1, 2, 7, 8, 5)
    y = L.avg_downsample(x)
    assert y.shape == (1, 2, 4, 4, 3)
    assert torch.allclose(y, torch.ones_like(y))  # padding excluded from the mean


# ------------------------------------------------------------------------------ Dice


def box_labels(shape, boxes) -> torch.Tensor:
    lab = torch.zeros(1, 1, *shape, dtype=torch.long)
    for value, sl in boxes:
        lab[(0, 0, *sl)] = value
    return lab


def test_dice_of_identical_labels_is_one():
    lab = box_labels((16, 14, 12), [(1, (slice(2, 8), slice(3, 9), slice(2, 6))), (2, (slice(9, 14), slice(1, 5), slice(5, 11)))])
    oh = L.one_hot(lab, 3)
    assert L.soft_dice(oh, oh).item() == pytest.approx(0.0, abs=1e-6)
    assert L.dice_loss(oh, oh, torch.zeros(1, 3, 16, 14, 12)).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.int32, torch.long])
def test_one_hot_takes_any_integer_label_dtype(dtype):
    """Preprocessing stores labels above 255 as uint16 (torch has no min/max for it)."""
    lab = box_labels((4, 4, 4), [(255, (slice(0, 2), slice(0, 4), slice(0, 4)))])
    if dtype == torch.uint16:
        lab[0, 0, 3] = 300
    oh = L.one_hot(lab.to(dtype), 301)
    assert oh.shape == (1, 301, 4, 4, 4) and oh.dtype == torch.float32
    assert float(oh[:, 255].sum()) == 32.0 and float(oh.sum()) == 64.0
    assert float(oh[:, 300].sum()) == (16.0 if dtype == torch.uint16 else 0.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 254\]"):
        L.one_hot(lab.to(dtype), 255)


def test_dice_of_a_shifted_box_matches_the_overlap_formula():
    shape = (20, 16, 12)
    fixed = L.one_hot(box_labels(shape, [(1, (slice(4, 12), slice(4, 10), slice(3, 9)))]), 2)
    moving = L.one_hot(box_labels(shape, [(1, (slice(7, 15), slice(4, 10), slice(3, 9)))]), 2)
    # zero field: overlap 5 of 8 rows -> Dice 5/8
    assert L.dice_loss(moving, fixed, torch.zeros(1, 3, *shape)).item() == pytest.approx(1 - 5 / 8, abs=1e-5)
    # pulling by +3 voxels along axis 0 aligns the boxes exactly
    shift = torch.zeros(1, 3, *shape)
    shift[:, 0] = 3.0
    assert L.dice_loss(moving, fixed, shift).item() == pytest.approx(0.0, abs=1e-5)


def test_dice_counts_labels_present_in_both_and_penalises_vanished_ones():
    shape = (12, 12, 12)
    fixed = L.one_hot(box_labels(shape, [(1, (slice(2, 6),) * 3), (2, (slice(7, 11),) * 3)]), 3)
    moving = L.one_hot(box_labels(shape, [(1, (slice(2, 6),) * 3)]), 3)  # label 2 absent in moving
    assert L.dice_loss(moving, fixed, torch.zeros(1, 3, *shape)).item() == pytest.approx(0.0, abs=1e-5)
    gone = torch.full((1, 3, *shape), 40.0)  # everything sampled from outside the image
    assert L.dice_loss(moving, fixed, gone).item() == pytest.approx(1.0, abs=1e-6)
    empty = torch.zeros_like(fixed)
    assert L.soft_dice(empty, empty).item() == 0.0


def test_one_hot_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        L.one_hot(torch.full((1, 1, 2, 2, 2), 3), 3)


# ------------------------------------------------------------------------ regularisers


def test_smoothness_of_a_constant_field_is_zero():
    u = torch.ones(1, 3, 8, 9, 10) * torch.tensor([1.5, -2.0, 0.3]).view(1, 3, 1, 1, 1)
    assert L.smoothness(u).item() == 0.0


def test_smoothness_of_a_linear_field_is_known_in_closed_form():
    a = np.array([[0.1, -0.2, 0.05], [0.3, 0.0, -0.1], [0.02, 0.4, 0.2]])
    u = linear_field(a, (9, 7, 8))
    # forward differences along j are a_kj exactly; mean over k then over j -> ||A||_F^2 / 9
    expected = float((a**2).sum() / 9)
    assert L.smoothness(u).item() == pytest.approx(expected, rel=1e-5)
    assert L.smoothness(u, unit=2.0).item() == pytest.approx(4 * expected, rel=1e-5)


def test_jacobian_matches_the_numpy_contract():
    rng = np.random.default_rng(0)
    u = np.stack([ndimage.gaussian_filter(rng.standard_normal((14, 12, 10)), 2.0) * 6 for _ in range(3)], axis=-1)
    u = u.astype(np.float32)
    det_torch = L.jacobian_determinant_torch(field_from_numpy(u))[0].numpy()
    np.testing.assert_allclose(det_torch, C.jacobian_determinant(u), rtol=1e-4, atol=1e-5)
    assert det_torch.min() < 1.0 < det_torch.max()  # a non-trivial field


def test_anti_folding_is_zero_without_folds_and_exact_for_a_mirror():
    assert L.anti_folding(torch.zeros(1, 3, 6, 7, 8)).item() == 0.0
    mirror = linear_field(np.diag([-2.0, 0.0, 0.0]), (6, 7, 8))  # x0 + u0 = -x0: det J = -1 everywhere
    assert L.anti_folding(mirror).item() == pytest.approx(1.0, abs=1e-6)
    shear = linear_field(np.array([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0]]), (6, 7, 8))  # det 1 - 0 > 0
    assert L.anti_folding(shear).item() == 0.0


# ----------------------------------------------------------------- gradients, wrapper


def test_gradients_flow_through_every_loss():
    fixed = textured(seed=8)
    warped = textured(seed=9).requires_grad_(True)
    field = (0.5 * torch.randn(1, 3, *fixed.shape[2:], generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    lab = L.one_hot(box_labels(fixed.shape[2:], [(1, (slice(4, 14), slice(3, 12), slice(5, 15)))]), 2)
    moved = L.one_hot(box_labels(fixed.shape[2:], [(1, (slice(6, 16), slice(3, 12), slice(5, 15)))]), 2)
    for loss, wrt in [
        (L.similarity_pyramid(warped, fixed, 3), warped),
        (L.dice_loss(moved, lab, field), field),
        (L.smoothness(field), field),
        (L.anti_folding(field * 4), field),
    ]:
        (grad,) = torch.autograd.grad(loss, wrt)
        assert torch.isfinite(grad).all()
        assert grad.abs().max() > 0


def test_level_loss_weights_the_parts_as_configured():
    img = textured(seed=10)
    a = np.array([[0.1, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, -0.1]])
    field = linear_field(a, img.shape[2:])
    smooth_value = 4 * float((a**2).sum() / 9)  # unit 2.0
    cfg = LossConfig(smooth=1.0)
    for level, divisor in [(3, 1), (2, 2), (1, 4)]:
        parts = L.level_loss(cfg, level, 3, img, img, field)
        assert parts["smooth"].item() == pytest.approx(smooth_value, rel=1e-5)
        sim = L.similarity_pyramid(img, img, level).item()
        assert parts["total"].item() == pytest.approx(sim + smooth_value / divisor, rel=1e-5)
        assert parts["dice"].item() == 0.0 and parts["antifold"].item() == 0.0
    with pytest.raises(ValueError, match="Dice term"):
        L.level_loss(LossConfig(dice=1.0), 3, 3, img, img, field)
    with pytest.raises(ValueError, match="level"):
        L.level_loss(cfg, 4, 3, img, img, field)


def test_level_loss_warps_the_labels_with_the_dice_field_on_its_own_grid():
    """A coarse level (6^3 images) with labels and ``dice_field`` on the finer input grid: the
    Dice term is the input-grid one (a 2-voxel shift of a box, undone exactly by the field)."""
    img = textured((6, 6, 6), seed=13)
    level_field = torch.zeros(1, 3, 6, 6, 6)
    fixed = L.one_hot(box_labels((12, 12, 12), [(1, (slice(2, 8), slice(3, 9), slice(2, 10)))]), 2)
    moving = L.one_hot(box_labels((12, 12, 12), [(1, (slice(4, 10), slice(3, 9), slice(2, 10)))]), 2)
    shift = torch.zeros(1, 3, 12, 12, 12)
    shift[:, 0] = 2.0
    cfg = LossConfig(dice=1.0)
    aligned = L.level_loss(cfg, 1, 3, img, img, level_field, moving_onehot=moving, fixed_onehot=fixed, dice_field=shift)
    assert aligned["dice"].item() == pytest.approx(0.0, abs=1e-5)
    unaligned = L.level_loss(cfg, 1, 3, img, img, level_field, moving_onehot=moving, fixed_onehot=fixed, dice_field=shift * 0)
    assert unaligned["dice"].item() == pytest.approx(1 - 4 / 6, abs=1e-5)  # overlap 4 of 6 rows
    assert unaligned["total"].item() == pytest.approx(aligned["total"].item() + unaligned["dice"].item(), abs=1e-5)
