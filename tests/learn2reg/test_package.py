"""``python -m pipeline package``: a submission folder checked against its task and zipped as its
organisers ask, through the real command line (the organisers' parity cases as tasks, their
fields as submissions; bad folders: ``tests/test_bad_input.py``).

Zip layouts (``learn2reg.package``): LUMIR ``NAME.zip/NAME/disp_*.nii.gz``; L2R and ReMIND2Reg the
fields at the top level; 2020 ``task_0N/disp_*.npz``. Our records stay out of the zip.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from evaluation.evaluate import evaluate
from evaluation.initial import write_zero_submission
from learn2reg.io import load_nifti, save_nifti
from learn2reg.package import check_package
from pipeline.cli import main
from tests.learn2reg.test_task_current import CASES, remind_task
from tests.pipeline.training.test_train import make_blob_task


def lumir_task(tmp_path: Path) -> Path:
    """The LUMIR 2024 parity case as a task folder (its dataset json, images, labels, landmarks, configs)."""
    root = tmp_path / "LUMIR"
    shutil.copytree(CASES / "lumir24", root, ignore=shutil.ignore_patterns("disp"))
    return root


def submission(tmp_path: Path, source: Path, records: bool = True) -> Path:
    """A copy of a folder of fields, with predict's records beside them when ``records``."""
    sub = tmp_path / "sub"
    shutil.copytree(source, sub)
    if records:
        (sub / "runtimes.json").write_text(json.dumps({"device": "cpu", "checkpoint": "x", "config_hash": "h", "runtimes": {}}))
        (sub / "predict_config.json").write_text("{}")
        (sub / "report").mkdir()
        (sub / "report" / "index.html").write_text("<html></html>")
    return sub


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["package", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def members(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def test_lumir_validation_zip_holds_a_folder_named_as_the_zip(tmp_path, capsys):
    task, sub = lumir_task(tmp_path), submission(tmp_path, CASES / "lumir24" / "disp" / "smooth")
    out = tmp_path / "upload" / "my_lumir_val.zip"
    code, stdout, _ = run(capsys, "--data", str(task), "--submission", str(sub), "--out", str(out))
    assert code == 0
    names = sorted(p.name for p in sub.glob("disp_*"))
    assert members(out) == [f"my_lumir_val/{n}" for n in names]  # LUMIR's folder.zip/folder/disp_FFFF_MMMM.nii.gz
    with zipfile.ZipFile(out) as zf:
        assert all(zf.read(f"my_lumir_val/{n}") == (sub / n).read_bytes() for n in names)  # the files as they are
    assert "6 field(s) of LUMIR (val pairs, lumir24 rules)" in stdout and "LUMIR's validation instructions" in stdout
    assert "left out (our records): predict_config.json, report/, runtimes.json" in stdout
    # unpacked, the evaluator scores it as the folder itself
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "unpacked")
    unpacked, original = (evaluate(folder, task, workers=1) for folder in (tmp_path / "unpacked" / "my_lumir_val", sub))
    assert json.dumps(unpacked) == json.dumps(original)  # (NaN DSC of absent labels: compared as text)


def test_lumir_accepts_channel_first_fields_as_its_evaluator_does(tmp_path, capsys):
    task, sub = lumir_task(tmp_path), submission(tmp_path, CASES / "lumir24" / "disp" / "smooth_cf", records=False)
    assert run(capsys, "--data", str(task), "--submission", str(sub), "--out", str(tmp_path / "cf.zip"))[0] == 0


@pytest.mark.parametrize(("field_set", "extension"), [("smooth", ".nii.gz"), ("npz", ".npz")])
def test_remind2reg_zip_holds_the_long_names_at_its_top_level(tmp_path, capsys, field_set, extension):
    """ReMIND2Reg reads /input/disp_{case}_0000_{case}_000{1|2}; its npz (float16, arr_0) too."""
    task = remind_task(tmp_path)
    sub = submission(tmp_path, CASES / "remind" / "disp" / field_set)
    out = tmp_path / "remind.zip"
    code, stdout, _ = run(capsys, "--data", str(task), "--submission", str(sub), "--out", str(out))
    assert code == 0 and "remind2reg rules" in stdout and "top level" in stdout
    cases = ("0099_0000_0099_0001", "0099_0000_0099_0002", "0100_0000_0100_0001", "0100_0000_0100_0002", "0101_0000_0101_0001")
    assert members(out) == [f"disp_{c}{extension}" for c in cases]


def test_a_2020_task_zips_its_task_folder(tmp_path, capsys):
    task = make_blob_task(tmp_path / "task_04", layout="l2r2020")
    sub = write_zero_submission(task, tmp_path / "sub")
    assert run(capsys, "--data", str(task), "--submission", str(sub), "--out", str(tmp_path / "s.zip"))[0] == 0
    assert members(tmp_path / "s.zip") == ["task_04/disp_0004_0005.npz"]


def test_rules_override_the_task_folders(tmp_path, capsys):
    """--rules l2r on a LUMIR folder: L2R's names are wanted (the short ones are refused for 0000 <- 0000)."""
    task = lumir_task(tmp_path)
    sub = write_zero_submission(task, tmp_path / "zero", rules="l2r")
    assert sorted(p.name for p in sub.iterdir())[0] == "disp_3455_0000_3454_0000.nii.gz"
    code, stdout, _ = run(capsys, "--data", str(task), "--submission", str(sub), "--out", str(tmp_path / "l2r.zip"), "--rules", "l2r")
    assert code == 0 and members(tmp_path / "l2r.zip")[0] == "disp_3455_0000_3454_0000.nii.gz"
    code, _, err = run(capsys, "--data", str(task), "--submission", str(sub), "--out", str(tmp_path / "lumir.zip"))
    assert code == 1 and "expected disp_3455_3454.nii.gz (lumir24 rules); found disp_3455_0000_3454_0000.nii.gz" in err


def test_every_problem_is_listed_at_once(tmp_path):
    task = remind_task(tmp_path)
    sub = submission(tmp_path, CASES / "remind" / "disp" / "smooth", records=False)
    (sub / "disp_0099_0000_0099_0001.nii.gz").unlink()
    u, geometry = load_nifti(sub / "disp_0100_0000_0100_0001.nii.gz")
    u[0, 0, 0, 0] = np.nan
    save_nifti(sub / "disp_0100_0000_0100_0001.nii.gz", u, geometry)
    (sub / "notes.txt").write_text("x")
    _, problems = check_package(task, sub, tmp_path / "x.zip")
    assert len(problems) == 3
    assert [p.split(":")[0] for p in problems] == [str(sub), str(sub / "disp_0100_0000_0100_0001.nii.gz"), str(sub / "notes.txt")]
