"""Plausibility of a pre-alignment: the decomposition against hand-built matrices, the checks and
the policies, and a registration that stays inside its bounds and says so when it hits one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.affine.bounds import Bounds, ImplausibleResult, bounds_in_mm, check, decide, decompose, parameter_box
from pipeline.affine.registration import AffineConfig, register_affine
from tests.pipeline.affine.test_registration import SMALL_GEOM, render, rigid

BOUNDS = Bounds(max_rotation_deg=10.0, max_translation=8.0, max_scale=0.2, max_shear=0.1)
CENTRE = np.array([5.0, -3.0, 2.0])


def about(linear: np.ndarray, translation, centre=CENTRE) -> np.ndarray:
    """4x4 ``x -> L (x - c) + c + t``."""
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = centre + np.asarray(translation) - linear @ centre
    return m


def test_decomposition_of_known_matrices():
    rotvec = np.array([3.0, -4.0, 12.0])  # degrees, |.| = 13
    rot = Rotation.from_rotvec(rotvec, degrees=True).as_matrix()
    d = decompose(about(rot, (1.0, -2.0, 0.5)), CENTRE)
    np.testing.assert_allclose(d.rotation_deg, rotvec, atol=1e-9)
    np.testing.assert_allclose(d.translation_mm, (1.0, -2.0, 0.5), atol=1e-12)
    np.testing.assert_allclose(d.scales, 1.0, atol=1e-12)
    assert d.shear == pytest.approx(0.0, abs=1e-12)
    d = decompose(about(rot @ np.diag([1.25, 0.9, 1.0]), (0, 0, 0)), CENTRE)
    np.testing.assert_allclose(np.sort(d.scales), [0.9, 1.0, 1.25], atol=1e-12)
    np.testing.assert_allclose(d.rotation_deg, rotvec, atol=1e-9)
    d = decompose(about(np.array([[1.0, 0.3, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 1.0]]), (0, 0, 0)), CENTRE)  # symmetric: no rotation
    np.testing.assert_allclose(d.rotation_deg, 0.0, atol=1e-9)
    assert d.shear > 0.1


@pytest.mark.parametrize(
    ("matrix", "words"),
    [
        (about(np.eye(3), (1.0, 2.0, -3.0)), []),
        (about(Rotation.from_rotvec([0, 0, 9.8], degrees=True).as_matrix(), (0, 0, 0)), ["rotation 9.8 deg"]),
        (about(Rotation.from_rotvec([6, 6, 6], degrees=True).as_matrix(), (0, 0, 0)), ["rotation 10.4 deg"]),  # the angle counts
        (about(np.eye(3), (0.0, -7.9, 0.0)), ["translation 7.9 mm"]),
        (about(np.diag([1.0, 1.0, 1.2]), (0, 0, 0)), ["scale"]),
        (about(np.diag([1.0, 1.0 / 1.2, 1.0]), (0, 0, 0)), ["scale"]),
        (about(np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), (0, 0, 0)), ["shear"]),
    ],
)
def test_check_names_every_bound_reached(matrix, words):
    reasons = check(matrix, np.eye(4), CENTRE, BOUNDS, (0.5, 0.5), 0.8)
    assert len(reasons) == len(words) and all(w in r for w, r in zip(words, reasons, strict=True)), reasons


def test_check_is_relative_to_the_start_and_watches_the_overlap():
    start = about(np.eye(3), (20.0, 0.0, 0.0))  # far from the identity, but it is the start
    assert check(start @ about(np.eye(3), (1.0, 0, 0), CENTRE + [20.0, 0, 0]), start, CENTRE, BOUNDS, (0.6, 0.6), 0.8) == []
    reasons = check(start, start, CENTRE, BOUNDS, (0.6, 0.45), 0.8)
    assert reasons == ["the overlap shrank from 60% to 45% of the fixed field of view (limit: 0.8 x)"]
    assert check(start, start, CENTRE, BOUNDS, (0.6, 0.49), 0.8) == []  # 0.49 >= 0.8 * 0.6


def test_policies():
    found, translation, initial = about(np.eye(3), (9, 0, 0)), about(np.eye(3), (2, 0, 0)), np.eye(4)
    ok = [("found", found, []), ("translation", translation, []), ("initial", initial, [])]
    assert decide(ok, "fallback")[:2] == ("accepted", found)
    bad = [("found", found, ["translation 9.0 mm at its bound"]), ("translation", translation, []), ("initial", initial, [])]
    action, matrix, reasons = decide(bad, "fallback")
    assert (action, reasons) == ("fallback-translation", ("translation 9.0 mm at its bound",)) and matrix is translation
    both = [bad[0], ("translation", translation, ["x"]), ("initial", initial, [])]
    assert decide(both, "fallback")[:2] == ("fallback-initial", initial)
    assert decide(bad, "warn")[:2] == ("warned", found)
    with pytest.raises(ImplausibleResult, match="translation 9.0 mm"):
        decide(bad, "refuse")


def test_bounds_in_mm_and_the_parameter_box():
    b = bounds_in_mm(10.0, 0.2, 0.1, 0.1, (41, 41, 41), (1.5, 1.5, 1.5))
    assert b.max_translation == pytest.approx(0.2 * 60.0)
    assert bounds_in_mm(10.0, 0.2, 0.1, 0.1, (41, 41, 41), (1.5, 1.5, 1.5), search_radius=20.0).max_translation == 20.0
    x0 = np.array([0.0, 1.0, 0.0, 5.0, 0.0, -5.0])
    box = parameter_box(x0, b, radius=30.0)
    angle = np.deg2rad(10.0) * 30.0  # rotation parameters: mm at the radius
    np.testing.assert_allclose(box[1], (1.0 - angle, 1.0 + angle))
    np.testing.assert_allclose(box[3], (5.0 - 12.0, 5.0 + 12.0))
    assert len(parameter_box(np.zeros(12), b, 30.0)) == 12


@pytest.fixture(scope="module")
def far_rotation():
    """Moving = fixed rotated by 25 degrees: beyond a 6 degree bound."""
    true = rigid((0, 0, 25), (0.0, 0.0, 0.0))
    return render(SMALL_GEOM, "A"), render(SMALL_GEOM, "B", true)


FAST = {"iterations": (20, 15, 10), "samples": 20_000, "max_rotation_deg": 6.0}


@pytest.mark.parametrize("policy", ["fallback", "warn"])
def test_a_registration_stays_within_its_bounds_and_reports_the_bound(far_rotation, policy):
    fixed, moving = far_rotation
    result = register_affine(fixed, moving, SMALL_GEOM, SMALL_GEOM, AffineConfig(**FAST, on_implausible=policy))
    found = decompose(result.found_matrix, np.asarray(result.center))
    assert np.abs(found.rotation_deg).max() <= 6.0 + 1e-6  # the box holds every rotation-vector component
    assert any("rotation" in r and "bound (6 deg)" in r for r in result.implausible), result.implausible
    if policy == "warn":
        assert result.action == "warned" and np.array_equal(result.matrix, result.found_matrix)
    else:
        assert result.action in ("fallback-translation", "fallback-initial")
        np.testing.assert_allclose(result.matrix[:3, :3], np.eye(3), atol=1e-12)  # no rotation: translation or start
        if result.action == "fallback-initial":
            np.testing.assert_array_equal(result.matrix, result.initial_matrix)
    entry = result.to_dict()
    assert entry["implausible"] == list(result.implausible) and entry["action"] == result.action


def test_refuse_raises_with_the_reasons(far_rotation):
    fixed, moving = far_rotation
    with pytest.raises(ImplausibleResult, match="rotation"):
        register_affine(fixed, moving, SMALL_GEOM, SMALL_GEOM, AffineConfig(**FAST, on_implausible="refuse"))


def test_config_rejects_bad_bounds_and_policies():
    for bad in ({"max_rotation_deg": 0.0}, {"max_rotation_deg": 120.0}, {"max_translation": -0.1}, {"max_scale": 0.0},
                {"max_shear": 0.0}, {"min_overlap": 1.5}, {"on_implausible": "ignore"}):
        with pytest.raises(ValueError):
            AffineConfig.from_dict(bad)
