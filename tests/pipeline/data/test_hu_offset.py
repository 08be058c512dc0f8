"""CT intensity conventions: windows in HU, the stored values' offset detected or declared, and a
warning naming the file when a window clips most of the foreground (the 2020 lung data store
HU + 1024, the current tasks HU; a window meant for one on the other must not pass unnoticed)."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from learn2reg.io import Geometry, read_nifti_scaling, save_nifti
from learn2reg.task import load_task
from pipeline.config import PreprocessConfig
from pipeline.data.preprocess import check_window, detect_hu_offset, network_image, normalise, prepare_case
from tests.learn2reg.test_task import make_l2r

LUNG_WINDOW_HU = (-924, 494)  # the author's [100, 1518] on HU + 1024 data, in HU
LUNG_WINDOW_2020 = (100, 1518)  # the same numbers taken as HU: a window for the other convention
LOGGER = "pipeline.data.preprocess"


def thorax(offset: float = 0.0, shape: tuple[int, int, int] = (48, 40, 44), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like thorax in HU + ``offset``: air (-1024 padding around the body), soft tissue
    (40 +- 20 HU), two lungs (-850 +- 30 HU) and a spine (700 HU). Returns the image (float32)
    and the lung mask (uint8)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    image = np.full(shape, -1024.0)
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 <= 1
    image[body] = 40 + rng.normal(0, 20, body.sum())
    lungs = (((np.abs(x) - 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 + (z / 0.8) ** 2) <= 1
    image[lungs] = -850 + rng.normal(0, 30, lungs.sum())
    spine = (x / 0.12) ** 2 + ((y + 0.55) / 0.12) ** 2 <= 1
    image[spine] = 700
    return (image + offset).astype(np.float32), lungs.astype(np.uint8)


# ---------------------------------------------------------------------- detection


@pytest.mark.parametrize("offset", [0.0, 1024.0])
def test_the_offset_is_detected_in_hu_and_in_hu_plus_1024(offset):
    image, _ = thorax(offset)
    found, seen = detect_hu_offset(image)
    assert found == offset
    assert ("HU + 1024" in seen) == (offset == 1024.0)


def test_a_few_interpolation_undershoots_do_not_hide_the_1024_offset():
    image, _ = thorax(1024.0)
    image.flat[::2000] = -285.0  # cubic resampling rings below 0 next to sharp edges (0.05 % of the voxels)
    assert detect_hu_offset(image)[0] == 1024.0


def test_hu_data_cropped_without_outside_air_is_still_hu():
    image, lungs = thorax(0.0)
    image[image < -1000] = -950.0  # no padding, the lungs are the darkest voxels
    assert detect_hu_offset(image)[0] == 0.0


def test_values_that_are_neither_convention_are_taken_as_hu_with_a_warning_naming_the_file(caplog):
    image = np.random.default_rng(0).uniform(-300, 300, (20, 20, 20)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert detect_hu_offset(image, "scan_07.nii.gz")[0] == 0.0
    assert "scan_07.nii.gz: cannot tell whether the values are HU or HU + 1024" in caplog.text
    assert "preprocess.hu_offset" in caplog.text


def test_a_declared_offset_is_used_as_it_is_and_nothing_is_detected(caplog):
    image, _ = thorax(0.0)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        declared = normalise(image, PreprocessConfig(window=LUNG_WINDOW_HU, hu_offset=1024))
    assert "hu_offset auto" not in caplog.text
    as_hu = normalise(image - 1024, PreprocessConfig(window=LUNG_WINDOW_HU, hu_offset=0))
    np.testing.assert_allclose(declared, as_hu, atol=1e-6)  # the image read as HU + 1024: the window moves up by 1024
    assert declared.max() < 0.7  # the tissue (40 HU, read as -984) falls near the bottom of the window


def test_without_a_window_the_offset_plays_no_part():
    image, _ = thorax(1024.0)
    assert np.array_equal(normalise(image, PreprocessConfig()), normalise(image, PreprocessConfig(hu_offset=0)))


# ---------------------------------------------------------------------- the window, in HU, in both conventions


def test_the_hu_window_gives_the_same_network_image_in_both_conventions():
    hu, lungs = thorax(0.0)
    cfg = PreprocessConfig(window=LUNG_WINDOW_HU)  # hu_offset "auto"
    a = network_image(hu, cfg, mask=lungs)
    b = network_image(hu + 1024, cfg, mask=lungs)
    np.testing.assert_allclose(a, b, atol=1e-6)
    expected = np.clip((hu - LUNG_WINDOW_HU[0]) / (LUNG_WINDOW_HU[1] - LUNG_WINDOW_HU[0]), 0, 1)
    np.testing.assert_allclose(a, expected, atol=1e-6)  # by hand: air 0, lung ~0.05, tissue ~0.68, bone 1
    assert a[hu < -1000].max() == 0.0 and 0.02 < a[lungs > 0].mean() < 0.08 and a[hu == 700].min() == 1.0


def test_the_header_intercept_is_applied_on_reading_and_reported(tmp_path, caplog):
    hu, _ = thorax(0.0)
    stored = np.round(hu + 1024).astype(np.int16)  # raw values HU + 1024, header intercept -1024
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, -1024.0
    path = tmp_path / "ct.nii.gz"
    nib.save(img, path)
    assert read_nifti_scaling(path) == (1.0, -1024.0)
    read = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = network_image(read, PreprocessConfig(window=LUNG_WINDOW_HU), path=path)
    assert f"{path}: hu_offset auto -> 0: HU" in caplog.text and "intercept -1024 applied on reading" in caplog.text
    np.testing.assert_allclose(out, network_image(hu, PreprocessConfig(window=LUNG_WINDOW_HU, hu_offset=0)), atol=1e-3)
    save_nifti(tmp_path / "plain.nii.gz", hu, Geometry.identity(hu.shape))
    assert read_nifti_scaling(tmp_path / "plain.nii.gz") is None


# ---------------------------------------------------------------------- the warning


@pytest.mark.parametrize("offset", [0.0, 1024.0])
def test_the_2020_window_taken_as_hu_clips_the_lung_and_warns(offset, caplog):
    image, lungs = thorax(offset)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = network_image(image, PreprocessConfig(window=LUNG_WINDOW_2020), path="case_001_exp.nii.gz", mask=lungs)
    assert out[lungs > 0].max() == 0.0  # the whole lung clipped to 0
    assert "case_001_exp.nii.gz: 100 % of the foreground (voxels inside the mask) lies outside the window [100, 1518] HU" in caplog.text


def test_a_wrong_declared_offset_warns_without_a_mask_too(caplog):
    image, _ = thorax(1024.0)  # HU + 1024 declared as HU: the body lies above the abdomen window
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        clipped = check_window(image, (-500, 800), 0.0, "img0001.nii.gz")
    assert clipped > 0.5
    assert "img0001.nii.gz:" in caplog.text and "above" in caplog.text and "outside the window [-500, 800] HU" in caplog.text


@pytest.mark.parametrize("offset", [0.0, 1024.0])
@pytest.mark.parametrize("window, masked", [(LUNG_WINDOW_HU, True), (LUNG_WINDOW_HU, False), ((-500, 800), False)])
def test_a_sensible_window_does_not_warn(offset, window, masked, caplog):
    image, lungs = thorax(offset)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        clipped = check_window(image, window, offset, "ok.nii.gz", lungs if masked else None)
    assert clipped < 0.5 and caplog.text == ""


def test_preprocessing_a_case_warns_with_its_file_and_its_mask(tmp_path, caplog):
    root = make_l2r(tmp_path, paired=True)
    image, lungs = thorax(0.0, shape=(17, 13, 9))
    stem = "Tiny_0001_0000"
    save_nifti(root / "imagesTr" / f"{stem}.nii.gz", image, Geometry.identity(image.shape))
    save_nifti(root / "masksTr" / f"{stem}.nii.gz", lungs, Geometry.identity(image.shape))
    case = load_task(root).case("0001_0000")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        prepare_case(case, PreprocessConfig(window=LUNG_WINDOW_2020, half_resolution=True))
    assert f"{case.image}: hu_offset auto -> 0: HU" in caplog.text
    assert f"{case.image}: 100 % of the foreground (voxels inside the mask)" in caplog.text
