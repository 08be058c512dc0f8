"""The Initial row: the zero field's official numbers, from the data alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.initial import evaluate_initial, main
from learn2reg.io import load_nifti
from tests.pipeline.training.test_train import make_blob_task


def test_initial_dsc_is_the_overlap_of_the_unwarped_labels(tmp_path):
    for layout in ("l2r", "l2r2020"):
        task = make_blob_task(tmp_path / layout, layout=layout)
        folder = "labelsTr" if layout == "l2r" else "labels"
        names = ("Blob_0004_0000", "Blob_0005_0000") if layout == "l2r" else ("img0004", "img0005")
        fixed, moving = (load_nifti(task / folder / f"{n}.nii.gz", np.int32)[0] for n in names)
        expected = np.mean([2 * ((fixed == k) & (moving == k)).sum() / ((fixed == k).sum() + (moving == k).sum()) for k in (1, 2)])
        case = evaluate_initial(task, workers=1)["cases"]["0004_0000<--0005_0000"]
        assert abs(case["DSC"]["mean"] - expected) < 1e-9
        assert case["LogJacDetStd"]["mean"] == 0.0


def test_cli_writes_the_result_and_fails_cleanly(tmp_path, capsys):
    task = make_blob_task(tmp_path / "task")
    assert main(["-d", str(task), "-o", str(tmp_path / "initial.json")]) == 0
    assert (tmp_path / "initial.json").is_file()
    assert main(["-d", str(tmp_path / "missing"), "-o", str(tmp_path / "x.json")]) == 1
    assert "task folder not found" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_a_lumir_config_gets_zero_fields_under_its_own_file_names():
    """LUMIR wants disp_FIXED_MOVING.nii.gz (short) for its 0000 <- 0001 pairs: the zero fields are
    written under the names of the rule set the config selects, so the organisers' config just works."""
    cases = Path(__file__).resolve().parents[1] / "fixtures" / "organisers" / "cases" / "lumir25"
    result = evaluate_initial(cases, config=cases / "LUMIR25_VAL_MultiModal_Segmentation_evaluation_config.json")
    assert result["rules"] == "lumir25" and result["eval_version"] == "3.0"
    assert list(result["cases"]) == ["4024_0000<--4033_0001", "4025_0000<--4034_0001"]
    assert result["aggregates"]["Non-diffeomorphic Volumes"] == {"mean": 0.0, "std": 0.0, "30": 0.0}
