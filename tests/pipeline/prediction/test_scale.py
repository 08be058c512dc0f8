"""No scale trap: a run's network runs at the spacing it was trained at unless told otherwise
(``pipeline.prediction.scale``). An imported run (1 mm) on a 2 mm task gives the same field with
or without ``--input-scale 2``, in ``predict`` and in ``register``; an override that departs from
the trained spacing is warned about by name; runtimes.json and register.json record the grid."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from learn2reg.contract import disp_filename_l2r
from learn2reg.io import Geometry, load_nifti, save_nifti
from learn2reg.submission import read_manifest
from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.prediction import predict as predict_module
from pipeline.prediction.predict import predict
from pipeline.prediction.scale import GridPolicy, TrainedSpacing, network_grid, trained_spacing
from pipeline.training.import_weights import import_weights
from pipeline.training.train import train
from tests.paths import REPO
from tests.pipeline.training.test_train import FAST, SHAPE, make_blob_task

PAIR = ("0004_0000", "0005_0000")
KEY = f"{PAIR[0]}<--{PAIR[1]}"
FINE = (39, 31, 47)  # SHAPE at 2 mm brought to 1 mm


def _at_spacing(task: Path, spacing: float) -> Path:
    for folder in ("imagesTr", "labelsTr"):
        for path in (task / folder).glob("*.nii.gz"):
            arr, _ = load_nifti(path, dtype=None)
            save_nifti(path, arr, Geometry.identity(SHAPE, (spacing,) * 3))
    return task


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale")
    import_weights(REPO / "weights" / "LapIRN_disp_fea7.pth", root / "imported")
    return {"imported": root / "imported", "task2mm": _at_spacing(make_blob_task(root / "task2mm"), 2.0)}


def _field(out: Path) -> np.ndarray:
    return load_nifti(out / disp_filename_l2r(*PAIR))[0]


def test_an_imported_run_on_a_2mm_task_predicts_at_1mm_with_or_without_input_scale_2(setup, tmp_path, caplog):
    base = ["predict", "--run", str(setup["imported"]), "--data", str(setup["task2mm"]), "--device", "cpu"]
    with caplog.at_level(logging.INFO, logger="pipeline.prediction.scale"):
        assert main([*base, "--out", str(tmp_path / "default")]) == 0
    assert "runs at 1x1x1 mm, the spacing it was trained at (imported.json)" in caplog.text
    assert main([*base, "--out", str(tmp_path / "s2"), "--input-scale", "2"]) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.prediction.scale"):
        assert main([*base, "--out", str(tmp_path / "s1"), "--input-scale", "1"]) == 0
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "--input-scale 1: the network runs at 2x2x2 mm, but it was trained at 1x1x1 mm" in warning[0]
    np.testing.assert_array_equal(_field(tmp_path / "default"), _field(tmp_path / "s2"))
    assert np.abs(_field(tmp_path / "default") - _field(tmp_path / "s1")).max() > 1e-3
    grids = {name: read_manifest(tmp_path / name / "runtimes.json")["network_grid"] for name in ("default", "s2", "s1")}
    assert grids["default"]["rule"] == "the run's trained spacing" and grids["default"]["trained_spacing_mm"] == [1.0, 1.0, 1.0]
    assert grids["default"]["pairs"][KEY] == grids["s2"]["pairs"][KEY] == {"grid": list(FINE), "spacing_mm": [1.0, 1.0, 1.0], "scale": [2.0, 2.0, 2.0]}
    assert grids["s2"]["rule"] == "--input-scale 2" and grids["s1"]["pairs"][KEY]["scale"] == [1.0, 1.0, 1.0]


def test_register_has_the_scale_options_and_records_the_grid(setup, tmp_path, caplog):
    task = setup["task2mm"]
    fixed, moving = (task / "imagesTr" / f"Blob_{c}.nii.gz" for c in PAIR)
    base = ["register", "--fixed", str(fixed), "--moving", str(moving), "--run", str(setup["imported"]), "--device", "cpu", "--no-report"]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    assert main([*base, "--out", str(tmp_path / "s2"), "--input-scale", "2"]) == 0
    with caplog.at_level(logging.WARNING, logger="pipeline.prediction.scale"):
        assert main([*base, "--out", str(tmp_path / "t2"), "--target-spacing", "2"]) == 0
    assert "--target-spacing 2: the network runs at 2x2x2 mm, but it was trained at 1x1x1 mm" in caplog.text
    fields = {n: load_nifti(tmp_path / n / "disp.nii.gz")[0] for n in ("default", "s2", "t2")}
    np.testing.assert_array_equal(fields["default"], fields["s2"])
    assert np.abs(fields["default"] - fields["t2"]).max() > 1e-3
    records = {n: json.loads((tmp_path / n / "register.json").read_text())["network_grid"] for n in fields}
    assert records["default"]["grid"] == records["s2"]["grid"] == list(FINE) and records["default"]["scale"] == [2.0, 2.0, 2.0]
    assert records["t2"]["rule"] == "--target-spacing 2" and records["t2"]["grid"] == list(SHAPE)


def test_a_trained_run_records_its_spacing_and_predicts_on_its_own_grid(tmp_path, monkeypatch):
    task = make_blob_task(tmp_path / "task")
    half = {**FAST, "preprocess": {"half_resolution": True}}
    assert train(task, config_from_dict(half), tmp_path / "run", device="cpu") == 0
    recorded = json.loads((tmp_path / "run" / "dataset.json").read_text())["network_spacing_mm"]
    assert recorded == pytest.approx([19 / 9, 15 / 7, 23 / 11], abs=1e-6)  # corner-aligned half grid
    assert trained_spacing(tmp_path / "run") == TrainedSpacing(tuple(recorded), "dataset.json")
    grids: list = []
    original = predict_module.predict_field
    monkeypatch.setattr(predict_module, "predict_field", lambda model, m, f, *a, **k: grids.append(tuple(f.shape[2:])) or original(model, m, f, *a, **k))
    assert predict(task, tmp_path / "sub", tmp_path / "run", "val", device="cpu") == 0
    assert grids == [(10, 8, 12)]  # its own task: the training grid, unchanged
    assert read_manifest(tmp_path / "sub" / "runtimes.json")["network_grid"]["pairs"][KEY]["grid"] == [10, 8, 12]


@pytest.mark.parametrize("spacing, trained, expected", [
    ((2.0, 2.0, 2.0), (1.0, 1.0, 1.0), (39, 31, 47)),   # a 2 mm task, 1 mm weights: twice as fine
    ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), SHAPE),          # the trained spacing: unchanged
    ((1.03, 1.0, 0.98), (1.0, 1.0, 1.0), SHAPE),        # within 5 %: unchanged
    ((2.0, 1.0, 3.0), (1.0, 1.0, 1.0), (39, 16, 70)),   # anisotropic: per axis
    ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0), (11, 9, 13)),    # a finer task: coarser grid
])
def test_the_default_grid_follows_the_trained_spacing(spacing, trained, expected):
    policy = GridPolicy(TrainedSpacing(trained, "test"))
    assert network_grid(policy, SHAPE, spacing, config_from_dict({})) == expected
    assert policy.last is not None and policy.last["grid"] == list(expected)
    # without a recorded spacing (runs from before it was recorded): the configuration's grid
    assert network_grid(GridPolicy(None), SHAPE, spacing, config_from_dict({})) == SHAPE


def test_a_run_trained_at_a_target_spacing_predicts_at_it(setup, tmp_path, monkeypatch):
    """``preprocess.target_spacing``: training on the 2 mm task at 1 mm (as the published weights
    expect); the run records 1 mm and predicts on the same 1 mm grid without being told."""
    cfg = config_from_dict({**FAST, "preprocess": {"target_spacing": 1.0}})
    assert train(setup["task2mm"], cfg, tmp_path / "run", device="cpu") == 0
    described = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert described["network_spacing_mm"] == [1.0, 1.0, 1.0] and described["network_shape"][PAIR[0]] == list(FINE)
    grids: list = []
    original = predict_module.predict_field
    monkeypatch.setattr(predict_module, "predict_field", lambda model, m, f, *a, **k: grids.append(tuple(f.shape[2:])) or original(model, m, f, *a, **k))
    assert predict(setup["task2mm"], tmp_path / "sub", tmp_path / "run", "val", device="cpu") == 0
    assert grids == [FINE]
