"""Every rule of the displacement-field contract, pinned by an analytic truth or a cross-check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from learn2reg import contract as C
from learn2reg.io import Geometry
from pipeline.model import contract as PC

SHAPE = (12, 10, 14)


def smooth_field(shape, amplitude, seed, sigma=3.0):
    """Random smooth field with max |u| about ``amplitude`` voxels."""
    rng = np.random.default_rng(seed)
    u = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(3)], axis=-1)
    return (u / np.abs(u).max() * amplitude).astype(np.float32)


def textured(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.0).astype(np.float32)


def random_affine(seed, scale=0.08):
    rng = np.random.default_rng(seed)
    a = np.eye(4)
    a[:3, :3] += rng.uniform(-scale, scale, (3, 3))
    a[:3, 3] = rng.uniform(-1.5, 1.5, 3)
    return a


# ---------------------------------------------------------------- identity and shifts


def test_zero_field_is_identity_for_images_labels_and_jacobian():
    img = textured(SHAPE)
    labels = (img > img.mean()).astype(np.uint8) * 3
    u = np.zeros(SHAPE + (3,), np.float32)
    np.testing.assert_array_equal(C.warp(img, u), img)
    out = C.warp_labels(labels, u)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)
    np.testing.assert_allclose(C.jacobian_determinant(u), 1.0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_integer_shift_pulls_from_the_next_voxel(axis):
    img = textured(SHAPE)
    u = np.zeros(SHAPE + (3,), np.float32)
    u[..., axis] = 2.0
    out = C.warp(img, u)
    n = SHAPE[axis]
    np.testing.assert_allclose(np.take(out, range(n - 2), axis), np.take(img, range(2, n), axis), atol=1e-6)
    assert np.all(np.take(out, range(n - 2, n), axis) == 0)  # sampled outside -> cval
    labels = np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(np.int32)
    np.testing.assert_array_equal(np.take(C.warp_labels(labels, u), range(n - 2), axis), np.take(labels, range(2, n), axis))


def test_fixed_point_maps_to_moving_point_x_plus_u():
    """A landmark at x in the fixed image corresponds to x + u(x) in the moving image."""
    u = np.zeros(SHAPE + (3,), np.float32)
    u[...] = (1.5, -2.0, 0.25)
    pts = np.array([[4.0, 5.0, 6.0], [6.5, 4.25, 7.0]])
    np.testing.assert_allclose(pts + C.sample_field(u, pts), pts + [1.5, -2.0, 0.25], atol=1e-5)


# ---------------------------------------------------------------- affine


def test_affine_field_has_det_j_equal_det_a_and_warps_like_the_matrix():
    a = random_affine(1)
    u = C.affine_to_field(a, SHAPE)
    np.testing.assert_allclose(C.jacobian_determinant(u), np.linalg.det(a[:3, :3]), rtol=1e-5)
    x = np.array([3.0, 4.0, 5.0])
    np.testing.assert_allclose(x + u[3, 4, 5], a[:3, :3] @ x + a[:3, 3], atol=1e-5)
    img = textured(SHAPE)
    coords = np.einsum("ij,jxyz->ixyz", a[:3, :3], C.identity_grid(SHAPE, np.float64)) + a[:3, 3, None, None, None]
    direct = ndimage.map_coordinates(img, coords, order=1, mode="constant")
    np.testing.assert_allclose(C.warp(img, u), direct, atol=1e-5)


def test_physical_affine_to_voxel_matches_geometry_by_hand():
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    fixed = Geometry((10, 10, 10), (2.0, 1.0, 0.5), tuple(rot.ravel()), (5.0, -3.0, 1.0))
    moving = Geometry((8, 9, 11), (1.0, 1.5, 2.0), tuple(np.eye(3).ravel()), (-2.0, 4.0, 0.0))
    phys = random_affine(2)
    vox = C.physical_to_voxel_affine(phys, fixed.index_to_physical, moving.index_to_physical)
    for idx in ([0, 0, 0], [3, 4, 5], [9, 1, 7]):
        p_fixed = fixed.index_to_physical @ [*idx, 1.0]
        p_moving = phys @ p_fixed
        np.testing.assert_allclose(moving.index_to_physical @ vox @ [*idx, 1.0], p_moving, atol=1e-9)
    # a pure physical translation between identically oriented grids is a voxel shift of t / spacing
    g = Geometry.identity(SHAPE, (2.0, 1.0, 0.5))
    shift = np.eye(4)
    shift[:3, 3] = (4.0, 3.0, 1.0)
    np.testing.assert_allclose(C.physical_to_voxel_affine(shift, g.index_to_physical, g.index_to_physical)[:3, 3], (2.0, 3.0, 2.0))


def test_geometry_round_trips_through_nibabel_affine():
    rot = np.linalg.qr(np.random.default_rng(3).standard_normal((3, 3)))[0]
    g = Geometry((4, 5, 6), (0.7, 1.2, 2.5), tuple(rot.ravel()), (1.0, 2.0, 3.0))
    back = Geometry.from_affine(g.affine_ras, g.shape)
    np.testing.assert_allclose(back.index_to_physical, g.index_to_physical, atol=1e-12)


# ---------------------------------------------------------------- composition


def test_compose_two_shifts_is_their_sum():
    s1 = np.zeros(SHAPE + (3,), np.float32)
    s1[...] = (1.0, 0.0, -2.0)
    s2 = np.zeros(SHAPE + (3,), np.float32)
    s2[...] = (0.5, 3.0, 1.0)
    np.testing.assert_allclose(C.compose(s1, s2), s1 + s2, atol=1e-6)


def test_compose_of_two_affines_is_the_matrix_product_and_general_equals_exact():
    a1, a2 = random_affine(4), random_affine(5)
    u1 = C.affine_to_field(a1, SHAPE)
    exact = C.compose_affine(u1, a2)
    np.testing.assert_allclose(exact, C.affine_to_field(a2 @ a1, SHAPE), atol=1e-4)
    general = C.compose(u1, C.affine_to_field(a2, SHAPE))
    inside = C.identity_grid(SHAPE) + np.moveaxis(u1, -1, 0)
    ok = np.all((inside >= 0) & (inside <= np.array(SHAPE)[:, None, None, None] - 1), axis=0)
    np.testing.assert_allclose(general[ok], exact[ok], atol=1e-4)  # linear interpolation of a linear field is exact


def wave_field(seed: int, amplitude: float, wavelength: float):
    """An analytic smooth field ``u(y)_c = amplitude * sin(k_c . y + phase_c)`` (voxels; ``|k_c| =
    2 pi / wavelength``, random directions), defined at any point ``y`` (``... x 3``), and the
    bound ``amplitude |k|^2 / 8`` on the error of its trilinear interpolation from the grid
    (``h^2 / 8 * sum_j max |d^2 u_c / dy_j^2|`` with ``h = 1``)."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((3, 3))
    k = directions / np.linalg.norm(directions, axis=1, keepdims=True) * (2 * np.pi / wavelength)
    phase = rng.uniform(0.0, 2 * np.pi, 3)
    return (lambda y: amplitude * np.sin(y @ k.T + phase)), amplitude * (2 * np.pi / wavelength) ** 2 / 8


def test_composition_is_u_first_plus_u_then_at_x_plus_u_first():
    """``compose(u_first, u_then)(x) = u_first(x) + u_then(x + u_first(x))`` (warping by it =
    warping by ``u_then``, then by ``u_first``), against ``u_then`` evaluated analytically at
    ``x + u_first(x)``, wherever that point lies inside the grid. The only error allowed is the
    proven bound of linear interpolation of ``u_then`` (0.029 voxel here); the wrong compositions
    (arguments swapped, plain sum) miss by more than 1 voxel."""
    shape = (20, 22, 24)
    first, _ = wave_field(0, 1.5, 16.0)
    then, bound = wave_field(100, 1.5, 16.0)
    x = np.moveaxis(C.identity_grid(shape, np.float64), 0, -1)
    u_first, u_then = first(x).astype(np.float32), then(x).astype(np.float32)
    y = x + u_first
    truth = u_first + then(y)
    inside = np.all((y >= 0) & (y <= np.array(shape) - 1), axis=-1)  # u_then extends by its edge values outside
    assert inside.mean() > 0.7

    def worst(w: np.ndarray) -> float:
        return float(np.abs(w - truth)[inside].max())

    tol = bound + 1e-3  # interpolation bound + float32 rounding of grids and coordinates
    assert worst(C.compose(u_first, u_then)) < tol
    assert worst(C.compose(u_then, u_first)) > 30 * tol  # arguments swapped
    assert worst(u_first + u_then) > 30 * tol  # plain sum, u_then not moved


# ---------------------------------------------------------------- normalised <-> voxel


def test_normalized_flow_conversion_by_hand_and_round_trip():
    flow = np.zeros(SHAPE + (3,), np.float32)
    flow[..., 0] = 1.0  # grid_sample's x = last array axis
    flow[..., 2] = -0.5  # grid_sample's z = first array axis
    u = C.normalized_to_voxel(flow)
    np.testing.assert_allclose(u[0, 0, 0], [-0.5 * (SHAPE[0] - 1) / 2, 0.0, (SHAPE[2] - 1) / 2])
    u = smooth_field(SHAPE, 3.0, seed=9)
    np.testing.assert_allclose(C.normalized_to_voxel(C.voxel_to_normalized(u)), u, atol=1e-5)


def test_torch_flow_conversion_equals_numpy_and_warp_paths_agree():
    u = smooth_field(SHAPE, 2.0, seed=10)
    flow_np = C.voxel_to_normalized(u)
    flow_t = torch.from_numpy(np.moveaxis(flow_np, -1, 0).copy())[None]
    u_t = PC.flow_to_voxel(flow_t)
    np.testing.assert_allclose(PC.field_to_numpy(u_t), u, atol=1e-5)
    np.testing.assert_allclose(PC.voxel_to_flow(u_t).numpy(), flow_t.numpy(), atol=1e-6)
    img = torch.from_numpy(textured(SHAPE))[None, None]
    by_flow = PC.warp_flow(img, flow_t)
    by_voxel = PC.warp_torch(img, u_t)
    np.testing.assert_allclose(by_flow.numpy(), by_voxel.numpy(), atol=1e-5)


# ---------------------------------------------------------------- torch == scipy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_warp_equals_scipy_warp_on_random_smooth_fields(seed):
    shape = (24, 20, 28)
    img = textured(shape, seed)
    u = smooth_field(shape, 3.0, seed + 100)
    ref = C.warp(img, u)
    out = PC.warp_torch(torch.from_numpy(img)[None, None], PC.field_from_numpy(u))[0, 0].numpy()
    core = (slice(4, -4),) * 3  # interior: every sample lands inside the moving grid
    assert np.abs(out[core] - ref[core]).max() < 1e-4


def test_torch_nearest_label_warp_equals_scipy():
    shape = (24, 20, 28)
    labels = (textured(shape, 3) * 7).astype(np.int64)
    u = smooth_field(shape, 3.0, 11).astype(np.float64)
    ref = C.warp_labels(labels, u)
    out = PC.warp_torch(torch.from_numpy(labels.astype(np.float64))[None, None], torch.from_numpy(np.moveaxis(u, -1, 0).copy())[None], mode="nearest")
    out = out[0, 0].numpy().astype(np.int64)
    frac = np.abs(C.identity_grid(shape, np.float64) + np.moveaxis(u, -1, 0)) % 1.0
    tie = np.any(np.abs(frac - 0.5) < 1e-6, axis=0)  # rounding of exact halves may differ
    core = (slice(4, -4),) * 3
    assert np.array_equal(out[core][~tie[core]], ref[core][~tie[core]])


# ---------------------------------------------------------------- resampling and the 2020 format


def test_resampling_an_affine_field_gives_the_same_deformation_on_the_new_grid():
    a = random_affine(12)
    small, big = (7, 9, 11), (13, 17, 21)
    s = np.diag([*C.grid_scale(small, big), 1.0])  # small voxel -> big voxel
    expected = C.affine_to_field(s @ a @ np.linalg.inv(s), big)
    np.testing.assert_allclose(C.resample_field(C.affine_to_field(a, small), big), expected, atol=1e-4)


def test_scale_points_follows_the_corner_aligned_grid():
    pts = np.array([[0.0, 0.0, 0.0], [6.0, 8.0, 10.0]])
    np.testing.assert_allclose(C.scale_points(pts, (7, 9, 11), (13, 17, 21)), [[0, 0, 0], [12, 16, 20]])


def test_2020_format_round_trip_dtype_and_evaluator_upsampling():
    shape = (16, 12, 20)
    u = np.zeros(shape + (3,), np.float32)
    u[...] = (1.5, -0.25, 2.0)  # float16-exact constants survive exactly
    half = C.to_2020(u)
    assert half.dtype == np.float16 and half.shape == (3, 8, 6, 10)
    np.testing.assert_array_equal(C.from_2020(half), u)
    smooth = smooth_field(shape, 4.0, 13, sigma=4.0)
    back = C.from_2020(C.to_2020(smooth))
    manual = np.stack([ndimage.zoom(c.astype(np.float32), 2, order=2) for c in C.to_2020(smooth)], axis=-1)
    np.testing.assert_array_equal(back, manual)  # exactly the 2020 evaluator's rule
    assert np.abs(back - smooth).max() < 0.15  # and close to the original smooth field
    with pytest.raises(ValueError, match="even"):
        C.to_2020(np.zeros((5, 4, 4, 3), np.float32))


def test_file_names_follow_both_generations():
    assert C.disp_filename_l2r("0001_0000", "0002_0000") == "disp_0001_0000_0002_0000.nii.gz"
    assert C.disp_filename_2020("0011_0000", "0011_0001") == "disp_0011_0011.npz"


def test_bad_field_shapes_are_refused():
    with pytest.raises(ValueError, match="X x Y x Z x 3"):
        C.warp(np.zeros(SHAPE, np.float32), np.zeros((3,) + SHAPE, np.float32))
    with pytest.raises(ValueError, match="differs"):
        C.check_field(np.zeros(SHAPE + (3,)), (1, 2, 3))
