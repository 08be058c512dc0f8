"""``predict`` writes what the task's evaluator reads: the rule set's file names (LUMIR's short
names, ReMIND2Reg's long ones), float32 channel-last voxel fields with an identity header, and
LUMIR's [0, 255] images are normalised like any other MR (no special flag).

On the demo LUMIR and ReMIND2Reg tasks with the LapIRN authors' published weights as a run folder
(``import-weights``: no training); ``evaluate -d`` alone scores what ``predict`` wrote.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from evaluation.evaluate import evaluate
from learn2reg import rules as rulesets
from learn2reg.io import Geometry, load_nifti, save_nifti
from learn2reg.task import load_task
from pipeline.cli import main
from pipeline.config import PreprocessConfig
from pipeline.data.preprocess import load_image, network_image
from pipeline.demo.tasks import write_demo
from pipeline.training.import_weights import AUTHORS_PREPROCESS
from tests.paths import REPO


@pytest.fixture(scope="module")
def lumir_remind(tmp_path_factory) -> dict[str, Path]:
    """The demo LUMIR (2 training images) and ReMIND2Reg (1 training patient) tasks, the authors'
    published weights as a run folder, and each task predicted once into ``sub_<key>``."""
    root = tmp_path_factory.mktemp("rules")
    found = {"LUMIR": write_demo(root, tasks=("LUMIR",), subjects=2)[0], "ReMIND": write_demo(root, tasks=("ReMIND",), subjects=1)[0]}
    assert main(["import-weights", str(REPO / "weights" / "LapIRN_disp_fea7.pth"), "--out", str(root / "run")]) == 0
    found["run"] = root / "run"
    for key in ("LUMIR", "ReMIND"):
        found[f"sub_{key}"] = root / f"sub_{key}"
        assert main(["predict", "--data", str(found[key]), "--run", str(found["run"]), "--out", str(found[f"sub_{key}"]), "--device", "cpu"]) == 0
    return found


def _fields(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("disp_*"))


@pytest.mark.parametrize(("key", "rules"), [("LUMIR", "lumir25"), ("ReMIND", "remind2reg")])
def test_predict_writes_the_names_its_rules_read_and_evaluate_d_scores_them(lumir_remind, key, rules):
    task = load_task(lumir_remind[key])
    sub = lumir_remind[f"sub_{key}"]
    assert task.rules == rules
    pairs = task.pairs["val"]
    wanted = sorted(rulesets.disp_name(rules, p.fixed, p.moving) for p in pairs)
    assert _fields(sub) == wanted and all(rulesets.disp_candidates(rules, p.fixed, p.moving) for p in pairs)
    if key == "LUMIR":
        assert wanted[0] == f"disp_{pairs[0].fixed[:4]}_{pairs[0].moving[:4]}.nii.gz"  # short: equal modalities
    else:
        assert all(name.count("_") == 4 for name in wanted)  # disp_SSSS_0000_SSSS_000M: long only
    shape = task.shape
    for name in wanted:
        image = nib.load(sub / name)
        assert image.get_data_dtype() == np.float32 and image.shape == (*shape, 3)  # channel-last
        np.testing.assert_array_equal(image.affine, Geometry.identity(shape).affine_ras)  # as for every task; evaluators ignore it
        assert tuple(image.header.get_zooms()) == (1.0, 1.0, 1.0, 1.0)
        assert np.isfinite(np.asarray(image.dataobj)).all()
    assert json.loads((sub / "predict_config.json").read_text())["rules"] == rules
    result = evaluate(sub, task.root, workers=1)
    assert result["rules"] == rules and len(result["cases"]) == len(pairs)
    assert "TRE_lm" in result["aggregates"]


def test_rules_override_the_names_and_a_folder_of_other_names_is_refused(lumir_remind, tmp_path, capsys):
    """``--rules l2r`` on a LUMIR task: L2R's long names; into a folder of LUMIR's names: refused,
    naming --rules, nothing changed."""
    data, run = lumir_remind["LUMIR"], lumir_remind["run"]
    sub = tmp_path / "sub"
    shutil.copytree(lumir_remind["sub_LUMIR"], sub)
    before = {p.name: p.read_bytes() for p in sub.iterdir()}
    argv = ["predict", "--data", str(data), "--run", str(run), "--out", str(sub), "--device", "cpu", "--rules", "l2r"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "another configuration: --rules was 'lumir25', now 'l2r'" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in sub.iterdir()} == before
    assert main(argv[:6] + [str(tmp_path / "l2r"), *argv[7:]]) == 0
    task = load_task(data)
    assert _fields(tmp_path / "l2r") == sorted(f"disp_{p.fixed}_{p.moving}.nii.gz" for p in task.pairs["val"])


@pytest.mark.parametrize("key", ["LUMIR", "ReMIND"])
def test_package_zips_what_predict_wrote_as_the_organisers_ask(lumir_remind, tmp_path, key, capsys):
    """predict -> package -> unzip: the evaluator scores the unpacked folder as the predicted one."""
    sub, out = lumir_remind[f"sub_{key}"], tmp_path / f"{key.lower()}_val.zip"
    assert main(["package", "--data", str(lumir_remind[key]), "--submission", str(sub), "--out", str(out)]) == 0
    assert "left out (our records): predict_config.json, runtimes.json" in capsys.readouterr().out
    prefix = f"{key.lower()}_val/" if key == "LUMIR" else ""  # LUMIR: folder.zip/folder/; ReMIND2Reg: the top level
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == [prefix + name for name in _fields(sub)]
        zf.extractall(tmp_path / "unpacked")
    unpacked = evaluate(tmp_path / "unpacked" / prefix, lumir_remind[key], workers=1)
    assert json.dumps(unpacked) == json.dumps(evaluate(sub, lumir_remind[key], workers=1))


# ------------------------------------------------------------------- [0, 255] images (LUMIR ships uint8)


@pytest.mark.parametrize("cfg", [PreprocessConfig(), AUTHORS_PREPROCESS], ids=["percentile-99.5", "min-max"])
def test_uint8_images_in_0_255_are_normalised_as_the_same_image_in_0_1(tmp_path, cfg):
    """LUMIR's images are uint8 in [0, 255] (its baselines divide by 255). Our normalisation,
    [min, percentile] -> [0, 1], is scale-free: the stored uint8 image gives the network the same
    input as the image divided by 255 (the authors' min-max, percentile 100, *is* /255 when the
    image spans 0..255), background 0, nothing above 1."""
    rng = np.random.default_rng(0)
    image = np.zeros((12, 10, 8), np.uint8)
    image[2:10, 2:8, 2:6] = rng.integers(1, 256, size=(8, 6, 4))
    image[5, 5, 5] = 255
    save_nifti(tmp_path / "LUMIRMRI_0001_0000.nii.gz", image, Geometry.identity(image.shape))
    read, _ = load_image(tmp_path / "LUMIRMRI_0001_0000.nii.gz")
    assert read.dtype == np.float32 and read.max() == 255.0 and load_nifti(tmp_path / "LUMIRMRI_0001_0000.nii.gz", dtype=None)[0].dtype == np.uint8
    stored, divided = network_image(read, cfg), network_image(image / 255.0, cfg)
    np.testing.assert_allclose(stored, divided, atol=1e-6)
    assert stored[0, 0, 0] == 0.0 and stored.max() == pytest.approx(1.0) and stored.min() >= 0.0
    if cfg.percentile == 100.0:
        np.testing.assert_allclose(stored, image / 255.0, atol=1e-6)
