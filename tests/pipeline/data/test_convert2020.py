"""``convert-2020``: synthetic folders named like the unpacked 2020 archives become 2020 task
folders that the pipeline reads (through the real command line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from learn2reg.io import Geometry, load_nifti, save_nifti, write_points
from learn2reg.task import Layout, Pair, load_task
from pipeline.cli import main

SHAPE = (6, 5, 4)


def _nifti(path: Path, value: float, dtype=np.float32) -> None:
    save_nifti(path, np.full(SHAPE, value, dtype), Geometry.identity(SHAPE))


def lung_archive(root: Path) -> Path:
    """Task 2 as unpacked: training/{scans,lungMasks}/case_NNN_{exp,insp}.nii.gz (HU + 1024
    values), training/keypoints/case_NNN.csv, pairs_val.csv, and a stray readme."""
    for s in (1, 2, 3):
        for role, value in (("exp", 1000.0 + s), ("insp", 2000.0 + s)):
            _nifti(root / "training" / "scans" / f"case_{s:03d}_{role}.nii.gz", value)
            _nifti(root / "training" / "lungMasks" / f"case_{s:03d}_{role}.nii.gz", 1, np.uint8)
        write_points(root / "training" / "keypoints" / f"case_{s:03d}.csv", np.ones((4, 6)))
    (root / "pairs_val.csv").write_text("fixed,moving\n3,3\n")
    (root / "training" / "readme.txt").write_text("notes")
    return root


def abdomen_archive(root: Path) -> Path:
    """Task 3 as unpacked: Training/img/imgNNNN.nii.gz, Training/label/labelNNNN.nii.gz."""
    for s in (1, 2, 4):
        _nifti(root / "Training" / "img" / f"img{s:04d}.nii.gz", -1024.0 + s)
        _nifti(root / "Training" / "label" / f"label{s:04d}.nii.gz", s % 13, np.uint8)
    (root / "pairs_val.csv").write_text("fixed,moving\n2,4\n")
    return root


def hippocampus_archive(root: Path) -> Path:
    """Task 4 as unpacked: {Training,Testing}/img/hippocampus_NNN.nii.gz, Training/label/..."""
    for s in (1, 3, 4):
        _nifti(root / "Training" / "img" / f"hippocampus_{s:03d}.nii.gz", s)
        _nifti(root / "Training" / "label" / f"hippocampus_{s:03d}.nii.gz", 1 + s % 2, np.uint8)
    _nifti(root / "Testing" / "img" / "hippocampus_007.nii.gz", 7)
    (root / "pairs_val.csv").write_text("fixed,moving\n3,4\n")
    (root / "pairs_test.csv").write_text("fixed,moving\n7,1\n")
    return root


def convert(archive: Path, task: int, out: Path) -> int:
    return main(["convert-2020", str(archive), "--task", str(task), "--out", str(out)])


def test_task_02_lung_archive(tmp_path, caplog):
    out = tmp_path / "data" / "task_02"
    assert convert(lung_archive(tmp_path / "archive"), 2, out) == 0
    assert sorted(p.name for p in (out / "images").iterdir())[:2] == ["img0001_fixed.nii.gz", "img0001_moving.nii.gz"]
    task = load_task(out)
    assert task.layout == Layout.L2R2020 and task.intra_patient and not task.problems
    assert task.pairs["val"] == (Pair("0003_0000", "0003_0001"),)
    assert Pair("0001_0000", "0001_0001") in task.pairs["train"]
    # exhale is the fixed image (the 2020 convention); values copied unchanged (HU + 1024)
    assert load_nifti(task.case("0002_0000").image)[0].max() == 1002.0
    assert load_nifti(task.case("0002_0001").image)[0].max() == 2002.0
    assert task.case("0001_0000").mask is not None and task.case("0001_0000").keypoints is None
    assert sorted(p.name for p in (out / "keypoints_2020").iterdir()) == ["case_001.csv", "case_002.csv", "case_003.csv"]
    assert "keypoints_2020" in caplog.text and "readme.txt" in caplog.text
    assert json.loads((out / "task.json").read_text())["name"] == "task_02"


def test_task_03_abdomen_archive(tmp_path):
    out = tmp_path / "task_03"
    assert convert(abdomen_archive(tmp_path / "archive"), 3, out) == 0
    task = load_task(out)
    assert sorted(task.cases) == ["0001_0000", "0002_0000", "0004_0000"] and not task.problems
    assert task.pairs["val"] == (Pair("0002_0000", "0004_0000"),)
    assert task.labels == {i: f"label {i}" for i in range(1, 14)}
    assert load_nifti(task.case("0004_0000").label, dtype=None)[0].max() == 4


def test_task_04_hippocampus_archive_with_test_images(tmp_path):
    out = tmp_path / "task_04"
    assert convert(hippocampus_archive(tmp_path / "archive"), 4, out) == 0
    task = load_task(out)
    assert task.case("0007_0000").split == "test" and task.case("0007_0000").label is None
    assert task.pairs["test"] == (Pair("0007_0000", "0001_0000"),) and not task.problems


@pytest.mark.parametrize("name", ["task_3", "Task03", "abdomen"])
def test_the_output_must_be_named_task_0n(tmp_path, capsys, name):
    assert convert(abdomen_archive(tmp_path / "archive"), 3, tmp_path / name) == 1
    assert "must be named task_03" in capsys.readouterr().err
    assert not (tmp_path / name).exists()


def test_nothing_is_written_over_a_non_empty_folder_or_from_an_archive_of_another_task(tmp_path, capsys):
    out = tmp_path / "task_03"
    (out / "images").mkdir(parents=True)
    assert convert(abdomen_archive(tmp_path / "archive"), 3, out) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert convert(tmp_path / "archive", 2, tmp_path / "task_02") == 1  # an abdomen archive read as task 2
    assert "no image of the 2020 task 2 found" in capsys.readouterr().err
    assert not (tmp_path / "task_02").exists() and not list(tmp_path.glob(".task_0*"))


def test_two_archive_files_for_one_target_are_listed(tmp_path, capsys):
    archive = abdomen_archive(tmp_path / "archive")
    _nifti(archive / "copy" / "img" / "img0001.nii.gz", 5.0)
    assert convert(archive, 3, tmp_path / "task_03") == 1
    err = capsys.readouterr().err
    assert "images/img0001.nii.gz:" in err and "copy/img/img0001.nii.gz" in err
    assert not (tmp_path / "task_03").exists()


def test_task_1_is_refused_by_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        convert(tmp_path, 1, tmp_path / "task_01")
    assert exc.value.code == 2
