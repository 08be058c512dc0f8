"""Fields of view found from the images: supports of any shape, modality names as hints, and the
per-image choice (a partial view of the other image, or a masked image)."""

from __future__ import annotations

import numpy as np
import pytest

from learn2reg.io import Geometry
from pipeline.affine.fov import FovChoice, choose_fov, names_ultrasound, with_fov
from pipeline.affine.registration import AffineConfig
from pipeline.affine.support import coverage, outside_region, support

GEOM = Geometry((32, 32, 32), (1.0, 1.0, 1.0), tuple(np.eye(3).ravel()), (0.0, 0.0, 0.0))


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("3D iUS", True), ("iUS", True), ("US", True), ("us", True), ("Ultrasound", True), ("US (intra-op)", True),
        ("3D-US", True), ("3d_ius", True), ("intra-operative ultrasound", True), ("Ultrasonography", True), ("TRUS", True),
        ("T1", False), ("ceT1", False), ("T2", False), ("MR", False), ("CT", False), ("FLAIR", False), ("", False),
        ("MUSCLE MR", False), ("T1w Brain MRI", False), ("Focused", False),
    ],
)
def test_modality_names_are_free_text_hints(name, says):
    assert names_ultrasound(name) is says


def cone(shape=(32, 32, 32), apex=(16.0, 16.0, -4.0), half_angle_deg=30.0) -> np.ndarray:
    """Bool: a cone opening along +z from ``apex`` (voxels), cut at depth 30."""
    index = np.moveaxis(np.indices(shape), 0, -1) - np.asarray(apex)
    depth = np.linalg.norm(index, axis=-1)
    angle = np.degrees(np.arccos(np.clip(index[..., 2] / np.maximum(depth, 1e-9), -1, 1)))
    return (angle < half_angle_deg) & (depth < 30.0)


def speckle(shape=(32, 32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 2.0, shape).astype(np.float32)


def test_support_is_everything_but_the_constant_region_at_the_border():
    inside = cone()
    image = np.where(inside, speckle(), 0.0)
    image[16, 16, 12:15] = 0.0  # a constant (anechoic) pocket inside the cone stays inside
    np.testing.assert_array_equal(support(image), inside)
    assert outside_region(image).sum() == inside.size - inside.sum()
    ct = np.where(inside, speckle() * 100.0, -1024.0)  # any constant, not only zero
    np.testing.assert_array_equal(support(ct), inside)
    assert support(speckle()).all()  # noise everywhere: no outside


def test_coverage_counts_the_other_support_inside_this_one():
    inside = cone()
    full = np.ones(GEOM.shape, bool)
    assert coverage(inside, GEOM.index_to_physical, full, GEOM.index_to_physical) == pytest.approx(inside.mean(), abs=0.01)
    assert coverage(full, GEOM.index_to_physical, inside, GEOM.index_to_physical) == 1.0
    shifted = GEOM.index_to_physical.copy()
    shifted[:3, 3] += 100.0  # the other grid lies elsewhere: nothing of it inside
    assert coverage(full, GEOM.index_to_physical, full, shifted) == 0.0


def test_choice_per_image_from_the_images_with_the_name_as_a_hint():
    us, mr = np.where(cone(), speckle(), 0.0), speckle(seed=1) + 5.0
    for names in (("3D iUS", "ceT1"), ("", ""), ("image", "image")):  # with or without a name saying ultrasound
        fixed, moving = choose_fov(us, mr, GEOM, GEOM, names)
        assert fixed.has_fov and not moving.has_fov, (names, fixed.reason)
        assert fixed.outside == pytest.approx(1.0 - cone().mean()) and moving.outside == 0.0
    named, _ = choose_fov(us, mr, GEOM, GEOM, ("3D iUS", "T1"))
    assert "says ultrasound" in named.reason and named.coverage is None
    unnamed, _ = choose_fov(us, mr, GEOM, GEOM)
    assert "holding" in unnamed.reason and unnamed.coverage == pytest.approx(cone().mean(), abs=0.01)
    # two masked images of the same support (skull-stripped brains): their outlines are anatomy
    brain = np.zeros(GEOM.shape, bool)
    brain[4:28, 4:28, 4:28] = True
    a, b = np.where(brain, speckle(), 0.0), np.where(brain, speckle(seed=2), 0.0)
    fixed, moving = choose_fov(a, b, GEOM, GEOM, ("T1", "T1"))
    assert not fixed.has_fov and not moving.has_fov and "masked image" in fixed.reason
    # a name that says ultrasound over an image with no outside: no field of view
    assert not choose_fov(mr, mr, GEOM, GEOM, ("US", "US"))[0].has_fov
    # forced
    assert choose_fov(mr, us, GEOM, GEOM, fov="on")[0].has_fov and not choose_fov(us, mr, GEOM, GEOM, fov="off")[0].has_fov
    with pytest.raises(ValueError, match="fov"):
        choose_fov(us, mr, GEOM, GEOM, fov="maybe")


def test_the_choice_reaches_the_config_and_the_log(caplog):
    choices = (FovChoice(True, "field of view: because", 0.8), FovChoice(False, "no field of view: because", 0.0))
    with caplog.at_level("INFO", logger="pipeline.affine.fov"):
        config = with_fov(AffineConfig(), choices, "0001_0000<--0001_0001")
    assert config.fixed_fov and not config.moving_fov and config.resolved_metric() == "ngf"
    assert "0001_0000<--0001_0001: fixed image: field of view: because" in caplog.text
    assert "moving image: no field of view" in caplog.text
