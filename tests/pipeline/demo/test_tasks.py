"""The embedded demo tasks: deterministic, loadable in both layouts, exact ground truth.

The tasks are generated once per module with fewer subjects than the defaults (subject ``s``
is the same whatever the count); one slow test writes the full default collection.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from evaluation.initial import evaluate_initial
from learn2reg.contract import affine_to_field, jacobian_determinant, sample_field, warp_labels
from learn2reg.io import DataError, load_nifti, read_json, read_points
from learn2reg.task import Task, load_task
from pipeline.cli import main
from pipeline.demo import phantom_brain
from pipeline.demo.phantoms import Grid, invert_field, make_rng, pull_points, random_diffeo
from pipeline.demo.tasks import SPEC_BY_KEY, DemoTask, generate_task, write_demo, write_task

SUBJECTS = {"T1": 2, "T2": 3, "T3": 4, "T4": 4}  # the minimum: held-out subjects + 1


@pytest.fixture(scope="module")
def tasks() -> dict[str, DemoTask]:
    return {key: generate_task(SPEC_BY_KEY[key], seed=0, subjects=n) for key, n in SUBJECTS.items()}


@pytest.fixture(scope="module")
def folders(tasks: dict[str, DemoTask], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """key -> layout -> task folder, both layouts written from the same generated task."""
    out: dict[str, dict[str, Path]] = {}
    for key, task in tasks.items():
        base = tmp_path_factory.mktemp(key)
        out[key] = {"l2r": base / task.spec.name, "l2r2020": base / task.spec.folder_2020}
        for layout, folder in out[key].items():
            write_task(task, folder, layout)
    return out


@pytest.fixture(scope="module")
def inverse(tasks: dict[str, DemoTask]) -> dict[str, np.ndarray]:
    """key -> the evaluator's true field for subject 1 (fixed grid): the grid inverse of the
    generator's pull field, computed independently of the point solver."""
    return {key: invert_field(tasks[key].subjects[0].pull, tol=1e-5) for key in ("T1", "T2")}


def _dice(a: np.ndarray, b: np.ndarray, labels: list[int]) -> float:
    """Mean Dice over labels present in both maps."""
    values = [2.0 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in labels if (a == k).any() and (b == k).any()]
    return float(np.mean(values))


def _image(task: Task, case_id: str, kind: str = "image") -> np.ndarray:
    array, _ = load_nifti(getattr(task.case(case_id), kind), dtype=None)
    return array


# ----------------------------------------------------------------------------- layouts and files


@pytest.mark.parametrize("key", list(SUBJECTS))
def test_both_layouts_load_to_the_same_task(folders: dict[str, dict[str, Path]], tasks: dict[str, DemoTask], key: str) -> None:
    spec = SPEC_BY_KEY[key]
    new, old = load_task(folders[key]["l2r"]), load_task(folders[key]["l2r2020"])
    assert new.problems == () and old.problems == ()
    assert (new.name, new.layout, old.layout) == (spec.name, "l2r", "l2r2020")
    modalities = ("0000", "0001") if spec.paired else ("0000",)
    expected_cases = {f"{s:04d}_{m}" for s in range(1, SUBJECTS[key] + 1) for m in modalities}
    assert set(new.cases) == set(old.cases) == expected_cases
    assert sorted(new.training) == sorted(old.training) == sorted(expected_cases)
    val = [(p.fixed, p.moving) for p in new.pairs["val"]]
    assert val == [(p.fixed, p.moving) for p in old.pairs["val"]] == list(tasks[key].val_pairs)
    held_out = {f"{s:04d}" for s in range(SUBJECTS[key] - spec.val_subjects + 1, SUBJECTS[key] + 1)}
    assert val and {case[:4] for pair in val for case in pair} == held_out
    assert new.shape == old.shape == spec.shape
    assert new.intra_patient == old.intra_patient == spec.paired
    assert new.labels == old.labels == spec.labels
    assert new.modality == old.modality == spec.modality
    for case_id in sorted(expected_cases):
        a, b = new.case(case_id), old.case(case_id)
        image_a, geo_a = load_nifti(a.image, dtype=None)
        image_b, geo_b = load_nifti(b.image, dtype=None)
        assert np.array_equal(image_a, image_b) and geo_a == geo_b
        assert image_a.shape == spec.shape and np.allclose(geo_a.spacing, spec.spacing)
        for kind in ("label", "mask"):
            assert (getattr(a, kind) is None) == (getattr(b, kind) is None)
            if getattr(a, kind) is not None:
                assert np.array_equal(_image(new, case_id, kind), _image(old, case_id, kind))
        for kind in ("keypoints", "landmarks"):
            if getattr(a, kind) is not None:
                assert np.array_equal(read_points(getattr(a, kind)), read_points(getattr(b, kind)))


@pytest.mark.parametrize("key", list(SUBJECTS))
def test_files_hold_the_generated_arrays(folders: dict[str, dict[str, Path]], tasks: dict[str, DemoTask], key: str) -> None:
    task = load_task(folders[key]["l2r"])
    for s, subject in enumerate(tasks[key].subjects, start=1):
        for m, made in enumerate(subject.images):
            case_id = f"{s:04d}_{m:04d}"
            image = _image(task, case_id)
            assert image.dtype == made.image.dtype and np.array_equal(image, made.image)
            if made.label is not None:
                labels = _image(task, case_id, "label")
                assert labels.dtype == np.uint8 and np.array_equal(labels, made.label)
            if made.landmarks is not None:
                assert np.allclose(read_points(task.case(case_id).landmarks), made.landmarks, atol=1e-6)
    expected_dtype = {"T1": np.float32, "T2": np.int16, "T3": np.int16, "T4": np.float32}[key]
    assert _image(task, "0001_0000").dtype == expected_dtype


@pytest.mark.parametrize("key", list(SUBJECTS))
def test_dataset_json_and_evaluation_config(folders: dict[str, dict[str, Path]], key: str) -> None:
    spec = SPEC_BY_KEY[key]
    root = folders[key]["l2r"]
    meta = read_json(root / f"{spec.name}_dataset.json")
    config = read_json(root / f"{spec.name}_VAL_evaluation_config.json")
    assert meta["tensorImageShape"] == {"0": list(spec.shape)}
    assert meta["pairings"] == ("paired" if spec.paired else "unpaired")
    assert ("registration_direction" in meta) == spec.paired
    assert meta["numTraining"] == len(meta["training"]) and meta["numRegistration_val"] == len(meta["registration_val"])
    assert all(entry["image"].startswith("./imagesTr/") for entry in meta["training"])
    assert config["task_name"] == spec.name
    assert config["expected_shape"] == [*spec.shape, 3]
    assert config["eval_pairs"] == meta["registration_val"]
    assert config["masked_evaluation"] is (key == "T2")
    methods = {m["name"]: m for m in config["evaluation_methods"]}
    expected = {"T1": {"LogJacDetStd", "TRE_lm"}, "T2": {"LogJacDetStd", "TRE_lm", "TRE_kp"},
                "T3": {"LogJacDetStd", "DSC", "HD95"}, "T4": {"LogJacDetStd", "DSC", "HD95"}}[key]
    assert set(methods) == expected
    if "DSC" in methods:
        assert methods["DSC"]["labels"] == methods["HD95"]["labels"] == sorted(spec.labels)
    old = folders[key]["l2r2020"]
    assert (old / "pairs_val.csv").read_text().splitlines()[0] == "fixed,moving"
    assert read_json(old / "task.json")["shape"] == list(spec.shape)


# ----------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("key", list(SUBJECTS))
def test_same_seed_same_arrays_other_seed_different(tasks: dict[str, DemoTask], key: str) -> None:
    spec = SPEC_BY_KEY[key]
    grid = Grid(spec.shape, spec.spacing)
    again = spec.make_subject(make_rng(0, spec.index, 1), grid)
    other = spec.make_subject(make_rng(1, spec.index, 1), grid)
    for first, second, third in zip(tasks[key].subjects[0].images, again.images, other.images, strict=True):
        assert np.array_equal(first.image, second.image)
        assert not np.array_equal(first.image, third.image)
        for kind in ("label", "mask", "keypoints", "landmarks"):
            if getattr(first, kind) is not None:
                assert np.array_equal(getattr(first, kind), getattr(second, kind))


def test_subject_does_not_depend_on_subject_count(tasks: dict[str, DemoTask]) -> None:
    small = generate_task(dataclasses.replace(SPEC_BY_KEY["T4"], val_subjects=2), seed=0, subjects=3)
    assert np.array_equal(small.subjects[0].images[0].image, tasks["T4"].subjects[0].images[0].image)
    assert small.val_pairs == (("0002_0000", "0003_0000"), ("0003_0000", "0002_0000"))


# ----------------------------------------------------------------------- exact correspondences


def test_pull_points_inverts_an_affine_field_exactly() -> None:
    """``z + w(z) = x`` for ``w(z) = A z + t - z`` is ``z = A^-1 (x - t)``."""
    a = np.eye(4)
    c, s = np.cos(0.1), np.sin(0.1)
    a[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.02]]
    a[:3, 3] = [1.5, -2.0, 0.7]
    w = affine_to_field(a, (24, 24, 24))
    x = np.array([[12.0, 12.0, 12.0], [8.3, 14.1, 10.7], [15.0, 9.5, 13.2]])
    z, residual = pull_points(x, w)
    assert np.allclose(z, (np.linalg.inv(a[:3, :3]) @ (x - a[:3, 3]).T).T, atol=1e-4)
    assert residual < 1e-5


@pytest.mark.parametrize("key", ["T1", "T2"])
def test_point_files_correspond_exactly_under_the_known_field(
    folders: dict[str, dict[str, Path]], tasks: dict[str, DemoTask], inverse: dict[str, np.ndarray], key: str
) -> None:
    """Fixed point x <-> moving point z with z + w(z) = x (w: the generator's field), and the
    evaluator's field u = w^-1 (grid inversion, an independent computation) maps x to z."""
    task = load_task(folders[key]["l2r"])
    spacing = np.asarray(SPEC_BY_KEY[key].spacing)
    for s, subject in enumerate(tasks[key].subjects, start=1):
        for kind in ("landmarks", "keypoints") if key == "T2" else ("landmarks",):
            fixed = read_points(getattr(task.case(f"{s:04d}_0000"), kind))
            moving = read_points(getattr(task.case(f"{s:04d}_0001"), kind))
            assert len(fixed) == len(moving) == {"landmarks": 20 if key == "T1" else 30, "keypoints": 100}[kind]
            assert np.abs(moving + sample_field(subject.pull, moving, order=1) - fixed).max() < 1e-3
            assert np.allclose(fixed, np.round(fixed))  # fixed points on voxels
            assert np.linalg.norm((moving - fixed) * spacing, axis=1).mean() > 2.0  # mm: a real initial error
            if s == 1:
                u = inverse[key]
                assert np.abs(fixed + u[tuple(fixed.astype(int).T)] - moving).max() < 1e-3
                tre = np.linalg.norm((fixed + sample_field(u, fixed) - moving) * spacing, axis=1)  # the official TRE
                assert tre.max() < 0.01


def test_true_field_registers_the_lung_masks(folders: dict[str, dict[str, Path]], inverse: dict[str, np.ndarray]) -> None:
    task = load_task(folders["T2"]["l2r"])
    fixed_mask, moving_mask = _image(task, "0001_0000", "mask"), _image(task, "0001_0001", "mask")
    before, after = _dice(fixed_mask, moving_mask, [1]), _dice(fixed_mask, warp_labels(moving_mask, inverse["T2"]), [1])
    assert after > 0.97 and after > before + 0.03


def test_random_diffeo_is_invertible_and_vanishes_at_the_faces() -> None:
    grid = Grid((32, 32, 32), (1.0, 1.0, 1.0))
    w = random_diffeo(make_rng(3), grid, 4.0, cells=4)
    assert jacobian_determinant(w).min() > 0.2 and np.abs(w).max() > 1.0
    assert np.abs(w[0]).max() < 1e-6 and np.abs(w[:, :, -1]).max() < 1e-6


# ------------------------------------------------------------------------------------ task content


def test_t1_modalities_are_not_linearly_related() -> None:
    grid = Grid(SPEC_BY_KEY["T1"].shape, SPEC_BY_KEY["T1"].spacing)
    rng = make_rng(5)
    anatomy = phantom_brain.brain_anatomy(rng, grid)
    mr = phantom_brain.render_mr(rng, anatomy)
    us = phantom_brain.render_us(rng, grid, anatomy, np.zeros((*grid.shape, 3), np.float32))
    fan = us > 0
    assert 0.05 < fan.mean() < 0.5 and us.max() <= 255.0
    assert np.corrcoef(mr[fan], us[fan])[0, 1] < 0.8
    smooth_mr, smooth_us = ndimage.gaussian_filter(mr, 1.0), ndimage.gaussian_filter(us, 1.0)
    assert np.corrcoef(smooth_mr[fan], smooth_us[fan])[0, 1] < 0.9  # not even after denoising


def test_t1_landmarks_lie_in_the_ultrasound_fan(folders: dict[str, dict[str, Path]]) -> None:
    task = load_task(folders["T1"]["l2r"])
    for s in (1, 2):
        us = _image(task, f"{s:04d}_0001")
        moving = read_points(task.case(f"{s:04d}_0001").landmarks)
        assert np.all(ndimage.map_coordinates((us > 0).astype(float), moving.T, order=0) == 1)


def test_t2_is_lung_ct_in_hounsfield_units(folders: dict[str, dict[str, Path]]) -> None:
    task = load_task(folders["T2"]["l2r"])
    volumes = []
    for case_id in ("0001_0000", "0001_0001"):
        hu, mask = _image(task, case_id).astype(np.float64), _image(task, case_id, "mask")
        assert hu.min() >= -1024 and hu.max() < 3072
        assert abs(hu[:3, :3, :].mean() + 1000.0) < 30.0  # air in the corners
        assert set(np.unique(mask)) == {0, 1}
        lung = hu[mask == 1]
        assert -900.0 < np.median(lung) < -750.0 and np.percentile(lung, 99.5) > 0.0  # parenchyma, vessels
        dark = ndimage.gaussian_filter(hu, 1.0) < -600.0
        labelled, _ = ndimage.label(dark)
        outside = np.unique(np.concatenate([labelled[[0, -1]].ravel(), labelled[:, [0, -1]].ravel(), labelled[:, :, [0, -1]].ravel()]))
        inner_air = dark & ~np.isin(labelled, outside)
        assert (mask[inner_air] == 1).mean() > 0.9  # the masks cover the lungs
        volumes.append(mask.sum())
    assert volumes[1] > 1.05 * volumes[0]  # inhale (moving) lungs are larger than exhale


def test_t3_has_all_organs_and_low_initial_overlap(folders: dict[str, dict[str, Path]]) -> None:
    task = load_task(folders["T3"]["l2r"])
    for case_id in task.training:
        labels = _image(task, case_id, "label")
        assert labels.dtype == np.uint8 and set(np.unique(labels)) == set(range(14))
        hu = _image(task, case_id)
        assert abs(np.median(hu[labels == 6]) - 60) < 30 and hu[labels == 8].mean() > 100  # liver, contrast aorta
    organs = list(range(1, 14))
    initial = evaluate_initial(folders["T3"]["l2r"], workers=1)["cases"]  # the Initial row, from the written files
    assert len(initial) == len(task.pairs["val"]) == 3
    for pair in task.pairs["val"]:
        fixed, moving = _image(task, pair.fixed, "label"), _image(task, pair.moving, "label")
        assert pair.fixed[:4] != pair.moving[:4] and not np.array_equal(fixed, moving)  # two subjects
        overlap = _dice(fixed, moving, organs)
        assert overlap < 0.5
        assert initial[f"{pair.fixed}<--{pair.moving}"]["DSC"]["mean"] == pytest.approx(overlap, abs=1e-6)


def test_t4_has_both_hippocampus_labels(folders: dict[str, dict[str, Path]]) -> None:
    task = load_task(folders["T4"]["l2r"])
    for case_id in task.training:
        labels = _image(task, case_id, "label")
        assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
        assert (labels == 1).sum() > (labels == 2).sum() * 0.8  # the head is the bulky part
    dice = [_dice(_image(task, p.fixed, "label"), _image(task, p.moving, "label"), [1, 2]) for p in task.pairs["val"]]
    assert 0.1 < np.mean(dice) < 0.8


# --------------------------------------------------------------------------------- API and CLI


def test_write_demo_replaces_its_own_folders_and_refuses_foreign_ones(tmp_path: Path) -> None:
    first = write_demo(tmp_path, seed=2, layout="l2r2020", tasks=("T4",), subjects=4)
    assert first == [tmp_path / "task_04"] and load_task(first[0]).problems == ()
    again = write_demo(tmp_path, seed=3, layout="l2r2020", tasks="T4", subjects=4)
    assert again == first and read_json(first[0] / "demo_data.json")["seed"] == 3
    foreign = tmp_path / "other" / "task_04"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not written by demo-data"):
        write_demo(tmp_path / "other", layout="l2r2020", tasks=["T4"], subjects=4)
    assert (foreign / "keep.txt").read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "task_04"]  # no staging leftovers
    with pytest.raises(DataError, match="--tasks"):
        write_demo(tmp_path, tasks="T9")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-data", "--out", str(tmp_path), "--tasks", "T4", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "DemoHippocampusMR")
    task = load_task(tmp_path / "DemoHippocampusMR")
    assert len(task.training) == SPEC_BY_KEY["T4"].subjects == 20 and len(task.pairs["val"]) == 3 and task.problems == ()
    assert main(["demo-data", "--out", str(tmp_path), "--tasks", "T1,T9"]) == 1
    assert "--tasks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["demo-data", "--out", str(tmp_path), "--layout", "nifti"])
    assert usage.value.code == 2


@pytest.mark.slow
def test_full_default_collection(tmp_path: Path) -> None:
    """The defaults: 4 tasks with their full subject counts and splits (about 7 s of CPU)."""
    written = write_demo(tmp_path, seed=0)
    assert [p.name for p in written] == [spec.name for spec in SPEC_BY_KEY.values()]
    for root, spec in zip(written, SPEC_BY_KEY.values(), strict=True):
        task = load_task(root)
        assert task.problems == () and task.shape == spec.shape
        assert len(task.training) == spec.subjects * (2 if spec.paired else 1)
        assert len(task.pairs["val"]) == spec.val_subjects
        if spec.key == "T3":
            assert all(set(np.unique(_image(task, c, "label"))) == set(range(14)) for c in task.training)
