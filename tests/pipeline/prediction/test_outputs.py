"""predict --save-warped / --save-jacobian / --report (pipeline.prediction.outputs): known fields
give known warped images, labels and Jacobian maps, on the fixed grid with the fixed geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from learn2reg.contract import affine_to_field, disp_filename_l2r, warp, warp_labels
from learn2reg.io import Geometry, load_nifti, save_nifti
from learn2reg.task import load_task
from pipeline.cli import main
from pipeline.prediction.outputs import Outputs, pair_paths, write_pair_outputs
from tests.pipeline.training.test_train import SHAPE, make_blob_task

FIELD = disp_filename_l2r("0004_0000", "0005_0000")
ALL = Outputs(warped=True, jacobian=True, report=True)


@pytest.fixture()
def task(tmp_path):
    """The blob task with an anisotropic, shifted fixed geometry (the outputs must carry it)."""
    root = make_blob_task(tmp_path / "task")
    fixed = root / "imagesTr" / "Blob_0004_0000.nii.gz"
    image, _ = load_nifti(fixed)
    geometry = Geometry(SHAPE, (1.5, 1.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (10.0, -5.0, 3.0))
    save_nifti(fixed, image, geometry)
    save_nifti(root / "labelsTr" / "Blob_0004_0000.nii.gz", load_nifti(root / "labelsTr" / "Blob_0004_0000.nii.gz", dtype=None)[0], geometry)
    return root


def outputs_of(task_dir, out, u):
    """Write ``u`` as the pair's field in ``out`` and every output from it; returns them loaded."""
    save_nifti(out / FIELD, u.astype(np.float32))
    task = load_task(task_dir)
    pair = task.pairs["val"][0]
    write_pair_outputs(out, task, pair, out / FIELD, ALL)
    paths = pair_paths(out, pair)
    loaded = {k: load_nifti(paths[k], dtype=None) for k in ("warped", "warped_labels", "jacobian")}
    assert paths["report"].is_file()
    return loaded


def moving_arrays(task_dir):
    image = load_nifti(task_dir / "imagesTr" / "Blob_0005_0000.nii.gz")[0]
    labels = load_nifti(task_dir / "labelsTr" / "Blob_0005_0000.nii.gz", dtype=None)[0]
    return image, labels


def test_zero_field_warps_nothing_and_keeps_the_fixed_geometry(task, tmp_path):
    out = outputs_of(task, tmp_path / "sub", np.zeros(SHAPE + (3,)))
    image, labels = moving_arrays(task)
    fixed_geometry = load_nifti(task / "imagesTr" / "Blob_0004_0000.nii.gz")[1]
    np.testing.assert_array_equal(out["warped"][0], image)
    np.testing.assert_array_equal(out["warped_labels"][0], labels)
    assert out["warped_labels"][0].dtype == labels.dtype
    np.testing.assert_array_equal(out["jacobian"][0], 1.0)
    for data, geometry in out.values():
        assert data.shape == SHAPE and geometry == fixed_geometry


def test_a_translation_shifts_image_and_labels(task, tmp_path):
    t = (2, -1, 3)
    out = outputs_of(task, tmp_path / "sub", np.broadcast_to(np.asarray(t, np.float32), SHAPE + (3,)))
    image, labels = moving_arrays(task)
    inside = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(t, SHAPE, strict=True))  # x + t inside the moving grid
    source = tuple(slice(a.start + s, a.stop + s) for a, s in zip(inside, t, strict=True))
    np.testing.assert_array_equal(out["warped"][0][inside], image[source])
    np.testing.assert_array_equal(out["warped_labels"][0][inside], labels[source])
    outside = np.ones(SHAPE, bool)
    outside[inside] = False
    assert not out["warped"][0][outside].any() and not out["warped_labels"][0][outside].any()  # zero outside
    np.testing.assert_array_equal(out["jacobian"][0], 1.0)


def test_an_affine_field_has_its_determinant_as_jacobian_map(task, tmp_path):
    a = np.array([[1.1, 0.2, 0.0], [0.0, 0.8, 0.1], [0.1, 0.0, 1.3]])
    u = affine_to_field(np.hstack([a, [[0.5], [1.0], [-2.0]]]), SHAPE)
    out = outputs_of(task, tmp_path / "sub", u)
    np.testing.assert_allclose(out["jacobian"][0], np.linalg.det(a), rtol=1e-5)  # everywhere: the field is linear
    image, labels = moving_arrays(task)
    np.testing.assert_array_equal(out["warped"][0], warp(image, u.astype(np.float32)))
    np.testing.assert_array_equal(out["warped_labels"][0], warp_labels(labels, u.astype(np.float32)))


def test_predict_writes_the_outputs_from_the_cli_and_completes_them_on_resume(task, tmp_path, capsys):
    """An affine-only zero-field configuration: no training needed, a known field (zero)."""
    config = tmp_path / "zero.json"
    config.write_text(json.dumps({"predict": {"affine_only": True}}))
    out = tmp_path / "sub"
    args = ["predict", "--data", str(task), "--config", str(config), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--save-warped"]) == 0
    pair = load_task(task).pairs["val"][0]
    paths = pair_paths(out, pair)
    image, labels = moving_arrays(task)
    np.testing.assert_array_equal(load_nifti(paths["warped"])[0], image)
    np.testing.assert_array_equal(load_nifti(paths["warped_labels"], dtype=None)[0], labels)
    assert not paths["jacobian"].exists() and not paths["report"].exists()
    stamp = (out / FIELD).stat().st_mtime_ns
    assert main([*args, "--save-jacobian", "--report"]) == 0  # the pair is skipped, its missing outputs written
    assert (out / FIELD).stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(load_nifti(paths["jacobian"])[0], 1.0)
    assert paths["report"].is_file() and (out / "report" / "index.html").is_file()
    assert json.loads(paths["report"].with_suffix(".json").read_text())["folded_voxels"] == 0
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    assert "--save-warped" in text and "--save-jacobian" in text and "--report" in text
