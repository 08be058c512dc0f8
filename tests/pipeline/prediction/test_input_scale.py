"""Prediction on a finer or coarser grid than the task's (``predict.input_scale``, ``--input-scale``,
``predict.target_spacing``, ``--target-spacing``): the grid rule, analytic round trips of known
fields back to the fixed grid through the contract, and end-to-end runs with the published weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from learn2reg.contract import disp_filename_l2r, identity_grid
from learn2reg.io import Geometry, load_nifti, save_nifti
from learn2reg.submission import read_manifest
from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.data.preprocess import network_shape, prediction_shape, scaled_shape
from pipeline.prediction import predict as predict_module
from pipeline.prediction.predict import predict
from pipeline.training.import_weights import import_weights
from tests.paths import REPO
from tests.pipeline.training.test_train import SHAPE, make_blob_task

PAIR = ("0004_0000", "0005_0000")


# ---------------------------------------------------------------------- the grid rule


@pytest.mark.parametrize("shape, scale, expected", [
    ((80, 96, 80), 2, (159, 191, 159)),         # a 2 mm OASIS-like task at exactly 1 mm
    ((20, 16, 24), 1, (20, 16, 24)),            # the default keeps the grid
    ((21, 17, 25), 0.5, (11, 9, 13)),           # odd sizes: (N + 1) // 2, half_resolution's grid
    ((20, 16, 24), 0.5, (11, 9, 13)),           # even sizes: (N - 1) / 2 rounded half up
    ((10, 10, 10), (1, 2, 0.5), (10, 19, 6)),   # per axis
    ((1, 8, 8), 3, (1, 22, 22)),                # a single-voxel axis stays one voxel
])
def test_the_network_grid_is_round_of_n_minus_1_times_s_plus_1(shape, scale, expected):
    assert scaled_shape(shape, scale) == expected


def test_the_scaled_grid_spans_the_image_and_has_exactly_spacing_over_s_for_integer_s():
    for n in (7, 80, 96, 161):
        for s in (1, 2, 3):
            (m, *_) = scaled_shape((n, n, n), s)
            assert (n - 1) / (m - 1) == 1 / s  # image spacing units: first and last voxel centres shared


@pytest.mark.parametrize("scale", [0.1, 0, -1, float("nan"), (1, 2)])
def test_a_scale_that_collapses_or_makes_no_sense_is_refused(scale):
    with pytest.raises(ValueError, match="scale"):
        scaled_shape((5, 5, 5), scale)


def test_input_scale_composes_with_half_resolution_and_target_spacing_replaces_it():
    half = {"preprocess": {"half_resolution": True}}
    cfg = config_from_dict({**half, "predict": {"input_scale": 2}})
    assert network_shape((21, 17, 25), cfg.preprocess) == (11, 9, 13)
    assert prediction_shape((21, 17, 25), (1, 1, 1), cfg) == (21, 17, 25)  # half, then twice as fine
    cfg = config_from_dict({**half, "predict": {"target_spacing": 1.0}})
    assert prediction_shape((21, 17, 25), (2.0, 1.0, 0.5), cfg) == (41, 17, 13)  # per axis, from the image grid
    assert prediction_shape((21, 17, 25), (1, 1, 1), config_from_dict({})) == (21, 17, 25)


# ---------------------------------------------------------------------- analytic round trips


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The published displacement weights as a run folder."""
    out = tmp_path_factory.mktemp("run") / "disp"
    import_weights(REPO / "weights" / "LapIRN_disp_fea7.pth", out)
    return out


def _known_field(matrix: np.ndarray, offset: np.ndarray, calls: list):
    """A stand-in for ``predict_field``: ``u(y) = matrix @ y + offset`` in voxels of the grid it is
    given (``y`` voxel coordinates of that grid); records the grid."""

    def predict_field(model, moving, fixed, device, amp, level=None):
        shape = tuple(fixed.shape[2:])
        calls.append(shape)
        y = identity_grid(shape, np.float64)
        u = np.einsum("kj,j...->k...", matrix, y) + offset.reshape(3, 1, 1, 1)
        return torch.from_numpy(u.astype(np.float32))[None]

    return predict_field


def _anisotropic(task: Path, spacing: tuple[float, float, float]) -> None:
    for case in PAIR:
        path = task / "imagesTr" / f"Blob_{case}.nii.gz"
        image, _ = load_nifti(path)
        save_nifti(path, image, Geometry.identity(SHAPE, spacing))


CASES = {
    "input scale 2": ({"input_scale": 2.0}, (1.0, 1.0, 1.0), (39, 31, 47)),
    "input scale 0.5": ({"input_scale": 0.5}, (1.0, 1.0, 1.0), (11, 9, 13)),
    "target spacing, anisotropic": ({"target_spacing": 1.0}, (2.0, 1.0, 1.5), (39, 16, 36)),
}


@pytest.mark.parametrize("field", ["translation", "affine"])
@pytest.mark.parametrize("overrides, spacing, grid", CASES.values(), ids=CASES.keys())
def test_a_known_field_on_the_scaled_grid_comes_back_exactly_on_the_fixed_grid(run, tmp_path, monkeypatch, overrides, spacing, grid, field):
    """Network voxel ``y`` sits at fixed voxel ``x = y / s`` per axis (``s = (n - 1) / (N - 1)``), so
    ``u_net(y) = B y + c`` must come back as ``u(x) = S^-1 (B S x + c)``: ``t / s`` for a translation."""
    task = make_blob_task(tmp_path / "task")
    _anisotropic(task, spacing)
    rng = np.random.default_rng(1)
    matrix = np.zeros((3, 3)) if field == "translation" else rng.uniform(-0.05, 0.05, (3, 3))
    offset = np.array([1.5, -0.75, 0.6])
    calls: list = []
    monkeypatch.setattr(predict_module, "predict_field", _known_field(matrix, offset, calls))
    out = tmp_path / "sub"
    assert predict(task, out, run, "val", device="cpu", **overrides) == 0
    assert calls == [grid]
    s = (np.array(grid) - 1.0) / (np.array(SHAPE) - 1.0)
    x = np.moveaxis(identity_grid(SHAPE, np.float64), 0, -1)
    expected = ((x * s) @ matrix.T + offset) / s
    u, _ = load_nifti(out / disp_filename_l2r(*PAIR))
    assert u.shape == SHAPE + (3,)
    np.testing.assert_allclose(u, expected, atol=1e-4, rtol=0)
    if field == "translation":
        np.testing.assert_allclose(u.reshape(-1, 3).max(0), offset / s, rtol=1e-6)


def test_a_known_translation_survives_a_2020_half_resolution_submission(run, tmp_path, monkeypatch):
    """2020 tasks 1-3 are submitted at half resolution, in full-resolution voxels: still ``t / s``."""
    task = make_blob_task(tmp_path / "task_03", layout="l2r2020")
    offset = np.array([1.5, -0.75, 0.6])
    monkeypatch.setattr(predict_module, "predict_field", _known_field(np.zeros((3, 3)), offset, []))
    assert predict(task, tmp_path / "sub", run, "val", device="cpu", input_scale=2.0) == 0
    arr = np.load(tmp_path / "sub" / "disp_0004_0005.npz")["arr_0"].astype(np.float32)
    assert arr.shape == (3,) + tuple(n // 2 for n in SHAPE)
    np.testing.assert_allclose(arr.reshape(3, -1).T, np.broadcast_to(offset / 2, (arr[0].size, 3)), atol=1e-3)  # float16


# ---------------------------------------------------------------------- end to end, the real network


def test_predict_with_input_scale_2_writes_the_fixed_grid_and_a_new_config_hash(run, tmp_path, monkeypatch):
    task = make_blob_task(tmp_path / "task")
    refined: list = []
    original = predict_module.refine_field
    monkeypatch.setattr(predict_module, "refine_field",
                        lambda field, m, f, *a, **k: refined.append((field.shape, m.shape, f.shape)) or original(field, m, f, *a, **k))
    base = ["predict", "--run", str(run), "--data", str(task), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "s1")]) == 0
    assert main([*base, "--out", str(tmp_path / "s2"), "--input-scale", "2", "--instance-opt-steps", "2"]) == 0
    # the network on the scaled grid (39 x 31 x 47), instance optimisation on the fixed image's
    assert refined == [((1, 3, *SHAPE), (1, 1, *SHAPE), (1, 1, *SHAPE))]
    fields = [load_nifti(tmp_path / s / disp_filename_l2r(*PAIR))[0] for s in ("s1", "s2")]
    assert all(u.shape == SHAPE + (3,) and np.isfinite(u).all() for u in fields)
    hashes = [read_manifest(tmp_path / s / "runtimes.json")["config_hash"] for s in ("s1", "s2")]
    assert hashes[0] != hashes[1]
    assert read_manifest(tmp_path / "s2" / "runtimes.json")["runtimes"][f"{PAIR[0]}<--{PAIR[1]}"]["network_s"] > 0


def test_input_scale_and_target_spacing_exclude_each_other(run, tmp_path, capsys):
    task = make_blob_task(tmp_path / "task")
    argv = ["predict", "--run", str(run), "--data", str(task), "--out", str(tmp_path / "sub"), "--device", "cpu"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--input-scale", "2", "--target-spacing", "1"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    scaled = tmp_path / "scaled"  # a run folder whose configuration already scales
    scaled.mkdir()
    config = json.loads((run / "config.json").read_text())
    config["predict"]["input_scale"] = 2
    (scaled / "config.json").write_text(json.dumps(config))
    assert main(["predict", "--run", str(scaled), *argv[3:], "--target-spacing", "1"]) == 1
    assert "predict.target_spacing: 1.0 (allowed: null when predict.input_scale is not 1" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()
