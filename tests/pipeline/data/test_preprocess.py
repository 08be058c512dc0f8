"""Preprocessing: windowing, normalisation, half resolution, points, cache, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from learn2reg.io import DataError, Geometry, save_nifti
from pipeline.config import PreprocessConfig
from pipeline.data.preprocess import load_prepared, network_shape, normalise, prepare_case
from tests.learn2reg.test_task import make_l2r


def test_ct_window_maps_linearly_to_unit_range_with_air_at_zero():
    hu = np.array([-1000.0, -500.0, 150.0, 800.0, 2000.0])
    out = normalise(hu, PreprocessConfig(window=(-500, 800)))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_mr_normalisation_puts_background_at_zero_and_the_percentile_at_one():
    img = np.concatenate([np.zeros(50), np.linspace(10, 110, 101)])
    out = normalise(img, PreprocessConfig(percentile=100.0))
    assert out.min() == 0.0 and out[:50].max() == 0.0 and out.max() == pytest.approx(1.0)
    np.testing.assert_allclose(out[50:], np.linspace(10, 110, 101) / 110, rtol=1e-6)


def test_network_shape_half_resolution_any_size():
    assert network_shape((192, 160, 256), PreprocessConfig(half_resolution=True)) == (96, 80, 128)
    assert network_shape((37, 41, 29), PreprocessConfig(half_resolution=True)) == (19, 21, 15)
    assert network_shape((37, 41, 29), PreprocessConfig()) == (37, 41, 29)


def test_half_resolution_keeps_labels_points_and_spacing_consistent(tmp_path):
    root = make_l2r(tmp_path, paired=True)
    shape = (17, 13, 9)
    geom = Geometry.identity(shape, (1.0, 2.0, 3.0))
    img = np.zeros(shape, np.float32)
    img[4:9, 2:7, 2:5] = 100.0
    lab = (img > 0).astype(np.uint8) * 3
    stem = "Tiny_0001_0000"
    save_nifti(root / "imagesTr" / f"{stem}.nii.gz", img, geom)
    save_nifti(root / "masksTr" / f"{stem}.nii.gz", lab.clip(0, 1), geom)
    np.savetxt(root / "keypointsTr" / f"{stem}.csv", [[0, 0, 0], [16, 12, 8], [8, 6, 4]], delimiter=",")
    from learn2reg.task import load_task

    case = load_task(root).case("0001_0000")
    p = prepare_case(case, PreprocessConfig(half_resolution=True, percentile=100.0))
    assert p.shape == (9, 7, 5) and p.original_shape == shape
    np.testing.assert_allclose(p.keypoints, [[0, 0, 0], [8, 6, 4], [4, 3, 2]])  # corners map to corners
    np.testing.assert_allclose(p.spacing, (2.0, 4.0, 6.0))
    assert set(np.unique(p.mask)) == {0, 1} and p.mask.dtype == np.uint8
    assert p.image.min() >= 0.0 and p.image.max() <= 1.0
    inside = p.mask.astype(bool)
    assert p.image[inside].mean() > 0.5 > p.image[~inside].mean()


def test_cache_is_reused_and_invalidated_by_a_changed_source(tmp_path):
    from learn2reg.task import load_task

    root = make_l2r(tmp_path / "d", paired=False)
    task = load_task(root)
    cfg = PreprocessConfig(window=(0.0, 2.0), hu_offset=0)  # toy values, not CT: no offset detection
    first = load_prepared(task, "0001_0000", cfg, tmp_path / "cache")
    files = list((tmp_path / "cache").rglob("*.npz"))
    assert len(files) == 1
    again = load_prepared(task, "0001_0000", cfg, tmp_path / "cache")
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.label, again.label)
    assert list((tmp_path / "cache").rglob("*.npz")) == files  # read, not rewritten
    save_nifti(task.case("0001_0000").image, np.full((6, 5, 4), 2.0, np.float32), Geometry.identity((6, 5, 4)))
    changed = load_prepared(task, "0001_0000", cfg, tmp_path / "cache")
    assert changed.image.max() == pytest.approx(1.0) and first.image.max() == pytest.approx(0.5)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2


def test_bad_input_names_the_file(tmp_path):
    from learn2reg.task import load_task

    root = make_l2r(tmp_path, paired=False)
    task = load_task(root)
    bad = np.ones((6, 5, 4), np.float32)
    bad[1, 1, 1] = np.nan
    save_nifti(task.case("0002_0000").image, bad)
    with pytest.raises(DataError, match=r"Tiny_0002_0000\.nii\.gz: contains NaN"):
        prepare_case(task.case("0002_0000"), PreprocessConfig())
    save_nifti(task.case("0003_0000").label, np.ones((3, 3, 3), np.uint8))
    with pytest.raises(DataError, match=r"labelsTr/Tiny_0003_0000\.nii\.gz: shape"):
        prepare_case(task.case("0003_0000"), PreprocessConfig())


# ------------------------------------------------------------------ label maps and masks: validate's rules


def _label_case(tmp_path, values: np.ndarray, paired: bool = False, kind: str = "label"):
    """Case 0001_0000 of the tiny task with its label map (or mask, ``paired``) replaced."""
    from learn2reg.task import load_task

    task = load_task(make_l2r(tmp_path, paired=paired))
    case = task.case("0001_0000")
    save_nifti(getattr(case, kind), values)
    return task, case


SEG_SHAPE = (6, 5, 4)


@pytest.mark.parametrize(
    ("values", "kind", "text"),
    [
        (np.full(SEG_SHAPE, 1.5, np.float32), "label", "label map has 120 non-integer voxel(s) (e.g. [1.5])"),
        (np.where(np.arange(120).reshape(SEG_SHAPE) < 3, 0.4, 1.0).astype(np.float32), "label", "3 non-integer voxel(s) (e.g. [0.4"),
        (np.full(SEG_SHAPE, -1, np.int16), "label", "label map has negative values (minimum -1): 120 voxel(s) (e.g. [-1])"),
        (np.full(SEG_SHAPE, 1001, np.int16), "label", "label 1001 is too large"),
        (np.full(SEG_SHAPE, 2, np.uint8), "mask", "mask is not binary: 120 voxel(s) not 0/1 (e.g. [2])"),
        (np.full(SEG_SHAPE, 0.5, np.float32), "mask", "mask is not binary: 120 voxel(s) not 0/1 (e.g. [0.5])"),
    ],
    ids=["fractional", "slightly-fractional", "negative", "too-large", "mask-2", "mask-half"],
)
def test_bad_label_map_or_mask_is_refused_naming_the_file(tmp_path, values, kind, text):
    """Formerly cast without a word: 1.5 -> 1, 0.4 -> 0 (a label lost), -1 -> 255, 1001 -> 233."""
    task, case = _label_case(tmp_path, values, paired=kind == "mask", kind=kind)
    path = getattr(case, kind)
    with pytest.raises(DataError) as err:
        prepare_case(case, PreprocessConfig())
    assert str(err.value).startswith(f"{path}: ") and text in str(err.value)
    with pytest.raises(DataError, match=text.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_prepared(task, "0001_0000", PreprocessConfig(), tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.npz"))  # nothing cached


@pytest.mark.parametrize("half", [False, True])
def test_labels_above_255_keep_their_ids_in_uint16(tmp_path, half):
    values = np.zeros(SEG_SHAPE, np.int32)
    values[:3] = 300
    values[3:, :2] = 1000
    values[3:, 2:] = 7
    task, case = _label_case(tmp_path, values.astype(np.float32))  # whole floats are labels too
    cfg = PreprocessConfig(half_resolution=half)
    p = load_prepared(task, "0001_0000", cfg, tmp_path / "cache")
    assert p.label.dtype == np.uint16 and set(np.unique(p.label)) == {7, 300, 1000}
    cached = load_prepared(task, "0001_0000", cfg, tmp_path / "cache")
    assert cached.label.dtype == np.uint16
    np.testing.assert_array_equal(cached.label, p.label)
    small = prepare_case(task.case("0002_0000"), cfg)
    assert small.label.dtype == np.uint8

