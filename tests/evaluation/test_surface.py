"""HD95 (evaluation.surface) against hand-derived values and DeepMind's surface-distance package."""

from __future__ import annotations

import numpy as np
import pytest
import surface_distance as sd  # the oracle, pinned in requirements-dev.txt
from scipy import ndimage
from surface_distance import lookup_tables

from evaluation import surface
from tests.evaluation.official_reference import deepmind_compat


def _oracle_hd95(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    with deepmind_compat():
        return float(sd.compute_robust_hausdorff(sd.compute_surface_distances(a, b, np.asarray(spacing, float)), 95.0))


def _sphere(shape, centre, radius) -> np.ndarray:
    g = np.indices(shape, dtype=float)
    return ((g - np.asarray(centre, float)[:, None, None, None]) ** 2).sum(0) <= radius**2


def _blob(seed: int, shape=(26, 30, 34)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
    a = g > rng.uniform(0.0, 0.05)
    b = np.roll(g, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 3))) > rng.uniform(0.0, 0.05)
    return a, b


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5), (1.5, 1.5, 1.5)])
def test_area_table_is_bit_identical_to_deepmind(spacing):
    ours = surface.surfel_area_table(spacing)
    theirs = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    assert ours.shape == (256,)
    np.testing.assert_array_equal(ours, theirs)


def test_area_table_analytic_entries():
    table = surface.surfel_area_table()
    assert table[0] == table[255] == 0.0
    # one corner inside: the corner triangle through three edge midpoints, sqrt(3)/8
    assert table[1] == pytest.approx(np.sqrt(3) / 8)
    # a face of four voxels inside (codes 0b00001111 = one half of the cube): a unit square
    assert table[0b00001111] == pytest.approx(1.0)


def test_neighbour_codes_equal_the_correlation_of_the_reference():
    mask = np.random.default_rng(3).random((7, 8, 9)) > 0.5
    padded = np.zeros((8, 9, 10), np.uint8)
    padded[:-1, :-1, :-1] = mask
    expected = ndimage.correlate(padded, lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL, mode="constant", cval=0)
    np.testing.assert_array_equal(surface.neighbour_codes(mask), expected)


def test_one_voxel_shift_of_a_sphere_is_one_voxel():
    a = _sphere((24, 24, 24), (11.3, 12, 11.7), 6)
    b = np.roll(a, 1, axis=0)
    assert surface.hd95(a, b) == 1.0
    assert _oracle_hd95(a, b) == 1.0
    # isotropic 2 mm voxels: every distance doubles
    assert surface.hd95(a, b, spacing=(2.0, 2.0, 2.0)) == 2.0


def test_identical_masks_give_zero_and_translation_invariance():
    a = _sphere((20, 20, 20), (9, 10, 10.5), 5)
    assert surface.hd95(a, a) == 0.0
    big = np.zeros((40, 37, 33), bool)
    big[7:27, 11:31, 5:25] = a
    b = np.roll(a, 1, axis=2)
    big_b = np.zeros_like(big)
    big_b[7:27, 11:31, 5:25] = b
    assert surface.hd95(big, big_b) == surface.hd95(a, b) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_hd95_equals_deepmind_exactly_in_voxels(seed):
    a, b = _blob(seed)
    assert surface.hd95(a, b) == _oracle_hd95(a, b)


@pytest.mark.parametrize("seed", range(3))
def test_hd95_mm_equals_deepmind_with_spacing(seed):
    a, b = _blob(100 + seed)
    spacing = (0.8, 1.2, 2.0)
    assert surface.hd95(a, b, spacing) == pytest.approx(_oracle_hd95(a, b, spacing), rel=1e-12)


def test_surface_distances_match_the_reference_lists():
    a, b = _blob(7, shape=(18, 20, 22))
    ours = surface.surface_distances(a, b)
    with deepmind_compat():
        theirs = sd.compute_surface_distances(a, b, np.ones(3))
    for key in ("distances_gt_to_pred", "distances_pred_to_gt", "surfel_areas_gt", "surfel_areas_pred"):
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.2, 2.0)])
@pytest.mark.parametrize("edt_package", [True, False])  # voxel units: the edt package's transform, else scipy's
def test_distance_transform_and_kdtree_give_identical_distances(spacing, edt_package, monkeypatch):
    if not edt_package:
        monkeypatch.setattr(surface, "_edt", None)
    else:
        assert surface.edt_package() is not None  # pinned in requirements.txt
    a, b = _blob(11)
    sa, sb = surface.mask_surface(a), surface.mask_surface(b)
    edt, tree = surface.pair_distances(sa, sb, spacing, "edt"), surface.pair_distances(sa, sb, spacing, "kdtree")
    for x, y in zip(edt, tree, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("shape", [(1, 9, 7), (12, 1, 1), (5, 6, 7), (40, 3, 50)])
def test_edt_package_and_scipy_feature_transform_agree_bit_for_bit(shape, monkeypatch):
    """Random scattered surfels in flat, thin and ordinary boxes: exact squared distances."""
    rng = np.random.default_rng(sum(shape))
    n = int(np.prod(shape))
    verts = np.stack(np.unravel_index(rng.choice(n, size=max(2, n // 7), replace=False), shape), axis=1)
    half = len(verts) // 2
    a = surface.Surface(verts[:half].astype(np.int64), np.full(half, 1, np.uint8))
    b = surface.Surface(verts[half:].astype(np.int64), np.full(len(verts) - half, 1, np.uint8))
    fast = surface.pair_distances(a, b, method="edt")
    monkeypatch.setattr(surface, "_edt", None)
    slow = surface.pair_distances(a, b, method="edt")
    for x, y in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [bool, np.uint8, np.uint16, np.int16, np.float32])
def test_bounding_box_equals_the_extent_of_the_nonzero_voxels(order, dtype):
    rng = np.random.default_rng(3)
    for _ in range(5):
        arr = np.zeros((9, 11, 13), dtype=dtype, order=order)
        lo = rng.integers(0, 6, 3)
        hi = lo + rng.integers(1, 4, 3)
        k = 4
        idx = tuple(rng.integers(a, b, k) for a, b in zip(lo, hi, strict=True))
        arr[idx] = -1 if np.issubdtype(np.dtype(dtype), np.signedinteger) else 1
        nz = np.nonzero(arr)
        expected = tuple(slice(int(i.min()), int(i.max()) + 1) for i in nz)
        assert surface.bounding_box(arr) == expected
    assert surface.bounding_box(np.zeros((4, 5, 6), dtype=dtype, order=order)) is None


def test_far_apart_structures_use_the_tree_and_match_the_reference(monkeypatch):
    a = np.zeros((220, 80, 80), bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = True
    b[210:215, 70:74, 71:75] = True
    sa, sb = surface.mask_surface(a), surface.mask_surface(b)
    box = np.prod([214, 73, 74])
    tree = surface.TREE_PER_SURFEL * (len(sa) + len(sb)) + surface.TREE_PER_QUERY * (len(sa) + len(sb))
    assert box > surface.EDT_BOX_MIN and tree < surface.EDT_PER_VOXEL * box  # large sparse box: the k-d tree ...
    assert tree + surface.TREE_IMPORT > surface.EDT_PER_VOXEL * box  # ... unless scipy.spatial must be imported first
    expected = _oracle_hd95(a, b)
    used = []
    monkeypatch.setattr(surface, "_tree_squared", lambda *args, f=surface._tree_squared: used.append(1) or f(*args))
    monkeypatch.setattr(surface, "tree_import_seconds", lambda: surface.TREE_IMPORT)  # a process without scipy.spatial
    assert surface.hd95(a, b) == expected and not used  # the import would cost more than the tree saves
    monkeypatch.setattr(surface, "tree_import_seconds", lambda: 0.0)  # scipy.spatial loaded
    assert surface.hd95(a, b) == expected and used
    with pytest.raises(ValueError):
        surface.pair_distances(surface.mask_surface(a), surface.mask_surface(b), method="nope")


def test_the_tree_import_counts_only_while_scipy_spatial_is_not_loaded(monkeypatch):
    import sys

    import scipy.spatial  # noqa: F401

    assert surface.tree_import_seconds() == 0.0
    monkeypatch.delitem(sys.modules, "scipy.spatial")
    assert surface.tree_import_seconds() == surface.TREE_IMPORT > 0


def test_empty_side_gives_inf_like_the_reference():
    a = _sphere((16, 16, 16), (8, 8, 8), 4)
    empty = np.zeros_like(a)
    assert surface.hd95(a, empty) == np.inf
    assert surface.hd95(empty, a) == np.inf
    assert _oracle_hd95(a, empty) == np.inf


def test_directed_percentile_no_interpolation():
    # 20 equal areas: the first distance whose cumulative fraction reaches 0.95 is the 19th
    d = np.arange(20, dtype=float)
    assert surface.directed_percentile(d[::-1].copy(), np.ones(20)) == 18.0
    # a heavy surfel shifts the percentile onto itself
    areas = np.ones(20)
    areas[15] = 100.0  # cumulative fraction 15/119 before it, 115/119 > 0.95 with it
    assert surface.directed_percentile(d, areas) == 15.0
    assert surface.directed_percentile(np.zeros(0), np.zeros(0)) == np.inf


def test_directed_percentile_from_squared_distances_is_bit_identical():
    """Counting surfels per (squared distance, area) instead of sorting them gives the reference's
    sorted areas, hence its exact running sums: random distances with many ties, a few codes or all,
    percentiles at the ends, and isotropic spacings other than 1 (distances scaled)."""
    rng = np.random.default_rng(5)
    for trial in range(400):
        n = int(rng.integers(1, 3000))
        squared = rng.integers(0, int(rng.choice([1, 4, 60, 5000, 200000])) + 1, n)
        squared *= rng.random(n) < rng.uniform(0.2, 1.0)  # many zeros, as coincident surfels
        codes = rng.choice(np.array([1, 3, 7, 15, 63, 127, 254, 240], np.uint8), n) if trial % 2 else rng.integers(1, 255, n).astype(np.uint8)
        spacing = [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (0.7, 0.7, 0.7)][trial % 3]
        scale = None if spacing[0] == 1.0 else spacing[0]
        percent = float(rng.choice([95.0, 95.0, 50.0, 0.0, 100.0]))
        distances = np.sqrt(squared.astype(np.float64)) * (1.0 if scale is None else scale)
        expected = surface.directed_percentile(distances, surface.surfel_area_table(spacing)[codes], percent)
        assert surface.directed_percentile_squared(squared, codes, spacing, percent, scale) == expected
    assert surface.directed_percentile_squared(np.zeros(0, np.int64), np.zeros(0, np.uint8)) == np.inf


@pytest.mark.parametrize("seed", range(4))
def test_squared_distances_are_exact_integers_by_every_method(seed):
    """Distance transform and k-d tree (which skips the surfels both surfaces share) give the
    brute-force nearest squared distance of every surfel, both ways."""
    rng = np.random.default_rng(seed)
    a, b = _blob(20 + seed, shape=(14, 17, 15))
    if seed == 3:  # background-like: masks touching the border, whose surfels both share
        a, b = ~a, ~b
    sa, sb = surface.mask_surface(a), surface.mask_surface(b)
    brute = [((s.vertices[:, None, :] - t.vertices[None, :, :]) ** 2).sum(-1).min(1) for s, t in ((sa, sb), (sb, sa))]
    for method in ("edt", "kdtree", "auto"):
        got = surface.pair_squared_distances(sa, sb, method)
        for x, y in zip(got, brute, strict=True):
            assert x.dtype == np.int64
            np.testing.assert_array_equal(x, y)
    shuffled = surface.Surface(sb.vertices[rng.permutation(len(sb))], sb.codes)  # any surfel order
    np.testing.assert_array_equal(surface._tree_squared(sa, shuffled), brute[0])
    with pytest.raises(ValueError, match="unknown distance method"):
        surface.pair_squared_distances(sa, sb, "nope")


@pytest.mark.parametrize("order", ["C", "F"])
def test_neighbour_codes_and_surfels_of_a_fortran_ordered_crop(order):
    mask = np.asarray(np.random.default_rng(4).random((6, 9, 7)) > 0.4, order=order)
    padded = np.zeros((7, 10, 8), np.uint8)
    padded[:-1, :-1, :-1] = mask
    codes = ndimage.correlate(padded, lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL, mode="constant", cval=0)
    np.testing.assert_array_equal(surface.neighbour_codes(mask), codes)
    found = surface.extract_surface(mask, (3, 4, 5))
    border = np.argwhere((codes != 0) & (codes != 255))
    np.testing.assert_array_equal(found.vertices, border + [3, 4, 5])
    np.testing.assert_array_equal(found.codes, codes[tuple(border.T)])


@pytest.mark.parametrize("case", ["background", "touches the border", "one side only the border"])
def test_background_surfaces_measured_inside_the_border_give_the_same_integers(case):
    """Masks that cover the grid's border (background): the border surfels are shared, the other
    surfels' distance to it is their distance to the nearest face, and only the inner surfels go
    through a transform. Same squared distances as the whole-grid computation; a mask that leaves
    part of the border uncovered takes the general way."""
    a, b = _blob(30, shape=(16, 19, 17))
    a, b = ~a, ~b
    a[0], a[-1], a[:, 0], a[:, -1], a[:, :, 0], a[:, :, -1] = True, True, True, True, True, True
    b[0], b[-1], b[:, 0], b[:, -1], b[:, :, 0], b[:, :, -1] = True, True, True, True, True, True
    if case == "touches the border":
        b[0, 3:6, 4:9] = False
    if case == "one side only the border":
        b[:] = True
    sa, sb = surface.mask_surface(a), surface.mask_surface(b)
    expected = surface.pair_squared_distances(sa, sb)
    assert (surface._border_squared_distances(sa, sb, a.shape, "auto") is None) == (case == "touches the border")
    for method in ("edt", "kdtree"):
        got = surface.pair_squared_distances(sa, sb, method, grid=a.shape)
        for x, y in zip(got, expected, strict=True):
            np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------- the local search


def _brute(sa: surface.Surface, sb: surface.Surface) -> list[np.ndarray]:
    """Nearest squared distances both ways by comparing every pair, 256 surfels at a time (whole,
    the differences of two 4,000-surfel surfaces would take ~1 GB)."""
    out = []
    for s, t in ((sa, sb), (sb, sa)):
        best = np.empty(len(s), dtype=np.int64)
        for first in range(0, len(s), 256):
            d = s.vertices[first : first + 256, None, :] - t.vertices[None, :, :]
            best[first : first + 256] = np.einsum("ijk,ijk->ij", d, d).min(axis=1)
        out.append(best)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 8, 9])
def test_the_local_search_returns_exact_distances_and_leaves_only_farther_ones_unknown(seed):
    """Given the percentile, the nearest distances are looked up shell by shell: every distance it
    returns is the brute-force one, every unknown (-1) is farther than all of those, and HD95 from
    them is DeepMind's (background-like masks that cover the border included)."""
    a, b = _blob(40 + seed, shape=(22, 25, 21))  # (seeds whose second blob is shifted)
    if seed >= 4:
        a, b = ~a, ~b
    sa, sb = surface.mask_surface(a), surface.mask_surface(b)
    found = surface.pair_squared_distances(sa, sb, grid=a.shape, percent=95.0)
    unknown = 0
    for got, exact in zip(found, _brute(sa, sb), strict=True):
        known = got >= 0
        np.testing.assert_array_equal(got[known], exact[known])
        if not known.all():
            assert exact[~known].min() > exact[known].max()
        unknown += int((~known).sum())
    directed = [surface.directed_percentile_squared(sq, s.codes) for sq, s in zip(found, (sa, sb), strict=True)]
    assert None not in directed and max(directed) == _oracle_hd95(a, b)  # type: ignore[type-var]
    print(f"\nseed {seed}: {unknown} of {len(sa) + len(sb)} surfels left unknown")
    assert unknown > 0  # the search stopped before the farthest surfels: the case it is for


def test_inner_surfels_of_a_border_covering_mask_need_only_the_share_the_border_leaves():
    """Background-like masks: the border's surfels are at distance 0 and count toward the 95 %;
    the inner surfels' share is what they leave (per side), so the local search stops earlier,
    with the same HD95."""
    a, b = _blob(48, shape=(22, 25, 21))
    a, b = ~a, ~b
    sa, sb = surface.mask_surface(a), surface.mask_surface(b)
    top = np.asarray(a.shape)
    for side in (sa, sb):
        on = ((side.vertices == 0) | (side.vertices == top)).any(axis=1)
        areas = surface._area_table((1.0, 1.0, 1.0))[side.codes]
        share = surface._inner_share(95.0, side, on)
        assert 0 < share < 95  # the border holds part of the 95 %
        assert areas[on].sum() + share / 100 * areas[~on].sum() == pytest.approx(0.95 * areas.sum(), rel=1e-12)
        assert surface._inner_share(1.0, side, on) == 0.0  # the border alone holds 1 %
    found = surface.pair_squared_distances(sa, sb, grid=a.shape, percent=95.0)
    directed = [surface.directed_percentile_squared(sq, s.codes) for sq, s in zip(found, (sa, sb), strict=True)]
    assert None not in directed and max(directed) == _oracle_hd95(a, b)  # type: ignore[type-var]
    inner = [s.vertices[~((s.vertices == 0) | (s.vertices == top)).any(axis=1)] for s in (sa, sb)]
    whole = surface.pair_squared_distances(*(surface.Surface(v, s.codes[~((s.vertices == 0) | (s.vertices == top)).any(axis=1)])
                                             for v, s in zip(inner, (sa, sb), strict=True)), percent=95.0)
    assert sum(int((f < 0).sum()) for f in found) > sum(int((w < 0).sum()) for w in whole)  # more left unknown


def test_surfaces_far_apart_take_the_distance_transform():
    """Two spheres 14 voxels apart: the sample finds nothing near, so every distance is computed
    (no unknown), as without the percentile."""
    a, b = _sphere((40, 24, 24), (10, 12, 12), 5), _sphere((40, 24, 24), (24, 12, 12), 5)
    sa, sb = surface.mask_surface(a), surface.mask_surface(b)
    assert surface._local_squared(sa, sb, 95.0, budget=1.0) is None
    for got, exact in zip(surface.pair_squared_distances(sa, sb, percent=95.0), _brute(sa, sb), strict=True):
        np.testing.assert_array_equal(got, exact)


def test_the_local_search_gives_way_when_over_its_budget_or_radius():
    a, b = _blob(41, shape=(22, 25, 21))
    sa, sb = surface.mask_surface(a), surface.mask_surface(b)
    assert surface._local_squared(sa, sb, 95.0, budget=1.0) is not None
    assert surface._local_squared(sa, sb, 95.0, budget=1e-9) is None
    assert surface._local_squared(sa, sb, 100.0, budget=1.0) is None or _brute(sa, sb)[0].max() <= surface.LOCAL_RADIUS**2


def test_a_percentile_that_unknown_distances_could_decide_is_not_given():
    """-1 entries are unknown distances beyond the known ones: the percentile among them, or within
    rounding of a boundary (their order could move it), gives None; elsewhere the exact value."""
    codes = np.full(20, 15, np.uint8)  # one area for all
    squared = np.array([0] * 10 + [4] * 5 + [-1] * 5, np.int64)
    complete = np.where(squared < 0, 9, squared)
    for percent in (12.0, 52.0, 72.0):
        assert surface.directed_percentile_squared(squared, codes, percent=percent) == surface.directed_percentile_squared(complete, codes, percent=percent)
    assert surface.directed_percentile_squared(squared, codes, percent=95.0) is None  # among the unknown
    assert surface.directed_percentile_squared(squared, codes, percent=75.0) is None  # 15/20: on the boundary
    assert surface.directed_percentile_squared(complete, codes, percent=75.0) == 2.0
