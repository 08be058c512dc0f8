"""Submission files: the array name of an ``.npz`` (2020: ``arr_0`` only; current: any single one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.evaluate import evaluate, main
from learn2reg import contract
from learn2reg.eval_config import derive_config
from learn2reg.io import DataError
from learn2reg.submission import check_submission, load_field, npz_header
from learn2reg.task import Layout
from tests.evaluation.test_evaluate import SHAPE, make_task, smooth_field, write_submission


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return make_task(tmp_path_factory.mktemp("task"))


def _rename_2020(folder: Path, pair, key: str) -> Path:
    """Rewrite one 2020 field with its array under ``key``."""
    path = folder / contract.disp_filename_2020(pair.fixed, pair.moving)
    with np.load(path) as z:
        arr = z["arr_0"]
    np.savez(path, **{key: arr})
    return path


def test_2020_field_under_another_name_is_refused_naming_both_keys(task, tmp_path, capsys):
    cfg = derive_config(task)
    write_submission(tmp_path / "sub", cfg, "2020")
    folder = tmp_path / "sub" / "task_03"
    bad = _rename_2020(folder, cfg.pairs[1], "disp")
    expected = f"{bad}: the array is named 'disp'; 2020 fields must be stored under 'arr_0'"
    problems = check_submission(tmp_path / "sub", cfg)  # header check only
    assert len(problems) == 1 and problems[0].startswith(expected) and problems[0].endswith(f"[{cfg.pairs[1].key}]")
    with pytest.raises(DataError, match="must be stored under 'arr_0'"):
        load_field(bad, Layout.L2R2020, (*SHAPE, 3))
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "sub", task, workers=1)
    assert expected in str(err.value)
    assert main(["-i", str(tmp_path / "sub"), "-d", str(task), "-o", str(tmp_path / "out.json")]) == 1
    assert expected in capsys.readouterr().err and not (tmp_path / "out.json").exists()


def test_current_npz_may_use_any_single_name(task, tmp_path):
    cfg = derive_config(task)
    u = smooth_field(0)
    pair = cfg.pairs[0]
    path = tmp_path / contract.disp_filename_l2r(pair.fixed, pair.moving).replace(".nii.gz", ".npz")
    np.savez(path, displacement=u)
    assert npz_header(path) == ((*SHAPE, 3), np.dtype(np.float32))
    np.testing.assert_array_equal(load_field(path, Layout.L2R, (*SHAPE, 3)), u)


def test_npz_with_two_arrays_names_the_count_not_a_wrapped_error(tmp_path):
    path = tmp_path / "disp_0001_0002.npz"
    np.savez(path, arr_0=np.zeros((3, 2, 2, 2), np.float16), arr_1=np.zeros(1))
    for call in (lambda: npz_header(path), lambda: load_field(path, Layout.L2R2020, (4, 4, 4, 3))):
        with pytest.raises(DataError) as err:
            call()
        assert str(err.value) == f"{path}: .npz must hold exactly one array, found 2"
