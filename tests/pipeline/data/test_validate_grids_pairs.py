"""``validate``: label maps and masks on their image's grid; registration pairs listed twice."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from learn2reg.io import Geometry, save_nifti
from pipeline.cli import main
from pipeline.data.validate import validate_task
from tests.pipeline.data.test_validate import (
    NAME,
    SHAPE,
    SPACING,
    _meta,
    _stem,
    _write_meta,
    errors,
    make_2020,
    make_l2r,
    names,
)


def _moved(spacing: tuple[float, ...] = SPACING, direction: tuple[float, ...] | None = None, origin=(0.0, 0.0, 0.0)) -> Geometry:
    base = Geometry.identity(SHAPE, spacing)
    return dataclasses.replace(base, direction=direction or base.direction, origin=tuple(origin))


_ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


@pytest.mark.parametrize(
    ("kind", "geometry", "text"),
    [
        ("label", _moved(spacing=(1.5, 1.5, 2.5)), "label spacing (1.5, 1.5, 2.5) mm differs from its image's spacing (1.5, 1.5, 2) mm"),
        ("mask", _moved(origin=(0.0, 3.0, 0.0)), "mask origin (0, 3, 0) mm differs from its image's origin (0, 0, 0) mm"),
        ("label", _moved(direction=_ROTATED), "label direction (0, -1, 0, 1, 0, 0, 0, 0, 1) differs from its image's direction (1, 0, 0"),
        ("mask", _moved(spacing=(1.5, 1.5, 2.0002)), "mask spacing (1.5, 1.5, 2.0002) mm differs"),
    ],
    ids=["label-spacing", "mask-origin", "label-direction", "mask-spacing-just-outside"],
)
def test_label_or_mask_on_another_grid_is_named_with_both_values(tmp_path, kind, geometry, text):
    task = make_l2r(tmp_path)
    folder, data = ("labelsTr", np.zeros(SHAPE, np.uint8)) if kind == "label" else ("masksTr", np.ones(SHAPE, np.uint8))
    save_nifti(task / folder / f"{_stem(2)}.nii.gz", data, geometry)
    problems = validate_task(task)
    assert len(errors(problems)) == 1, "\n".join(map(str, problems))
    assert names(problems, task / folder / f"{_stem(2)}.nii.gz", text), "\n".join(map(str, problems))


def test_grid_within_tolerance_is_the_same_grid(tmp_path):
    """Header rounding (5e-5 mm, 5e-6 in a direction cosine) is not a different grid."""
    task = make_l2r(tmp_path)
    tilt = (1.0, 5e-6, 0.0, -5e-6, 1.0, 0.0, 0.0, 0.0, 1.0)
    save_nifti(task / "labelsTr" / f"{_stem(2)}.nii.gz", np.zeros(SHAPE, np.uint8), _moved(origin=(5e-5, 0, -5e-5), direction=tilt))
    save_nifti(task / "masksTr" / f"{_stem(2)}.nii.gz", np.ones(SHAPE, np.uint8), _moved(spacing=(1.5, 1.50005, 2.0)))
    assert validate_task(task) == []


def test_duplicate_pairs_are_warnings(tmp_path, capsys):
    task = make_l2r(tmp_path)
    meta = _meta(task)
    pair = meta["registration_val"][0]
    other = {"fixed": f"./imagesTr/{_stem(3)}.nii.gz", "moving": f"./imagesTr/{_stem(4)}.nii.gz"}
    meta["registration_val"] = [pair, other, dict(pair)]
    meta["registration_test"] = [dict(other)]
    _write_meta(task, meta)
    problems = validate_task(task)
    json_path = task.resolve() / f"{NAME}_dataset.json"
    assert [str(p) for p in problems] == [
        f"{json_path}: warning: val pair 0001_0000<--0002_0000 is listed 2 times",
        f"{json_path}: warning: pair 0003_0000<--0004_0000 is both a val and a test pair",
    ]
    assert main(["validate", "--no-progress", str(task)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"OK {task} (2 warning(s))"


def test_duplicate_pair_in_2020_csv_names_the_csv(tmp_path):
    task = make_2020(tmp_path)
    (task / "pairs_val.csv").write_text("fixed,moving\n3,3\n2,2\n3,3\n3,3\n")
    (task / "pairs_test.csv").write_text("fixed,moving\n2,2\n")
    problems = validate_task(task)
    root = task.resolve()
    assert [str(p) for p in problems if "pair" in p.message] == [
        f"{root / 'pairs_val.csv'}: warning: val pair 0003_0000<--0003_0001 is listed 3 times",
        f"{root / 'pairs_test.csv'}: warning: pair 0002_0000<--0002_0001 is both a val and a test pair",
    ]
    assert errors(problems) == []
