"""The demo tasks in the layouts of 2024-2026: LUMIR-like and ReMIND2Reg-like, exact ground truth.

Generated once per module with fewer subjects than the defaults (2 LUMIR training images, 2
ReMIND2Reg training patients, one of them without T2); the CLI test writes the LUMIR default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learn2reg.contract import compose, jacobian_determinant, sample_field, warp, warp_labels
from learn2reg.io import load_nifti, read_json, read_points
from learn2reg.task import Pair, load_task
from pipeline.cli import main
from pipeline.data.validate import validate_task
from pipeline.demo.current import LUMIR, LUMIR_LANDMARKS, REMIND, LumirTask, RemindTask, generate_lumir, generate_remind
from pipeline.demo.phantom_lumir import LABELS
from pipeline.demo.phantom_remind import TRE_RANGE
from pipeline.demo.phantoms import invert_field
from pipeline.demo.tasks import write_current
from tests.learn2reg.test_task_current import CASES


@pytest.fixture(scope="module")
def lumir() -> LumirTask:
    return generate_lumir(seed=0, training=2)


@pytest.fixture(scope="module")
def remind() -> RemindTask:
    return generate_remind(seed=0, training=2)


@pytest.fixture(scope="module")
def folders(lumir: LumirTask, remind: RemindTask, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {"LUMIR": tmp_path_factory.mktemp("lumir") / LUMIR.name, "ReMIND": tmp_path_factory.mktemp("remind") / REMIND.name}
    write_current("LUMIR", lumir, out["LUMIR"])
    write_current("ReMIND", remind, out["ReMIND"])
    return out


def _centroids(volume: np.ndarray) -> np.ndarray:
    """LUMIR's TRE centroids: mean voxel position of every id 1..K (``K x 3``; NaN if absent)."""
    return np.array([np.argwhere(volume == k).mean(axis=0) if (volume == k).any() else [np.nan] * 3 for k in range(1, LUMIR_LANDMARKS + 1)])


def _key_structure(config: dict) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(m["name"], m["metric"], tuple(sorted(m))) for m in config["evaluation_methods"]]


# ------------------------------------------------------------------------------------------ LUMIR


def test_lumir_folder_is_shipped_layout_and_validates_clean(folders: dict[str, Path], lumir: LumirTask) -> None:
    root = folders["LUMIR"]
    assert validate_task(root) == []
    task = load_task(root)
    assert task.rules == "lumir25" and task.image_prefixes == ("LUMIRMRI",) and task.pair_keys == {"val": "validation"}
    meta = read_json(root / "DemoLUMIR_dataset.json")
    assert set(meta) == set(read_json(CASES / "lumir24" / "LUMIR_dataset.json"))  # LUMIR's own keys, nothing else
    assert meta["training"] == [{"image": f"./imagesTr/LUMIRMRI_{s:04d}_0000.nii.gz"} for s in (0, 1)]
    assert all(Path(p["fixed"]).parent.name == "imagesVal" for p in meta["validation"])
    assert [(p.fixed, p.moving) for p in task.pairs["val"]] == [
        (f"{f:04d}_0000", f"{m:04d}_0000") for f, m in lumir.val_pairs] and all(f == m + 1 for f, m in lumir.val_pairs)
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["LUMIRMRI_0000_0000.nii.gz", "LUMIRMRI_0001_0000.nii.gz"]
    val_names = sorted(p.name for p in (root / "imagesVal").iterdir())
    assert len(val_names) == 8 and val_names == sorted(p.name for p in (root / "labelsVal").iterdir())
    assert val_names == sorted(p.name for p in (root / "landmarksVal").iterdir())
    for config in ("Landmark", "Segmentation"):  # the organisers' format: 'name', NDV, labels with 0
        mine = read_json(root / f"DemoLUMIR_VAL_{config}_evaluation_config.json")
        theirs = read_json(CASES / "lumir24" / f"LUMIR_VAL_{config}_evaluation_config.json")
        assert set(mine) == set(theirs) and mine["name"] == "DemoLUMIR" and _key_structure(mine) == _key_structure(theirs)
        assert mine["expected_shape"] == [*LUMIR.shape, 3]
        ids = [(Path(p["fixed"]).name[9:18], Path(p["moving"]).name[9:18]) for p in mine["eval_pairs"]]  # LUMIRMRI_SSSS_MMMM
        assert ids == [(f"{f:04d}_0000", f"{m:04d}_0000") for f, m in lumir.val_chains[config]]
    dice = read_json(root / "DemoLUMIR_VAL_Segmentation_evaluation_config.json")["evaluation_methods"][1]
    assert dice["labels"] == [0, *sorted(LABELS)]


def test_lumir_images_labels_and_landmark_volumes(folders: dict[str, Path], lumir: LumirTask) -> None:
    task = load_task(folders["LUMIR"])
    for s, subject in lumir.subjects.items():
        case = task.case(f"{s:04d}_0000")
        image, geometry = load_nifti(case.image, dtype=None)
        assert image.dtype == np.uint8 and image.max() == 255 and np.array_equal(image, subject.image)
        assert geometry.shape == LUMIR.shape and geometry.spacing == LUMIR.spacing
        assert (image[:2] == 0).all() and (image > 0).mean() > 0.2  # skull-stripped brain on a zero background
        if s in lumir.training:
            assert (case.label, case.landmark_volume) == (None, None)
            continue
        labels, _ = load_nifti(case.label, dtype=None)
        assert set(np.unique(labels)) == {0, *LABELS}
        volume, _ = load_nifti(case.landmark_volume, dtype=None)
        assert set(np.unique(volume)) == set(range(LUMIR_LANDMARKS + 1))
        assert np.array_equal(_centroids(volume), subject.landmarks)  # blob centroids = the landmark voxels, exactly
        assert jacobian_determinant(subject.phi).min() > 0.2


def test_lumir_landmarks_correspond_exactly_under_the_known_fields(lumir: LumirTask) -> None:
    """Fixed landmark ``z_F`` and moving ``z_M`` reach the same template point through their
    subjects' fields; the pair's field ``compose(phi_F, inverse(phi_M))`` (an independent grid
    inversion) maps ``z_F`` to ``z_M``, and LUMIR's centroid TRE of that field is far below the
    zero field's."""
    for f, m in lumir.val_pairs:
        fixed, moving = lumir.subjects[f], lumir.subjects[m]
        for subject in (fixed, moving):
            reached = subject.landmarks + sample_field(subject.phi, subject.landmarks, order=1)
            assert np.abs(reached - lumir.template.points).max() < 1e-3
        u = compose(fixed.phi, invert_field(moving.phi, tol=1e-5))
        assert np.abs(fixed.landmarks + u[tuple(fixed.landmarks.astype(int).T)] - moving.landmarks).max() < 1e-3
        before = np.linalg.norm(_centroids(moving.landmark_volume) - _centroids(fixed.landmark_volume), axis=1).mean()
        after = np.linalg.norm(_centroids(warp_labels(moving.landmark_volume, u)) - _centroids(fixed.landmark_volume), axis=1).mean()
        assert before > 1.5 and after < 0.5


def test_lumir_same_seed_same_arrays(lumir: LumirTask) -> None:
    again = generate_lumir(seed=0, training=2)
    assert all(np.array_equal(again.subjects[s].image, lumir.subjects[s].image) for s in lumir.subjects)
    assert not np.array_equal(generate_lumir(seed=1, training=2).subjects[0].image, lumir.subjects[0].image)


# ------------------------------------------------------------------------------------- ReMIND2Reg


def test_remind_folder_is_shipped_layout_and_validates_clean(folders: dict[str, Path], remind: RemindTask) -> None:
    root = folders["ReMIND"]
    assert validate_task(root) == []
    task = load_task(root)
    assert task.rules == "remind2reg" and task.image_prefixes == ("ReMIND2Reg",)
    assert task.modality == {"0": "3D iUS", "1": "ceT1", "2": "T2"} and task.intra_patient
    assert remind.without_t2 == (1,) and "0001_0002" not in task.cases and "0000_0002" in task.cases
    assert task.training_pairs() == (Pair("0000_0000", "0000_0001"), Pair("0000_0000", "0000_0002"), Pair("0001_0000", "0001_0001"))
    assert [(p.fixed, p.moving) for p in task.pairs["val"]] == [("0002_0000", "0002_0001"), ("0003_0000", "0003_0001"),
                                                                 ("0002_0000", "0002_0002"), ("0003_0000", "0003_0002")]
    for case_id, case in task.cases.items():  # no training annotations; landmarks for the validation patients only
        assert (case.label, case.mask, case.keypoints, case.landmark_volume) == (None,) * 4
        assert (case.landmarks is not None) == (int(case_id[:4]) in remind.validation)
    mine = read_json(root / "DemoReMIND2Reg_VAL_evaluation_config.json")
    theirs = read_json(CASES / "remind" / "ReMIND2Reg_VAL_evaluation_config.json")
    assert set(mine) == set(theirs) and _key_structure(mine) == _key_structure(theirs) and mine["task_name"] == "DemoReMIND2Reg"
    assert mine["eval_pairs"] == read_json(root / "DemoReMIND2Reg_dataset.json")["registration_val"]


def test_remind_ultrasound_is_zero_outside_its_cone_and_not_an_mr_contrast(remind: RemindTask) -> None:
    x, y, z = REMIND.grid.axes()
    mm = np.stack(np.broadcast_arrays(x, y, z), axis=-1)
    for patient in remind.patients.values():
        inside = patient.fan.contains(mm)
        assert (patient.us[~inside] == 0).all() and (patient.us[inside] > 0).mean() > 0.99 and 0.05 < inside.mean() < 0.5
        assert patient.us.max() <= 255.0
        for mr in (patient.t1, patient.t2):
            assert abs(np.corrcoef(patient.us[inside], warp(mr, patient.w)[inside])[0, 1]) < 0.8
        head = (patient.t1 > 150.0) | (patient.t2 > 150.0)
        assert np.corrcoef(patient.t1[head], patient.t2[head])[0, 1] < -0.3  # T2 inverts T1's tissue contrast


def _mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    joint, _, _ = np.histogram2d(a, b, bins)
    p = joint / joint.sum()
    outer = p.sum(axis=1, keepdims=True) @ p.sum(axis=0, keepdims=True)
    return float(np.sum(p[p > 0] * np.log(p[p > 0] / outer[p > 0])))


def test_remind_true_field_aligns_the_mr_to_the_ultrasound(remind: RemindTask) -> None:
    """An independent check of the direction of ``w``: the MR pulled by ``w`` shares more
    information with the ultrasound, inside its cone, than the MR as it is."""
    x, y, z = REMIND.grid.axes()
    inside = remind.patients[0].fan.contains(np.stack(np.broadcast_arrays(x, y, z), axis=-1))
    patient = remind.patients[0]
    for mr in (patient.t1, patient.t2):
        assert _mutual_information(patient.us[inside], warp(mr, patient.w)[inside]) > 1.15 * _mutual_information(patient.us[inside], mr[inside])


def test_remind_landmarks_exact_and_initial_error_in_range(folders: dict[str, Path], remind: RemindTask) -> None:
    root = folders["ReMIND"]
    marker = read_json(root / "demo_data.json")
    assert marker["tre_range_mm"] == list(TRE_RANGE) and marker["without_t2"] == ["0001"]
    spacing = np.asarray(REMIND.spacing)
    for p in remind.validation:
        patient = remind.patients[p]
        fixed = read_points(root / "landmarksTr" / f"ReMIND2Reg_{p:04d}_0000.csv")
        assert len(fixed) == 15 and np.array_equal(fixed, np.round(fixed))  # on voxels of the cone
        assert np.all(patient.fan.contains(REMIND.grid.to_mm(fixed), margin=4.0))
        for m in ("0001", "0002"):
            moving = read_points(root / "landmarksTr" / f"ReMIND2Reg_{p:04d}_{m}.csv")
            tre = np.linalg.norm((fixed + sample_field(patient.w, fixed) - moving) * spacing, axis=1)  # the official TRE of w
            assert tre.max() < 1e-3
            initial = np.linalg.norm((moving - fixed) * spacing, axis=1).mean()
            assert TRE_RANGE[0] <= initial <= TRE_RANGE[1]
            assert marker["val_pairs"][f"{p:04d}_0000<--{p:04d}_{m}"] == pytest.approx(initial, abs=1e-5)
    for p, record in marker["patients"].items():
        patient = remind.patients[int(p)]
        assert TRE_RANGE[0] <= record["initial_tre_mm"] <= TRE_RANGE[1] and record["split"] == ("val" if int(p) in remind.validation else "train")
        assert max(abs(a) for a in record["rotation_deg"]) <= 4.0 and 1.0 < np.linalg.norm(record["translation_mm"]) < 12.0
        matrix = np.asarray(record["rigid_voxel_matrix"])
        assert np.allclose(matrix[:3, :3] @ matrix[:3, :3].T, np.eye(3), atol=1e-9) and np.allclose(matrix, patient.rigid)
        assert 0.5 < record["brain_shift_max_mm"] <= 2.5 * np.sqrt(3.0)  # each component peaks at 2.5 mm


# --------------------------------------------------------------------------------------------- CLI


def test_cli_layouts_and_task_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-data", "--out", str(tmp_path), "--layout", "lumir"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "DemoLUMIR")
    task = load_task(tmp_path / "DemoLUMIR")
    assert len(task.training) == LUMIR.subjects == 10 and len(task.pairs["val"]) == 6
    assert read_json(tmp_path / "DemoLUMIR" / "demo_data.json")["layout"] == "lumir"
    assert main(["validate", "--no-progress", str(tmp_path / "DemoLUMIR")]) == 0
    assert "normal for lumir25: unsupervised training" in capsys.readouterr().out
    for argv, message in (
        (["--layout", "lumir", "--tasks", "T1"], "--tasks T1: layout 'lumir' holds task LUMIR only"),
        (["--layout", "l2r", "--tasks", "remind"], "--tasks ReMIND: written in its own layout 'remind2reg' only"),
        (["--tasks", "LUMIR,T9"], "--tasks: unknown"),
    ):
        assert main(["demo-data", "--out", str(tmp_path / "x"), *argv]) == 1
        assert message in capsys.readouterr().err and not (tmp_path / "x").exists()
