"""Per-pair visual reports (evaluation.pair_reports.page, evaluation.pair_reports.stage): written for a tiny task
from files only, sections and figures present, the Dice table equal to evaluation.metrics,
folded voxels of a known fold highlighted, bad input named, leaderboard links."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from evaluation import metrics
from evaluation.pair_reports.page import FOLD_COLOUR, SECTIONS, PairInputs, build_report, render_html
from evaluation.pair_reports.stage import (
    main,
    report_from_files,
    report_path,
    task_pair_report,
)
from learn2reg import contract
from learn2reg.io import DataError, Geometry, save_nifti
from learn2reg.task import load_task
from tests.paths import REPO

SHAPE = (16, 12, 14)
NAMES = {1: "kidney", 2: "liver", 3: "absent organ"}
KEY = "0001_0000<--0002_0000"


def blob(centre: tuple[float, ...]) -> np.ndarray:
    """Labels 1 (box) and 2 (smaller box beside it) around ``centre``; label 3 never present."""
    lab = np.zeros(SHAPE, np.uint8)
    c = [int(v) for v in centre]
    lab[c[0] - 3 : c[0] + 2, c[1] - 3 : c[1] + 3, c[2] - 3 : c[2] + 3] = 1
    lab[c[0] + 2 : c[0] + 4, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 2
    return lab


def make_task(root: Path) -> Path:
    """Two labelled cases (current layout), validation pair 0001 <-- 0002 (moving shifted by one voxel)."""
    geom = Geometry.identity(SHAPE, (1.0, 1.5, 2.0))
    for s, centre in ((1, (8, 6, 7)), (2, (9, 6, 7))):
        lab = blob(centre)
        img = (lab * 50.0 + np.random.default_rng(s).normal(0, 2, SHAPE)).astype(np.float32)
        save_nifti(root / "imagesTr" / f"Tiny_{s:04d}_0000.nii.gz", img, geom)
        save_nifti(root / "labelsTr" / f"Tiny_{s:04d}_0000.nii.gz", lab, geom)
    meta = {
        "name": "Tiny", "labels": {"0": {str(k): v for k, v in NAMES.items()}},
        "training": [{"image": f"./imagesTr/Tiny_{s:04d}_0000.nii.gz"} for s in (1, 2)],
        "registration_val": [{"fixed": "./imagesTr/Tiny_0001_0000.nii.gz", "moving": "./imagesTr/Tiny_0002_0000.nii.gz"}],
    }
    (root / "Tiny_dataset.json").write_text(json.dumps(meta))
    return root


def translation(t: tuple[float, float, float]) -> np.ndarray:
    return np.broadcast_to(np.asarray(t, np.float32), SHAPE + (3,)).copy()


@pytest.fixture()
def task(tmp_path: Path) -> Path:
    return make_task(tmp_path / "task")


def write_submission(sub: Path, u: np.ndarray) -> Path:
    save_nifti(sub / contract.disp_filename_l2r("0001_0000", "0002_0000"), u)
    return sub


def fold_field() -> np.ndarray:
    """u_0 = -3 x_0 on planes 0..5, 0 beyond: det = -2 on planes 0..4, positive elsewhere."""
    u = np.zeros(SHAPE + (3,), np.float32)
    u[:6, ..., 0] = -3.0 * np.arange(6)[:, None, None]
    return u


def magenta_pixels(png_b64: str) -> int:
    rgb = (imread(io.BytesIO(base64.b64decode(png_b64)), format="png")[..., :3] * 255).round().astype(int)
    target = [int(FOLD_COLOUR[i : i + 2], 16) for i in (1, 3, 5)]
    return int((rgb == target).all(axis=-1).sum())


def test_the_report_of_a_tiny_task_has_every_section_and_figure(task, tmp_path, capsys):
    sub = write_submission(tmp_path / "sub", translation((1.0, 0.0, 0.0)))
    assert main(["--data", str(task), "--submission", str(sub)]) == 0
    page_path = report_path(sub, "0001_0000", "0002_0000")
    page = page_path.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5  # images, checkerboard, grid, jacobian, labels
    assert all(base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n" for png in images)
    assert "src=\"http" not in page and "<script" not in page  # self-contained
    for name in NAMES.values():
        assert name in page
    numbers = json.loads(page_path.with_suffix(".json").read_text())
    assert numbers["pair"] == KEY and numbers["folded_voxels"] == 0
    index = (sub / "report" / "index.html").read_text()
    assert 'href="0001_0000_0002_0000.html"' in index
    assert json.loads((sub / "report" / "index.json").read_text())["task"] == "Tiny"
    assert not [p for p in sub.rglob("*") if ".tmp" in p.name]  # atomic writes leave no temporaries


def test_the_dice_table_equals_the_evaluator_metrics(task, tmp_path):
    """Before = zero field, after = the field: both exactly metrics.dice of the official label warp."""
    u = translation((1.0, 0.0, 0.0))
    sub = write_submission(tmp_path / "sub", u)
    report = task_pair_report(load_task(task), load_task(task).pairs["val"][0], sub)
    fixed, moving = blob((8, 6, 7)), blob((9, 6, 7))
    ids = (1, 2, 3)
    after = metrics.dice(metrics.label_counts(fixed, moving, contract.warp_labels(moving, u), ids))
    before = metrics.dice(metrics.label_counts(fixed, moving, contract.warp_labels(moving, 0 * u), ids))
    assert [r.label for r in report.dice] == list(ids) and [r.name for r in report.dice] == list(NAMES.values())
    np.testing.assert_array_equal([r.after for r in report.dice], after)
    np.testing.assert_array_equal([r.before for r in report.dice], before)
    assert after[:2] == [1.0, 1.0] and before[0] < 1 and np.isnan(after[2])  # shifted back exactly; 3 is absent
    assert report.dice_after == metrics.nanmean(after) == 1.0
    page = report_path(sub, "0001_0000", "0002_0000").read_text()
    dice_rows = re.findall(r"<tr><td>(\d+)</td><td class=\"name\">.*?</td><td>(.*?)</td><td>(.*?)</td>", page)
    assert dice_rows == [(str(i), f"{b:.3f}" if b == b else "-", f"{a:.3f}" if a == a else "-")
                         for i, b, a in zip(ids, before, after, strict=True)]


def test_folded_voxels_of_a_known_fold_are_counted_and_highlighted():
    fixed = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    folded = build_report(PairInputs(fixed, fixed, fold_field()), "fold")
    slices = folded.slices
    assert slices == (8, 6, 7)  # no labels: the middle
    assert folded.folded_voxels == 5 * SHAPE[1] * SHAPE[2] and folded.voxels == int(np.prod(SHAPE))
    # planes through (8, 6, 7): the axis-0 plane 8 lies beyond the fold; the others cross planes 0..4
    assert folded.folded_in_planes == (0, 5 * SHAPE[2], 5 * SHAPE[1])
    assert magenta_pixels(folded.figures["jacobian"]) > 0
    assert f"{5 * 12 * 14} of {16 * 12 * 14} " in render_html(folded)  # the summary states the count
    smooth = build_report(PairInputs(fixed, fixed, translation((0.5, 0, 0))), "smooth")
    assert smooth.folded_voxels == 0 and magenta_pixels(smooth.figures["jacobian"]) == 0


def test_a_moving_image_on_another_grid_is_read_on_the_fixed_grid_before():
    fixed = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    moving = np.pad(fixed, ((0, 3), (0, 2), (0, 1)))  # larger grid: the fixed image sits at its origin
    report = build_report(PairInputs(fixed, moving, translation((0, 0, 0)), blob((8, 6, 7)), np.pad(blob((8, 6, 7)), ((0, 3), (0, 2), (0, 1)))), "grids")
    assert report.moving_shape == (19, 14, 15) and [r.before for r in report.dice] == [1.0, 1.0]


def test_a_bad_field_shape_is_named(task, tmp_path, capsys):
    sub = write_submission(tmp_path / "sub", np.zeros((16, 12, 13, 3), np.float32))
    field = sub / contract.disp_filename_l2r("0001_0000", "0002_0000")
    with pytest.raises(DataError, match=re.escape(f"{field}: shape 16x12x13x3; expected 16x12x14x3")):
        report_from_files(tmp_path / "r.html", task / "imagesTr/Tiny_0001_0000.nii.gz",
                          task / "imagesTr/Tiny_0002_0000.nii.gz", field)
    assert main(["--data", str(task), "--submission", str(sub)]) == 1
    err = capsys.readouterr().err
    assert f"error: {KEY}: {field}: shape 16x12x13x3" in err and "Traceback" not in err
    assert not report_path(sub, "0001_0000", "0002_0000").exists()
    with pytest.raises(ValueError, match="field must be X x Y x Z x 3"):
        build_report(PairInputs(np.zeros(SHAPE), np.zeros(SHAPE), np.zeros(SHAPE + (2,))), "bad")


def test_missing_field_unknown_pair_and_one_label_map_are_errors(task, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--data", str(task), "--submission", str(tmp_path / "empty")]) == 1
    assert "missing displacement field for 0001_0000<--0002_0000" in capsys.readouterr().err
    sub = write_submission(tmp_path / "sub", translation((0, 0, 0)))
    assert main(["--data", str(task), "--submission", str(sub), "--pairs", "0002_0000,0001_0000"]) == 1
    assert "no val pair 0002_0000,0001_0000" in capsys.readouterr().err
    assert main(["--data", str(task), "--submission", str(sub), "--pairs", "0001_0000,0002_0000", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "0001_0000_0002_0000.html").is_file()
    with pytest.raises(DataError, match="need both label maps"):
        report_from_files(tmp_path / "x.html", task / "imagesTr/Tiny_0001_0000.nii.gz", task / "imagesTr/Tiny_0002_0000.nii.gz",
                          sub / contract.disp_filename_l2r("0001_0000", "0002_0000"), fixed_label=task / "labelsTr/Tiny_0001_0000.nii.gz")


def test_module_entry_point_loads_no_torch(tmp_path):
    code = "\n".join([
        "import runpy, sys",
        f"sys.argv = ['reports', '--data', '{tmp_path / 'none'}', '--submission', '{tmp_path}']",
        "try:",
        "    runpy.run_module('evaluation.pair_reports', run_name='__main__')",
        "finally:",
        "    assert 'torch' not in sys.modules and 'pipeline' not in sys.modules, 'imports torch/pipeline'",
    ])
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "task folder not found" in proc.stderr
