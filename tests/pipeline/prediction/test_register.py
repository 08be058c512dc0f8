"""The single-pair command (``python -m pipeline register``): a tiny trained run registers two
images without a task folder; the outputs lie on the fixed grid and agree with the contract;
bad input is named (exit 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from learn2reg.contract import warp, warp_labels
from learn2reg.io import DataError, Geometry, load_nifti, save_nifti
from pipeline.cli import main
from pipeline.prediction.register import register
from tests.pipeline.training.test_train import SHAPE, trained_blob_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run and the task it was trained on."""
    return trained_blob_run(tmp_path_factory.mktemp("register"))


def files(task, subject: int):
    stem = f"Blob_{subject:04d}_0000.nii.gz"
    return task / "imagesTr" / stem, task / "labelsTr" / stem


def test_register_writes_the_field_warped_image_labels_and_report(trained, tmp_path):
    task, run = trained
    (fixed, fixed_label), (moving, moving_label) = files(task, 4), files(task, 5)
    out = tmp_path / "out"
    written = register(fixed, moving, run, out, fixed_label, moving_label, device="cpu", save_jacobian=True)
    assert set(written) == {"field", "warped", "warped_labels", "jacobian", "report", "record"}
    assert all(p.is_file() for p in written.values())
    u, geometry = load_nifti(out / "disp.nii.gz")
    assert u.shape == SHAPE + (3,) and u.dtype == np.float32 and np.isfinite(u).all()
    assert geometry == load_nifti(fixed)[1]
    moving_image, moving_labels = load_nifti(moving)[0], load_nifti(moving_label, dtype=None)[0]
    np.testing.assert_array_equal(load_nifti(out / "warped.nii.gz")[0], warp(moving_image, u))
    np.testing.assert_array_equal(load_nifti(out / "warped_labels.nii.gz", dtype=None)[0], warp_labels(moving_labels, u))
    page = (out / "report.html").read_text()
    assert '<section id="dice">' in page and '<section id="jacobian">' in page
    record = json.loads((out / "register.json").read_text())
    assert record["checkpoint"].endswith("best.pt") and record["runtimes"]["network_s"] > 0
    assert record["outputs"]["field"] == "disp.nii.gz"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    # the moving labels alone (an atlas): warped labels, a report without Dice; refused over the first
    # registration unless overwrite, then the older outputs are removed
    with pytest.raises(DataError, match="already exist; pass --overwrite to replace them"):
        register(fixed, moving, run, out, None, moving_label, device="cpu")
    again = register(fixed, moving, run, out, None, moving_label, device="cpu", overwrite=True)
    assert set(again) == {"field", "warped", "warped_labels", "report", "record"} and not (out / "jacobian_det.nii.gz").exists()
    assert '<section id="dice">' not in (out / "report.html").read_text()
    with pytest.raises(DataError, match=f"{fixed_label}: a fixed label map alone"):
        register(fixed, moving, run, out, fixed_label, None, device="cpu", overwrite=True)


def test_the_command_line_names_a_missing_file(trained, tmp_path, capsys):
    task, run = trained
    fixed, _ = files(task, 4)
    missing = tmp_path / "nowhere.nii.gz"
    code = main(["register", "--fixed", str(fixed), "--moving", str(missing), "--run", str(run), "--out", str(tmp_path / "o"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and f"error: {missing}: file not found" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    code = main(["register", "--fixed", str(fixed), "--moving", str(fixed), "--run", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 1 and "not a run folder" in capsys.readouterr().err


def test_different_grids_need_affine_pre_alignment(trained, tmp_path, capsys):
    task, run = trained
    fixed, _ = files(task, 4)
    image, geometry = load_nifti(files(task, 5)[0])
    cropped = tmp_path / "cropped.nii.gz"
    save_nifti(cropped, image[1:-1, :, 2:], Geometry.identity((SHAPE[0] - 2, SHAPE[1], SHAPE[2] - 2)))
    args = ["register", "--fixed", str(fixed), "--moving", str(cropped), "--run", str(run), "--device", "cpu", "--no-report"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert f"error: {cropped}: shape (18, 16, 22) differs from the fixed image (20, 16, 24)" in err
    assert main([*args, "--out", str(tmp_path / "b"), "--affine", "rigid"]) == 0
    u, _ = load_nifti(tmp_path / "b" / "disp.nii.gz")
    assert u.shape == SHAPE + (3,)  # the fixed grid, whatever the moving grid
    np.testing.assert_array_equal(load_nifti(tmp_path / "b" / "warped.nii.gz")[0], warp(image[1:-1, :, 2:], u))
