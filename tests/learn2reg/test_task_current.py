"""The layouts of 2024-2026 read into the task model: LUMIR, LUMIR25, ReMIND2Reg, OncoReg.

The organisers' parity cases (``tests/fixtures/organisers/cases``, made by ``make_cases.py`` in the
shipped formats) serve as examples of the files as they are distributed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from learn2reg import dataset
from learn2reg.io import DataError, Geometry, read_json, read_points, save_nifti, write_points
from learn2reg.rules import RULE_SETS, point_folders, rules_for
from learn2reg.task import Pair, load_task
from tests.paths import REPO

CASES = REPO / "tests" / "fixtures" / "organisers" / "cases"
SHAPE = (6, 5, 4)


def _image(path: Path) -> None:
    save_nifti(path, np.zeros(SHAPE, np.float32), Geometry.identity(SHAPE))


# ------------------------------------------------------------------------------- LUMIR, LUMIR25


@pytest.mark.parametrize(("folder", "rules", "n_pairs"), [("lumir24", "lumir24", 6), ("lumir25", "lumir25", 8)])
def test_lumir_folders_read_as_shipped(folder: str, rules: str, n_pairs: int) -> None:
    task = load_task(CASES / folder)
    assert task.problems == () and task.name == "LUMIR" and task.rules == rules
    assert task.pair_keys == {"val": "validation"} and len(task.pairs["val"]) == n_pairs
    assert task.pairs["val"][0] == Pair("3455_0000", "3454_0000")  # fixed = moving + 1
    assert task.image_prefixes == ("LUMIRMRI",) and task.modality == {"0": "T1w Brain MRI"} and task.labels == {}
    assert task.training == ("0000_0000", "0001_0000")
    for case_id in task.training:  # image only
        case = task.case(case_id)
        assert (case.label, case.mask, case.keypoints, case.landmarks, case.landmark_volume) == (None,) * 5
        assert case.split == "train" and case.listed
    val = task.case("3484_0000")
    assert (val.split, val.listed) == ("val", False) and val.image.parent.name == "imagesVal"
    assert val.label == task.root / "labelsVal" / "LUMIRMRI_3484_0000.nii.gz"
    assert val.landmark_volume == task.root / "landmarksVal" / "LUMIRMRI_3484_0000.nii.gz" and val.landmarks is None
    assert task.pair_points(Pair("3485_0000", "3484_0000"), "landmarks") == (None, None)  # no CSV points
    assert task.training_pairs() == (Pair("0000_0000", "0001_0000"), Pair("0001_0000", "0000_0000"))


def test_lumir25_multi_contrast_pairs_move_the_0001_image() -> None:
    task = load_task(CASES / "lumir25")
    assert Pair("4024_0000", "4033_0001") in task.pairs["val"]
    moving = task.case("4033_0001")
    assert moving.modality == "0001" and moving.label is not None and moving.label.name == "LUMIRMRI_4033_0001.nii.gz"


def test_a_lumir_json_is_a_valid_description() -> None:
    for folder, name in (("lumir24", "LUMIR_dataset.json"), ("lumir25", "LUMIR25_dataset.json")):
        meta = read_json(CASES / folder / name)
        assert dataset.check_description(meta) == []
        assert dataset.pair_key(meta, "val") == "validation" and dataset.pair_key(meta, "test") is None


@pytest.mark.parametrize(
    ("edit", "severity", "expected"),
    [
        (lambda m: m.pop("validation"), "error", "required key 'registration_val' (or 'validation', as LUMIR names it) is missing"),
        (lambda m: m.update(registration_val=m["validation"]), "error", "both 'registration_val' and 'validation'"),
        (lambda m: m["validation"][1].pop("moving"), "error", "validation[1] has no path for moving"),
        (lambda m: m.update(validation=[]), "error", "'validation' must be a non-empty list"),
        (lambda m: m.update(numValidation=5), "warning", "'numValidation' is 5 but 'validation' has 6 entries"),
    ],
)
def test_lumir_json_problems_are_named(edit, severity: str, expected: str) -> None:
    meta = read_json(CASES / "lumir24" / "LUMIR_dataset.json")
    edit(meta)
    assert any(s == severity and m.startswith(expected) for s, m in dataset.check_description(meta))


def test_build_description_writes_the_lumir_keys(tmp_path: Path) -> None:
    shipped = read_json(CASES / "lumir24" / "LUMIR_dataset.json")
    training = [{"image": f"./imagesTr/LUMIRMRI_{s:04d}_0000.nii.gz"} for s in range(2)]
    pairs = [{"fixed": "./imagesVal/LUMIRMRI_0003_0000.nii.gz", "moving": "./imagesVal/LUMIRMRI_0002_0000.nii.gz"}]
    meta = dataset.build_description("LUMIR", SHAPE, training, pairs, modality={"0": "T1w Brain MRI"}, val_key="validation",
                                     release="0.1", description="d", license="CC BY 4.0", reference="r")
    assert set(meta) == set(shipped)  # exactly the shipped keys: no registration_val, no test lists
    assert meta["provided_data"] == {"0": ["image"]} and meta["labels"] == {} and meta["pairings"] == "unpaired"
    assert (meta["numTraining"], meta["numValidation"]) == (2, 1)
    for entry in (*training, *pairs):
        for path in entry.values():
            _image(tmp_path / path)
    dataset.write_description(tmp_path, meta)
    task = load_task(tmp_path)
    assert task.problems == () and task.pairs["val"] == (Pair("0003_0000", "0002_0000"),) and task.rules == "lumir25"
    with pytest.raises(ValueError, match="no test lists"):
        dataset.build_description("LUMIR", SHAPE, training, pairs, val_key="validation", registration_test=pairs)


# --------------------------------------------------------------------------------- ReMIND2Reg


def remind_task(tmp_path: Path) -> Path:
    """The ReMIND parity case with a dataset json as ReMIND2Reg's data would have one: three
    modalities, image-only training entries, pairs _0000 <- _0001 and _0000 <- _0002."""
    root = tmp_path / "ReMIND2Reg"
    shutil.copytree(CASES / "remind", root, ignore=shutil.ignore_patterns("disp"))
    images = sorted(p.name for p in (root / "imagesTr").glob("*.nii.gz"))
    config = read_json(root / "ReMIND2Reg_VAL_evaluation_config.json")
    meta = {"name": "ReMIND2Reg", "modality": {"0": "3D iUS", "1": "ceT1", "2": "T2"}, "labels": {},
            "tensorImageShape": {"0": [20, 24, 20]}, "pairings": "paired",
            "training": [{"image": f"./imagesTr/{name}"} for name in images], "registration_val": config["eval_pairs"]}
    (root / "ReMIND2Reg_dataset.json").write_text(json.dumps(meta))
    return root


def test_remind2reg_three_modalities_and_landmarks_per_pair(tmp_path: Path) -> None:
    task = load_task(remind_task(tmp_path))
    assert task.problems == () and task.rules == "remind2reg" and task.image_prefixes == ("ReMIND2Reg",)
    assert sorted(task.cases) == ["0099_0000", "0099_0001", "0099_0002", "0100_0000", "0100_0001", "0100_0002", "0101_0000", "0101_0001"]
    t2 = Pair("0099_0000", "0099_0002")
    assert t2 in task.pairs["val"] and task.intra_patient
    assert task.training_pairs() == (Pair("0099_0000", "0099_0001"), Pair("0100_0000", "0100_0001"), Pair("0101_0000", "0101_0001"))
    # ReMIND2Reg's evaluator reads every pair's landmarks from landmarksTr; L2R's from landmarks00000002Tr
    fixed, moving = task.pair_points(t2, "landmarks")
    assert fixed is not None and moving is not None and (fixed.parent.name, moving.name) == ("landmarksTr", "ReMIND2Reg_0099_0002.csv")
    fixed_l2r, moving_l2r = task.pair_points(t2, "landmarks", rules="l2r")
    assert fixed_l2r is not None and moving_l2r is not None and fixed_l2r.parent.name == "landmarks00000002Tr"
    np.testing.assert_allclose(read_points(fixed_l2r), read_points(fixed) + 0.25, atol=1e-9)
    assert task.pair_points(Pair("0099_0000", "0099_0001"), "landmarks", rules="l2r")[0] == fixed  # 0000 -> 0001: own folder


# ---------------------------------------------------------------------------------- OncoReg


def oncoreg_task(tmp_path: Path, head_folders: bool = False) -> Path:
    """OncoReg / revised ThoraxCBCT: FBCT _0000 (moving), CBCTs _0001/_0002 (fixed), keypoints of
    each pair in keypoints01Tr / keypoints02Tr; the moving image has other points in each."""
    root = tmp_path / "OncoReg"
    training, paired = [], []
    for s in (1, 2):
        for m in ("0000", "0001", "0002"):
            _image(root / "imagesTr" / f"OncoReg_{s:04d}_{m}.nii.gz")
            training.append({"image": f"./imagesTr/OncoReg_{s:04d}_{m}.nii.gz"})
        for k, m in ((1, "0001"), (2, "0002")):
            folders = [f"keypoints0{k}Tr"] + ([f"keypoints0000000{k}Tr"] if head_folders else [])
            for folder in folders:
                write_points(root / folder / f"OncoReg_{s:04d}_{m}.csv", np.full((3, 3), k))
                write_points(root / folder / f"OncoReg_{s:04d}_0000.csv", np.full((3, 3), k + 0.5))
            paired.append({"fixed": f"./imagesTr/OncoReg_{s:04d}_{m}.nii.gz", "moving": f"./imagesTr/OncoReg_{s:04d}_0000.nii.gz"})
    meta = dataset.build_description("OncoReg", SHAPE, training, paired[2:], modality={"0": "FBCT", "1": "CBCT", "2": "CBCT"},
                                     training_paired_images=paired[:2])
    meta["registration_direction"] = {"fixed": 1, "moving": 0}
    dataset.write_description(root, meta)
    return root


def test_oncoreg_keypoints_are_found_per_pair(tmp_path: Path) -> None:
    task = load_task(oncoreg_task(tmp_path))
    assert task.problems == () and task.rules == "l2r" and task.intra_patient
    assert task.pairs["val"] == (Pair("0002_0001", "0002_0000"), Pair("0002_0002", "0002_0000"))
    assert task.training_pairs() == (Pair("0001_0001", "0001_0000"), Pair("0001_0002", "0001_0000"))
    for pair, k in zip(task.pairs["val"], (1, 2), strict=True):
        fixed, moving = task.pair_points(pair, "keypoints")
        assert fixed is not None and moving is not None
        assert fixed.parent.name == moving.parent.name == f"keypoints0{k}Tr"
        assert read_points(moving)[0, 0] == k + 0.5  # the same _0000 image, other points per pair
    assert task.case("0002_0000").keypoints is None  # no keypointsTr: the case itself has none
    head = load_task(oncoreg_task(tmp_path / "head", head_folders=True))
    assert head.pair_points(head.pairs["val"][0], "keypoints")[0].parent.name == "keypoints00000001Tr"  # L2R's name first


# ---------------------------------------------------------------------------------- rule sets


def test_rules_for_each_kind_of_folder(tmp_path: Path) -> None:
    lumir = tmp_path / "lumir"
    shutil.copytree(CASES / "lumir24", lumir, ignore=shutil.ignore_patterns("disp", "*_evaluation_config.json"))
    assert rules_for(load_task(lumir)) == "lumir25"  # LUMIR without 2024's configs: the newest
    assert rules_for(load_task(lumir), told="lumir24") == "lumir24"
    assert rules_for(load_task(oncoreg_task(tmp_path))) == "l2r"
    with pytest.raises(DataError, match="unknown rule set 'lumir'"):
        rules_for(load_task(lumir), told="lumir")
    assert RULE_SETS == ("l2r", "lumir24", "lumir25", "remind2reg")


@pytest.mark.parametrize(
    ("fixed", "moving", "rules", "expected"),
    [
        ("0000", "0001", "l2r", ["keypoints"]),  # the images' own folder: keypointsTr
        ("0000", "0000", "l2r", ["keypoints"]),
        ("0001", "0000", "l2r", ["keypoints00000001", "keypoints01"]),
        ("0000", "0002", "remind2reg", ["keypoints"]),
        ("0000", "0002", "lumir25", ["keypoints02"]),
    ],
)
def test_point_folders(fixed: str, moving: str, rules: str, expected: list[str]) -> None:
    assert point_folders(rules, "keypoints", f"0011_{fixed}", f"0011_{moving}") == expected
    assert point_folders("lumir24", "landmarks", "0011_0000", "0011_0002") == ["landmarks"]
