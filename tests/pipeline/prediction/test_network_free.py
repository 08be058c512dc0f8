"""Registration without a trained network (``predict.network`` "none", ``predict --config``): the
ReMIND2Reg-like demo task (ultrasound fixed, ceT1/T2 moving, true field known) through the real
prediction path; the recipe lowers the landmark error well below the zero field's, no fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.evaluate import evaluate
from evaluation.initial import evaluate_initial
from learn2reg.contract import disp_filename_l2r, jacobian_determinant
from learn2reg.io import DataError, load_nifti, read_json
from learn2reg.submission import read_manifest
from learn2reg.task import load_task
from pipeline.affine.fov import is_ultrasound
from pipeline.config import config_from_dict
from pipeline.demo.current import REMIND, generate_remind
from pipeline.demo.tasks import write_current
from pipeline.prediction.predict import predict
from pipeline.training.train import train
from tests.paths import REPO

PAIRS = ("0003_0000<--0003_0001", "0004_0000<--0004_0001", "0003_0000<--0003_0002", "0004_0000<--0004_0002")
FAST = {"predict": {"network": "none", "instance_opt_steps": 3, "instance_opt_levels": 2, "instance_opt_points": 4096}}


@pytest.fixture(scope="module")
def remind(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("remind") / REMIND.name
    write_current("ReMIND", generate_remind(seed=0), root)  # validation patients 0003, 0004
    return root


def _config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(raw))
    return path


def test_network_free_predict_writes_every_field_and_its_runtimes_without_a_run(remind, tmp_path):
    out = tmp_path / "sub"
    assert predict(remind, out, None, "val", device="cpu", config_file=_config(tmp_path, FAST)) == 0
    manifest = read_manifest(out / "runtimes.json")
    assert set(manifest["runtimes"]) == set(PAIRS) and manifest["checkpoint"] == "network-free (instance optimisation)"
    for key, times in manifest["runtimes"].items():
        assert times["network_s"] == 0 and times["instance_opt_s"] > 0 and times["total_s"] >= times["instance_opt_s"]
        u, _ = load_nifti(out / disp_filename_l2r(*key.split("<--")))
        assert u.shape == (64, 64, 64, 3) and u.dtype == np.float32 and np.isfinite(u).all()
        assert np.abs(u).max() > 0.01 and (jacobian_determinant(u) > 0).all()
    record = read_json(out / "predict_config.json")
    assert record["config"]["predict"]["network"] == "none" and record["checkpoint"] == manifest["checkpoint"]
    # the same configuration again: nothing to do; without instance optimisation: the zero field, affine-only
    assert predict(remind, out, None, "val", device="cpu", config_file=_config(tmp_path, FAST)) == 0
    zero = {"predict": {"network": "none"}}
    assert predict(remind, tmp_path / "zero", None, "val", device="cpu", config_file=_config(tmp_path, zero)) == 0
    assert read_manifest(tmp_path / "zero" / "runtimes.json")["checkpoint"] == "affine-only"
    assert not np.any(load_nifti(tmp_path / "zero" / disp_filename_l2r("0003_0000", "0003_0001"))[0])


def test_the_ultrasound_is_recognised_so_its_fan_border_stays_out_of_the_similarity(remind):
    task = load_task(remind)
    assert task.modality["0"] == "3D iUS" and is_ultrasound(task, task.case("0003_0000"))
    assert not is_ultrasound(task, task.case("0003_0001")) and not is_ultrasound(task, task.case("0003_0002"))


def test_a_network_configuration_needs_a_run_and_a_network_free_one_does_not_train(remind, tmp_path):
    with pytest.raises(DataError, match='the configuration uses a network .*set predict.network to "none"'):
        predict(remind, tmp_path / "sub", None, "val", device="cpu", config_file=_config(tmp_path, {"predict": {"instance_opt_steps": 2}}))
    with pytest.raises(DataError, match="network-free .*there is no network to train"):
        train(remind, config_from_dict(FAST), tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_remind2reg_recipe_lowers_the_landmark_error_well_below_the_zero_field(remind, tmp_path):
    out = tmp_path / "recipe"
    assert predict(remind, out, None, "val", device="cpu", config_file=REPO / "configs" / "l2r_remind2reg.json") == 0
    zero = evaluate_initial(remind)["aggregates"]["TRE_lm"]["mean"]
    result = evaluate(out, remind, workers=1)
    tre = result["aggregates"]["TRE_lm"]["mean"]
    assert zero > 6.5 and tre < 0.35 * zero  # measured 6.94 -> 1.56 mm (seed 0; bench/results/network_free_cpu.md)
    assert result["rules"] == "remind2reg"  # its num_foldings is 0 by construction: the folds are counted here
    for key in PAIRS:  # no folded voxel: det(I + grad u) > 0 everywhere, on the fields as written
        assert (jacobian_determinant(load_nifti(out / disp_filename_l2r(*key.split("<--")))[0]) > 0).all()


def test_register_takes_a_network_free_configuration_without_a_run(remind, tmp_path, capsys):
    """``register --config CFG``: the single-pair command registers with the configuration alone (the
    same field as ``predict --config`` writes for that pair), records the configuration, and refuses
    a configuration with a network (it needs --run) and --run with --config together (usage, exit 2)."""
    from pipeline.cli import main

    task = load_task(remind)
    fixed, moving = task.case("0003_0000").image, task.case("0003_0001").image
    cfg = _config(tmp_path, FAST)
    out = tmp_path / "one"
    assert main(["register", "--fixed", str(fixed), "--moving", str(moving), "--config", str(cfg), "--out", str(out), "--device", "cpu", "--no-report"]) == 0
    record = read_json(out / "register.json")
    assert record["config"] == str(cfg.resolve()) and record["run"] is None
    assert record["checkpoint"] == "network-free (instance optimisation)"
    u, _ = load_nifti(out / "disp.nii.gz")
    assert predict(remind, tmp_path / "sub", None, "val", device="cpu", config_file=cfg) == 0
    expected, _ = load_nifti(tmp_path / "sub" / disp_filename_l2r("0003_0000", "0003_0001"))
    np.testing.assert_allclose(u, expected, atol=1e-5)  # the same registration, one pair
    network = _config(tmp_path, {"predict": {"network": "lapirn"}})
    capsys.readouterr()
    assert main(["register", "--fixed", str(fixed), "--moving", str(moving), "--config", str(network), "--out", str(tmp_path / "n"), "--device", "cpu"]) == 1
    assert "needs --run" in capsys.readouterr().err and not (tmp_path / "n" / "disp.nii.gz").exists()
    with pytest.raises(SystemExit) as exc:
        main(["register", "--fixed", str(fixed), "--moving", str(moving), "--config", str(cfg), "--run", str(tmp_path), "--out", str(tmp_path / "b")])
    assert exc.value.code == 2
