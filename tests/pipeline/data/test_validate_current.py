"""``validate`` and ``summary`` on the layouts of 2024-2026: accepted as shipped, ground truth checked."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from learn2reg.io import load_nifti, save_nifti, write_points
from learn2reg.task import load_task
from pipeline.cli import main
from pipeline.data.summary import format_summary, provides, summarize
from pipeline.data.validate import validate_task
from tests.learn2reg.test_task_current import CASES, oncoreg_task, remind_task


def lumir_copy(tmp_path: Path, folder: str = "lumir24") -> Path:
    root = tmp_path / folder
    shutil.copytree(CASES / folder, root, ignore=shutil.ignore_patterns("disp"))
    return root


@pytest.mark.parametrize("folder", ["lumir24", "lumir25"])
def test_lumir_folders_validate_clean_and_say_what_they_provide(folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = CASES / folder
    assert validate_task(root) == []  # imagesVal named only by 'validation', image-only training: no warning
    assert main(["validate", "--no-progress", str(root)]) == 0
    out, err = capsys.readouterr()
    n_images = {"lumir24": 8, "lumir25": 13}[folder]
    assert err == "" and out.splitlines() == [
        f"OK {root}",
        f"  rule set: {folder} (images LUMIRMRI_SSSS_MMMM)",
        f"  training: 2 images, image only: no labels, masks or points (normal for {folder}: unsupervised training); 2 training pairs (inter-patient)",
        f"  validation: {6 if folder == 'lumir24' else 8} pairs ('validation') of {n_images} images (imagesVal): "
        f"labels {n_images}/{n_images} images, landmark volumes {n_images}/{n_images} images",
    ]


def _regrid(path: Path, spacing: tuple[float, float, float] | None = None, shape: tuple[int, int, int] | None = None) -> None:
    """Rewrite a volume with another spacing (same origin and direction) or as zeros of another shape."""
    data, geometry = load_nifti(path, dtype=None)
    if shape is not None:
        data = np.zeros(shape, data.dtype)
    save_nifti(path, data, dataclasses.replace(geometry, shape=data.shape, spacing=spacing or geometry.spacing))


def test_landmark_volumes_are_checked_as_label_maps_on_the_image_grid(tmp_path: Path) -> None:
    root = lumir_copy(tmp_path)
    other_grid = root / "landmarksVal" / "LUMIRMRI_3485_0000.nii.gz"
    _regrid(other_grid, spacing=(1.0, 1.0, 1.5))
    smaller = root / "landmarksVal" / "LUMIRMRI_3456_0000.nii.gz"
    _regrid(smaller, shape=(20, 24, 19))
    fractional = root / "landmarksVal" / "LUMIRMRI_3454_0000.nii.gz"
    data, geometry = load_nifti(fractional)
    save_nifti(fractional, data + 0.5 * (data > 0), geometry)
    found = {(p.path.name, p.message) for p in validate_task(root) if p.is_error}
    assert (other_grid.name, "landmark volume spacing (1, 1, 1.5) mm differs from its image's spacing (1, 1, 1) mm (tolerance 0.0001 mm)") in found
    assert (smaller.name, "landmark volume shape (20, 24, 19) differs from its image's shape (20, 24, 20)") in found
    assert any(name == fractional.name and "non-integer voxel(s)" in message for name, message in found)
    assert len(found) == 3


def test_landmark_ids_missing_in_the_moving_volume_are_a_warning(tmp_path: Path) -> None:
    root = lumir_copy(tmp_path)
    moving = root / "landmarksVal" / "LUMIRMRI_3484_0000.nii.gz"
    data, geometry = load_nifti(moving, dtype=None)
    data[data == 3] = 0
    save_nifti(moving, data, geometry)
    (root / "landmarksVal" / "LUMIRMRI_3457_0000.nii.gz").unlink()  # the fixed image of 3457 <-- 3456 has none
    problems = [str(p) for p in validate_task(root)]
    assert problems == [
        f"{root.resolve() / 'landmarksVal'}: warning: no landmark volume file for 1 of 8 images (e.g. 3457_0000)",
        f"{root.resolve() / 'landmarksVal' / 'LUMIRMRI_3456_0000.nii.gz'}: warning: val pair 3457_0000<--3456_0000: "
        "the fixed case has no landmark volume",
        f"{moving.resolve()}: warning: val pair 3485_0000<--3484_0000: landmark id(s) [3] of the fixed volume "
        "LUMIRMRI_3485_0000.nii.gz are absent here (the organisers' TRE is NaN for this pair)",
    ]


def test_remind2reg_folder_validates_and_its_pairs_are_checked(tmp_path: Path) -> None:
    root = remind_task(tmp_path)
    shutil.rmtree(root / "masksTr")  # the parity case's masks hold 2s on purpose
    assert validate_task(root) == []
    write_points(root / "landmarksTr" / "ReMIND2Reg_0100_0002.csv", np.ones((4, 3)))
    assert [p.message for p in validate_task(root)] == [
        "val pair 0100_0000<--0100_0002: 6 landmarks rows, but moving file "
        f"{root.resolve() / 'landmarksTr' / 'ReMIND2Reg_0100_0002.csv'} has 4"
    ]


def test_oncoreg_pair_folders_are_checked(tmp_path: Path) -> None:
    root = oncoreg_task(tmp_path)
    assert validate_task(root) == []
    bad = root / "keypoints02Tr" / "OncoReg_0002_0000.csv"
    bad.write_text("1,2\n")
    (root / "keypoints01Tr" / "OncoReg_0001_0000.csv").unlink()
    problems = {(str(p.path), p.message, p.severity) for p in validate_task(root)}
    assert problems == {
        (str(bad.resolve()), "line 1 has 2 columns, expected 3", "error"),
        (str((root / "keypoints01Tr" / "OncoReg_0001_0001.csv").resolve()),
         "training pair 0001_0001<--0001_0000: the moving case has no keypoints file", "warning"),
    }


def test_summary_rows_for_the_new_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    roots = [CASES / "lumir25", remind_task(tmp_path), oncoreg_task(tmp_path)]
    rows = [summarize(load_task(root)) for root in roots]
    assert [row["rules"] for row in rows] == ["lumir25", "remind2reg", "l2r"]
    assert (rows[0]["images_train"], rows[0]["images_val"], rows[0]["landmark_volumes"]) == (2, 13, 13)
    assert [row["train_provides"] for row in rows] == ["image only", "labels, masks, landmarks", "keypoints"]
    assert [row["val_provides"] for row in rows] == ["labels, landmark volumes", "labels, masks, landmarks", "keypoints"]
    table = format_summary(rows)
    assert "rule set             lumir25" in table and "landmark volumes     yes (13/15)" in table
    assert main(["summary", *map(str, roots)]) == 0
    assert capsys.readouterr().out.strip() == table
    assert provides(load_task(roots[2]))[1] == "training: 3 images (and 3 of the evaluated pairs), keypoints 2/2 pairs; 2 training pairs (intra-patient)"
