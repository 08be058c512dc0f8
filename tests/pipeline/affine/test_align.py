"""The align stage and its SimpleITK I/O: SimpleITK against our NIfTI reader and our contract,
.tfm round trips, stage outputs, bad input, and the demo T1 (MR / US-like) landmark TRE."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from learn2reg.contract import affine_to_field, physical_to_voxel_affine, sample_field, warp
from learn2reg.io import DataError, Geometry, load_nifti, read_json, read_points, save_nifti, write_json, write_points
from learn2reg.task import Pair, load_task
from pipeline import cli
from pipeline.affine.align import (
    _config_from_args,
    align_task,
    read_transform,
    resample_sitk,
    to_sitk_image,
    transform_matrix,
    write_transform,
)
from pipeline.affine.fov import is_ultrasound, pair_config
from pipeline.affine.registration import AffineConfig, make_transform
from pipeline.config import load_config
from tests.paths import REPO
from tests.pipeline.affine.test_registration import SMALL_GEOM, centred_geometry, render, rigid, rotation_error_deg

MOVING_SMALL = centred_geometry((36, 44, 38), (1.6, 1.4, 1.5), Rotation.from_euler("x", 180, degrees=True).as_matrix(), (2.0, 1.0, -1.0))
OBLIQUE = Rotation.from_euler("xyz", [20, -10, 30], degrees=True).as_matrix()


def texture(shape, seed=0) -> np.ndarray:
    return ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0).astype(np.float32)


def affine_matrix(mode: str) -> np.ndarray:
    m = rigid((8, -5, 12), (3.0, -2.0, 4.0))
    if mode == "affine":
        m[:3, :3] = m[:3, :3] @ np.array([[1.1, 0.05, 0.0], [0.0, 0.92, 0.06], [0.04, 0.0, 1.03]])
    return m


def make_task(root, subjects=2, modality=("MR", "CT")):
    """A current-layout task: per subject a fixed image (_0000), a moving image (_0001) on
    another grid moved by a known rigid transform, and exact landmark correspondences."""
    images, entries, pairs, truths = root / "imagesTr", [], [], {}
    for s in range(1, subjects + 1):
        true = rigid((3 * s, -2, 4), (1.5 * s, -1.0, 2.0))
        names = [f"Toy_{s:04d}_{m:04d}" for m in (0, 1)]
        save_nifti(images / f"{names[0]}.nii.gz", render(SMALL_GEOM, "A"), SMALL_GEOM)
        save_nifti(images / f"{names[1]}.nii.gz", render(MOVING_SMALL, "B", true), MOVING_SMALL)
        fixed_pts = np.random.default_rng(s).uniform(10, 30, (8, 3))
        voxel = physical_to_voxel_affine(true, SMALL_GEOM.index_to_physical, MOVING_SMALL.index_to_physical)
        write_points(root / "landmarksTr" / f"{names[0]}.csv", fixed_pts)
        write_points(root / "landmarksTr" / f"{names[1]}.csv", fixed_pts @ voxel[:3, :3].T + voxel[:3, 3])
        entries += [{"image": f"./imagesTr/{n}.nii.gz", "landmarks": f"./landmarksTr/{n}.csv"} for n in names]
        pairs.append({"fixed": f"./imagesTr/{names[0]}.nii.gz", "moving": f"./imagesTr/{names[1]}.nii.gz"})
        truths[f"{s:04d}_0000<--{s:04d}_0001"] = true
    meta = {
        "name": "Toy", "tensorImageShape": {"0": list(SMALL_GEOM.shape)}, "modality": {"0": modality[0], "1": modality[1]},
        "pairings": "paired", "training": entries, "registration_val": pairs,
    }
    write_json(root / "Toy_dataset.json", meta)
    return truths


# ------------------------------------------------------------------------- SimpleITK vs our conventions


def test_sitk_image_from_our_arrays_matches_simpleitks_own_nifti_reader(tmp_path):
    geom = Geometry((7, 9, 11), (0.8, 1.7, 2.5), tuple(OBLIQUE.ravel()), (-30.0, 12.5, 4.0))
    array = np.random.default_rng(0).random(geom.shape).astype(np.float32)
    save_nifti(tmp_path / "img.nii.gz", array, geom)
    read = sitk.ReadImage(str(tmp_path / "img.nii.gz"))
    ours = to_sitk_image(array, geom)
    np.testing.assert_allclose(read.GetSpacing(), ours.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(read.GetOrigin(), ours.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), ours.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read).transpose(2, 1, 0), array)  # z, y, x -> our order
    for index in ((0, 0, 0), (6, 2, 9), (3, 8, 1)):
        expected = (geom.index_to_physical @ np.append(index, 1.0))[:3]
        np.testing.assert_allclose(read.TransformIndexToPhysicalPoint(index), expected, atol=1e-4)


@pytest.mark.parametrize("mode", ["rigid", "affine"])
def test_simpleitk_resampling_equals_the_contract_warp_of_the_voxel_matrix(mode):
    fixed_geom = centred_geometry((30, 26, 28), (1.2, 1.5, 1.0), OBLIQUE, (3.0, -2.0, 1.0))
    moving_geom = centred_geometry((34, 30, 24), (1.0, 1.3, 1.4), Rotation.from_euler("z", -70, degrees=True).as_matrix(), (-1.0, 0.5, 2.0))
    moving = texture(moving_geom.shape)
    matrix = affine_matrix(mode)
    transform = make_transform(matrix, (1.0, 2.0, -3.0), mode)
    assert isinstance(transform, sitk.Euler3DTransform if mode == "rigid" else sitk.AffineTransform)
    by_sitk = resample_sitk(moving, moving_geom, fixed_geom, transform)
    voxel = physical_to_voxel_affine(matrix, fixed_geom.index_to_physical, moving_geom.index_to_physical)
    by_contract = warp(moving, affine_to_field(voxel, fixed_geom.shape))
    coords = np.moveaxis(np.indices(fixed_geom.shape), 0, -1) @ voxel[:3, :3].T + voxel[:3, 3]
    inside = np.all((coords >= 0.5) & (coords <= np.asarray(moving_geom.shape) - 1.5), axis=-1)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(by_sitk[inside], by_contract[inside], atol=1e-4)
    assert np.all(by_sitk[~np.all((coords > -0.5) & (coords < np.asarray(moving_geom.shape) - 0.5), axis=-1)] == 0)


@pytest.mark.parametrize("mode", ["rigid", "affine"])
def test_transform_files_round_trip(tmp_path, mode):
    matrix = affine_matrix(mode)
    path = tmp_path / "t" / "pair.tfm"
    write_transform(path, make_transform(matrix, (4.0, -3.0, 10.0), mode))
    assert ("Euler3DTransform" if mode == "rigid" else "AffineTransform") in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["pair.tfm"]  # no temporary left over
    np.testing.assert_allclose(transform_matrix(read_transform(path)), matrix, atol=1e-9)


def test_reading_a_bad_transform_file_names_it(tmp_path):
    (tmp_path / "bad.tfm").write_text("not a transform\n")
    with pytest.raises(DataError, match="bad.tfm"):
        read_transform(tmp_path / "bad.tfm")
    with pytest.raises(DataError, match="missing.tfm"):
        read_transform(tmp_path / "missing.tfm")


# ------------------------------------------------------------------------- the stage


def test_align_task_writes_consistent_transforms_images_and_summary(tmp_path):
    truths = make_task(tmp_path / "Toy")
    out = tmp_path / "out"
    summary = align_task(tmp_path / "Toy", out, "val")
    assert summary["errors"] == {} and set(summary["pairs"]) == set(truths)
    assert read_json(out / "align_summary.json") == json.loads(json.dumps(summary))
    assert summary["config"] == AffineConfig().to_dict()
    for key, true in truths.items():
        fixed_id, moving_id = key.split("<--")
        stem = f"{fixed_id}_{moving_id}"
        entry = read_json(out / "transforms" / f"{stem}.json")
        matrix, voxel = np.array(entry["matrix_physical"]), np.array(entry["voxel_matrix"])
        moving, moving_geom = load_nifti(tmp_path / "Toy" / "imagesTr" / f"Toy_{moving_id}.nii.gz")
        np.testing.assert_allclose(voxel, physical_to_voxel_affine(matrix, SMALL_GEOM.index_to_physical, moving_geom.index_to_physical), atol=1e-4)
        transform = read_transform(out / "transforms" / f"{stem}.tfm")
        np.testing.assert_allclose(transform_matrix(transform), matrix, atol=1e-6)
        aligned, aligned_geom = load_nifti(out / "images" / f"{stem}_moving_aligned.nii.gz")
        np.testing.assert_allclose(aligned_geom.index_to_physical, SMALL_GEOM.index_to_physical, atol=1e-4)
        np.testing.assert_allclose(aligned, warp(moving, affine_to_field(voxel, SMALL_GEOM.shape)), atol=1e-5)
        by_sitk = resample_sitk(moving, moving_geom, SMALL_GEOM, transform)
        inner = (slice(6, -6),) * 3
        np.testing.assert_allclose(by_sitk[inner], aligned[inner], atol=1e-3)
        assert rotation_error_deg(matrix, true) < 1.0
        # TRE again, independently: the contract's cubic sampling of the affine field.
        fixed_pts = read_points(tmp_path / "Toy" / "landmarksTr" / f"Toy_{fixed_id}.csv")
        moving_pts = read_points(tmp_path / "Toy" / "landmarksTr" / f"Toy_{moving_id}.csv")
        u = affine_to_field(voxel, SMALL_GEOM.shape)
        tre = np.linalg.norm((fixed_pts + sample_field(u, fixed_pts) - moving_pts) * moving_geom.spacing, axis=1).mean()
        assert entry["tre_aligned_mm"] == pytest.approx(tre, rel=1e-5, abs=1e-5)
        assert tre < 0.5 < entry["tre_initial_mm"]


def test_align_cli_reports_a_bad_image_and_still_processes_the_other_pairs(tmp_path, capsys):
    make_task(tmp_path / "Toy")
    bad = tmp_path / "Toy" / "imagesTr" / "Toy_0002_0001.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    out = tmp_path / "out"
    assert cli.main(["align", "--data", str(tmp_path / "Toy"), "--out", str(out)]) == 1
    assert "Toy_0002_0001.nii.gz" in capsys.readouterr().err
    summary = read_json(out / "align_summary.json")
    assert set(summary["pairs"]) == {"0001_0000<--0001_0001"}
    assert "Toy_0002_0001.nii.gz" in summary["errors"]["0002_0000<--0002_0001"]
    written = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert written == sorted(["align_summary.json", "0001_0000_0001_0001.tfm", "0001_0000_0001_0001.json", "0001_0000_0001_0001_moving_aligned.nii.gz"])


def test_align_cli_rejects_unknown_config_keys_and_empty_splits(tmp_path, capsys):
    make_task(tmp_path / "Toy", subjects=1)
    write_json(tmp_path / "affine.json", {"mode": "rigid", "learning_rate": 0.1})
    out = tmp_path / "out"
    assert cli.main(["align", "--data", str(tmp_path / "Toy"), "--out", str(out), "--config", str(tmp_path / "affine.json")]) == 1
    err = capsys.readouterr().err
    assert "affine.json" in err and "learning_rate" in err
    assert not out.exists()
    with pytest.raises(DataError, match="no test pairs"):
        align_task(tmp_path / "Toy", out, "test")


def test_field_of_view_follows_the_modality_table(tmp_path):
    make_task(tmp_path / "Toy", subjects=1, modality=("MR", "US"))
    task = load_task(tmp_path / "Toy")
    pair = Pair("0001_0000", "0001_0001")
    assert is_ultrasound(task, task.case("0001_0001")) and not is_ultrasound(task, task.case("0001_0000"))
    auto = pair_config(task, pair, AffineConfig(), "auto")
    assert auto.moving_fov and not auto.fixed_fov and auto.resolved_metric() == "ngf"
    assert not pair_config(task, pair, AffineConfig(moving_fov=True), "off").moving_fov
    assert pair_config(task, pair, AffineConfig(), "on").fixed_fov


@pytest.mark.slow
def test_align_on_the_demo_t1_val_pairs_cuts_the_landmark_tre(tmp_path):
    """MR (fixed) vs US-like (moving, speckle, fan): rigid NGF with the fan as field of view
    (auto, by modality) and a +-10 mm translation search."""
    from pipeline.demo.tasks import write_demo

    root = write_demo(tmp_path / "demo", seed=0, tasks=("T1",))[0]
    summary = align_task(root, tmp_path / "out", "val", AffineConfig(search_radius=10.0))
    task = load_task(root)
    assert summary["errors"] == {} and len(summary["pairs"]) == len(task.pairs["val"]) > 0
    for pair in task.pairs["val"]:
        entry = summary["pairs"][pair.key]
        assert entry["config"]["moving_fov"] and entry["metric"] == "ngf"
        _, moving_geom = load_nifti(task.case(pair.moving).image)
        fixed_pts, moving_pts = read_points(task.case(pair.fixed).landmarks), read_points(task.case(pair.moving).landmarks)
        u = affine_to_field(np.array(entry["voxel_matrix"]), entry["fixed_shape"])
        before = np.linalg.norm((fixed_pts - moving_pts) * moving_geom.spacing, axis=1).mean()
        after = np.linalg.norm((fixed_pts + sample_field(u, fixed_pts) - moving_pts) * moving_geom.spacing, axis=1).mean()
        assert (entry["tre_initial_mm"], entry["tre_aligned_mm"]) == pytest.approx((before, after), rel=1e-6)
        assert after < 0.6 * before  # cut by more than 40 %


# ------------------------------------------------------------------------- --config: affine settings or a run configuration


def _align_args(config, **given) -> argparse.Namespace:
    args = {"config": config, "mode": None, "search": None, "init": None, "mask": False, "threads": None, **given}
    return argparse.Namespace(**args)


@pytest.mark.parametrize(
    ("content", "given", "expected"),
    [
        # a run configuration: as predict aligns (mode, search radius, the fixed mask)
        ({"_comment": "x", "predict": {"affine": "rigid", "affine_search_mm": 10.0, "affine_only": True}}, {},
         {"mode": "rigid", "search_radius": 10.0, "use_fixed_mask": True}),
        ({"train": {"seed": 3}, "predict": {"affine": "affine"}}, {"search": 4.0, "threads": 2},
         {"mode": "affine", "search_radius": 4.0, "use_fixed_mask": True, "threads": 2}),
        ({"predict": {"affine": "none"}}, {"mode": "rigid"}, {"mode": "rigid", "search_radius": 0.0, "use_fixed_mask": True}),
        # AffineConfig settings, as before (notes allowed)
        ({"_comment": "x", "mode": "affine", "levels": 2, "iterations": [5, 5]}, {"init": "com"},
         {"mode": "affine", "levels": 2, "iterations": (5, 5), "init": "com", "use_fixed_mask": False}),
    ],
)
def test_align_config_takes_affine_settings_or_a_run_configuration(tmp_path, content, given, expected):
    write_json(tmp_path / "cfg.json", content)
    config = _config_from_args(_align_args(tmp_path / "cfg.json", **given))
    assert config == dataclasses.replace(AffineConfig(), **expected)


def test_align_config_from_the_demo_t1_run_configuration_is_what_predict_uses():
    config = _config_from_args(_align_args(REPO / "configs" / "demo_t1_curious.json"))
    predict_cfg = load_config(REPO / "configs" / "demo_t1_curious.json").predict
    assert (config.mode, config.search_radius) == (predict_cfg.affine, predict_cfg.affine_search_mm) == ("rigid", 10.0)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"predict": {"affine": "none"}}, ['predict.affine is "none"', "--mode"]),
        ({"predict": {"affine": "sideways", "affine_search_mm": -1}}, ["predict.affine", "sideways", "predict.affine_search_mm"]),
        ({"mode": "rigid", "predict": {"affine": "rigid"}}, ["mode", "unknown key"]),
        ([1, 2], ["JSON object"]),
    ],
)
def test_align_config_problems_name_the_file_and_the_keys(tmp_path, content, words):
    write_json(tmp_path / "cfg.json", content)
    with pytest.raises(DataError) as caught:
        _config_from_args(_align_args(tmp_path / "cfg.json"))
    assert all(w in str(caught.value) for w in ["cfg.json", *words]), str(caught.value)


def test_align_cli_with_a_run_configuration(tmp_path):
    make_task(tmp_path / "Toy", subjects=1)
    write_json(tmp_path / "run.json", {"predict": {"affine": "affine", "affine_search_mm": 0.0}})
    out = tmp_path / "out"
    assert cli.main(["align", "--data", str(tmp_path / "Toy"), "--out", str(out), "--config", str(tmp_path / "run.json")]) == 0
    summary = read_json(out / "align_summary.json")
    assert summary["config"]["mode"] == "affine" and summary["config"]["use_fixed_mask"] is True
    assert summary["pairs"]["0001_0000<--0001_0001"]["tre_aligned_mm"] < 0.5


# ------------------------------------------------------------------------- the iUS-MR demo: fields of view from the images


@pytest.fixture(scope="module")
def remind_demo(tmp_path_factory):
    from pipeline.demo.tasks import write_demo

    return write_demo(tmp_path_factory.mktemp("remind"), seed=0, layout="remind2reg")[0]


def _renamed(root, to, modality):
    """A copy of the task whose modality table names the ultrasound ``modality``."""
    import shutil

    shutil.copytree(root, to)
    meta_path = next(to.glob("*_dataset.json"))
    meta = read_json(meta_path)
    meta["modality"]["0"] = modality
    write_json(meta_path, meta)
    return to


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["3D iUS", "intra-op image"])
def test_align_with_defaults_lowers_the_landmark_error_of_every_ius_mr_pair(remind_demo, tmp_path, modality):
    """ReMIND2Reg-like: fixed ultrasound (zero outside a cone, a known rigid error and brain
    shift), moving ceT1/T2 MR. Default options, with and without a modality name that says
    ultrasound: the cone is found from the image, every pair ends closer than it started, and
    any implausible result is named."""
    root = _renamed(remind_demo, tmp_path / "task", modality)
    summary = align_task(root, tmp_path / "out", "val")
    task = load_task(root)
    assert summary["errors"] == {} and len(summary["pairs"]) == len(task.pairs["val"]) == 4
    for pair in task.pairs["val"]:
        entry = summary["pairs"][pair.key]
        assert entry["fov"]["fixed"]["has_fov"] and not entry["fov"]["moving"]["has_fov"], entry["fov"]
        assert ("says ultrasound" in entry["fov"]["fixed"]["reason"]) == (modality == "3D iUS")
        assert entry["tre_aligned_mm"] < entry["tre_initial_mm"], (pair.key, entry["tre_initial_mm"], entry["tre_aligned_mm"])
        assert (pair.key in summary["implausible"]) == bool(entry["implausible"])


def test_align_cli_exits_3_naming_an_implausible_pair(tmp_path, capsys):
    """A rotation beyond a 2 degree bound: reported on stderr and in the summary, exit 3."""
    make_task(tmp_path / "Toy", subjects=1)  # a true rotation of (3, -2, 4) degrees
    out = tmp_path / "out"
    code = cli.main(["align", "--data", str(tmp_path / "Toy"), "--out", str(out), "--max-rotation", "2"])
    captured = capsys.readouterr()
    assert code == 3 and "implausible: 0001_0000<--0001_0001: rotation" in captured.err
    summary = read_json(out / "align_summary.json")
    entry = summary["implausible"]["0001_0000<--0001_0001"]
    assert entry["action"] in ("fallback-translation", "fallback-initial") and "bound (2 deg)" in entry["reasons"][0]
    assert summary["policy"]["on_implausible"] == "fallback" and summary["config"]["max_rotation_deg"] == 2.0
    assert set(summary["pairs"]) == {"0001_0000<--0001_0001"}  # written, with the fallback's transform
    code = cli.main(["align", "--data", str(tmp_path / "Toy"), "--out", str(out), "--overwrite", "--max-rotation", "2",
                     "--on-implausible", "refuse"])
    assert code == 3 and "refused" in capsys.readouterr().err
    summary = read_json(out / "align_summary.json")
    assert summary["pairs"] == {} and summary["implausible"]["0001_0000<--0001_0001"]["action"] == "refused"
