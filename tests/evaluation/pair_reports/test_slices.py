"""What the per-pair report shows, as arrays (evaluation.pair_reports.slices) and the slab-wise Jacobian map
(evaluation.jacobian.determinant_map): exact values derived by hand."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.jacobian import determinant_map
from evaluation.pair_reports import slices as visual
from learn2reg import contract

SHAPE = (9, 7, 8)


def test_slices_go_through_the_centre_of_the_labels_else_the_middle():
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:5, 1:4, 5:8] = 3  # centre (3, 2, 6)
    assert visual.slice_indices(SHAPE, labels) == (3, 2, 6)
    assert visual.slice_indices(SHAPE, np.zeros(SHAPE, np.uint8)) == (4, 3, 4)
    assert visual.slice_indices(SHAPE) == (4, 3, 4)
    with pytest.raises(ValueError, match="labels grid"):
        visual.slice_indices(SHAPE, labels[:-1])


def test_planes_and_in_plane_components():
    u = np.random.default_rng(0).normal(size=SHAPE + (3,)).astype(np.float32)
    np.testing.assert_array_equal(visual.plane(u, 1, 2), u[:, 2])
    np.testing.assert_array_equal(visual.in_plane_field(u, 1, 2), u[:, 2][..., [0, 2]])
    np.testing.assert_array_equal(visual.in_plane_field(u, 0, 5), u[5][..., [1, 2]])
    np.testing.assert_array_equal(visual.in_plane_field(u, 2, 0), u[:, :, 0][..., [0, 1]])


def test_checkerboard_alternates_tiles_starting_with_the_first_image():
    a, b = np.zeros((4, 6)), np.ones((4, 6))
    expected = np.array([[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1]])
    np.testing.assert_array_equal(visual.checkerboard(a, b, 2), expected)
    with pytest.raises(ValueError, match="one shape"):
        visual.checkerboard(a, b[:3], 2)


def test_normalise_maps_the_window_to_unit_range():
    img = np.arange(101, dtype=np.float32)
    np.testing.assert_allclose(visual.intensity_window(img), (1.0, 99.0))
    out = visual.normalise(img)
    assert out[0] == 0 and out[100] == 1 and out[50] == pytest.approx(49 / 98)
    np.testing.assert_array_equal(visual.normalise(img, (0.0, 200.0)), img / 200)
    assert not visual.normalise(np.full(5, 3.0)).any()  # constant: zeros, no division by zero


def test_grid_lines_of_zero_and_translation_fields():
    u2 = np.zeros((5, 4, 2))
    lines = visual.grid_lines(u2, 2)
    assert len(lines) == 3 + 2  # rows 0, 2, 4 and columns 0, 2
    np.testing.assert_array_equal(lines[1], [[2, 0], [2, 1], [2, 2], [2, 3]])  # the line through row 2
    np.testing.assert_array_equal(lines[4], [[0, 2], [1, 2], [2, 2], [3, 2], [4, 2]])  # column 2
    moved = visual.grid_lines(u2 + [1.5, -0.5], 2)
    for before, after in zip(lines, moved, strict=True):
        np.testing.assert_array_equal(after, before + [1.5, -0.5])  # a translation moves every line


def test_determinant_map_by_slabs_equals_the_whole_grid_bit_for_bit():
    u = np.random.default_rng(1).normal(0, 0.4, SHAPE + (3,)).astype(np.float32)
    whole = contract.jacobian_determinant(u)
    for slab in (1, 2, 3, 16):
        np.testing.assert_array_equal(determinant_map(u, slab=slab), whole)


def test_determinant_map_of_an_affine_field_is_its_determinant_everywhere():
    a = np.array([[1.2, 0.1, 0.0], [0.0, 0.9, 0.2], [0.05, 0.0, 1.1]])
    u = contract.affine_to_field(np.hstack([a, [[1.0], [-2.0], [0.5]]]), SHAPE)
    np.testing.assert_allclose(determinant_map(u), np.linalg.det(a), rtol=1e-5)  # faces too: the field is linear


def test_folded_voxels_of_a_known_fold():
    """u_0 = -3 x_0 on planes 0..5, 1 beyond: det = 1 - 3 = -2 on planes 0..4 (the differences lie
    inside the ramp), positive from plane 5 on (its difference straddles the jump to 1)."""
    u = np.zeros(SHAPE + (3,), np.float32)
    u[..., 0] = 1.0
    u[:6, ..., 0] = -3.0 * np.arange(6)[:, None, None]
    det = determinant_map(u)
    np.testing.assert_allclose(det[:5], -2.0)
    assert (det[5:] > 0).all()
    fold = visual.folded(det)
    assert fold.sum() == 5 * SHAPE[1] * SHAPE[2] and fold[:5].all()
    assert visual.folded(np.array([0.0, -0.0, 1e-12, -1e-12])).tolist() == [True, True, False, True]


def test_points_near_a_plane_and_the_plane_with_the_most():
    points = np.array([[1.0, 0, 0], [2.4, 5, 5], [3.0, 1, 1], [7.0, 2, 2], [8.0, 3, 3], [9.0, 4, 4]])
    assert visual.points_near(points, 0, 2, 1).tolist() == [True, True, True, False, False, False]
    assert visual.densest_plane(points, 0, 10, 1) == 2  # planes 2 and 8 both hold three: the lower one
    assert visual.densest_plane(points, 0, 10, 0) == 1  # no slab: exact planes 1, 3, 7, 8, 9 hold one each
    assert visual.densest_plane(np.zeros((0, 3)), 1, 10, 2) == 5
    assert [visual.plane_slab(n) for n in (10, 40, 256)] == [2, 2, 13]


def test_the_richest_plane_cuts_the_most_labels_of_all_maps():
    fixed = np.zeros(SHAPE, np.uint8)
    fixed[1, :2, :2], fixed[1, 4:, 4:], fixed[6, :, :] = 1, 2, 3  # plane 1: labels 1, 2; plane 6: label 3 (more voxels)
    assert visual.richest_plane([fixed], 0, [1, 2, 3]) == 1
    assert visual.richest_plane([fixed], 0, [3]) == 6
    moved = np.zeros(SHAPE, np.uint8)
    moved[6, :2, :2], moved[6, 4:, 4:] = 1, 2  # the warped labels moved to plane 6: it now cuts the most
    assert visual.richest_plane([fixed, moved], 0, [1, 2, 3]) == 6
