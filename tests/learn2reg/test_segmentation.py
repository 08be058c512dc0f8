"""One rule for label maps and masks (learn2reg.segmentation), as the evaluator applies it."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.evaluate import evaluate
from learn2reg import io
from learn2reg.eval_config import derive_config
from learn2reg.io import DataError, Geometry
from learn2reg.segmentation import check_label_map, check_mask, label_dtype, label_problems, mask_problems
from tests.evaluation.test_evaluate import SHAPE, SPACING, make_task, write_submission

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([0, 1, 2, 300], np.uint16, []),
        ([0, 1, 2], np.int16, []),
        ([0.0, 1.0, 13.0], np.float32, []),
        ([True, False], np.bool_, []),
        ([], np.float32, []),
        ([0, -1, -1, -3, 2], np.int16, ["label map has negative values (minimum -3): 3 voxel(s) (e.g. [-3, -1])"]),
        ([0.0, 1.5, 1.5, 2.25], np.float64, ["label map has 3 non-integer voxel(s) (e.g. [1.5, 2.25])"]),
        ([0.0, NAN, INF], np.float32, ["label map has 2 non-integer voxel(s) (e.g. [inf, nan])"]),
        (
            [-0.5, -4.0, 1.0],
            np.float32,
            [
                "label map has 1 non-integer voxel(s) (e.g. [-0.5])",
                "label map has negative values (minimum -4): 2 voxel(s) (e.g. [-4.0, -0.5])",
            ],
        ),
        (list(range(-7, 0)), np.int8, ["label map has negative values (minimum -7): 7 voxel(s) (e.g. [-7, -6, -5, -4, -3])"]),
    ],
)
def test_label_rule_counts_and_quotes_examples(values, dtype, expected):
    assert label_problems(np.asarray(values, dtype=dtype).reshape(-1, 1, 1)) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1, 1], []),
        ([0.0, 1.0], []),
        ([True, False], []),
        ([0, 2, 255, 2], ["mask is not binary: 3 voxel(s) not 0/1 (e.g. [2, 255])"]),
        ([0.0, 0.5, NAN], ["mask is not binary: 2 voxel(s) not 0/1 (e.g. [0.5, nan])"]),
        ([-1, 0], ["mask is not binary: 1 voxel(s) not 0/1 (e.g. [-1])"]),
    ],
)
def test_mask_rule(values, expected):
    assert mask_problems(np.asarray(values)) == expected


def test_checks_raise_naming_the_file():
    with pytest.raises(DataError, match=r"^/x/lab\.nii\.gz: label map has 1 non-integer voxel\(s\) \(e\.g\. \[0\.5\]\)$"):
        check_label_map("/x/lab.nii.gz", np.array([0.5, 1.0]))
    with pytest.raises(DataError, match=r"^/x/m\.nii\.gz: mask is not binary"):
        check_mask("/x/m.nii.gz", np.array([3]))
    check_label_map("/x/lab.nii.gz", np.array([0, 7], np.int64))
    check_mask("/x/m.nii.gz", np.array([0, 1], np.uint8))


@pytest.mark.parametrize(("top", "dtype"), [(0, np.uint8), (255, np.uint8), (256, np.uint16), (65535, np.uint16), (65536, np.uint32)])
def test_label_dtype_is_the_smallest_unsigned_that_holds_the_labels(top, dtype):
    assert label_dtype(top) == dtype


@pytest.mark.parametrize(
    ("values", "text"),
    [
        (np.full(SHAPE, 1.5, np.float32), f"label map has {np.prod(SHAPE)} non-integer voxel(s) (e.g. [1.5])"),
        (np.full(SHAPE, -1, np.int16), f"label map has negative values (minimum -1): {np.prod(SHAPE)} voxel(s)"),
    ],
    ids=["fractional", "negative"],
)
def test_evaluator_refuses_a_bad_label_map_naming_it(tmp_path, values, text):
    task = make_task(tmp_path / "task")
    bad = task / "labelsTr" / "Toy_0002_0000.nii.gz"
    io.save_nifti(bad, values, Geometry.identity(SHAPE, SPACING))
    write_submission(tmp_path / "sub", derive_config(task), "npz")
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "sub", task, workers=1)
    assert f"{bad}: {text}" in str(err.value)

