"""Prediction stage: both challenge formats accepted by the evaluator, runtimes manifest,
resume, atomic writes, bad input, foreign checkpoints, affine-only configs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.evaluate import evaluate
from learn2reg.contract import disp_filename_l2r, from_2020
from learn2reg.io import DataError, Geometry, load_nifti, save_nifti
from learn2reg.submission import read_manifest
from learn2reg.task import load_task
from pipeline.config import config_from_dict
from pipeline.model.checkpoint import load_checkpoint, save_checkpoint
from pipeline.prediction import predict as predict_module
from pipeline.prediction.predict import predict
from pipeline.prediction.predictor import load_predictor, run_config
from pipeline.training.train import train
from tests.paths import REPO
from tests.pipeline.training.test_train import FAST, SHAPE, make_blob_task, trained_blob_run


def task_with_two_val_pairs(root: Path) -> Path:
    """The blob task with a second validation pair, 0001_0000 <-- 0002_0000."""
    make_blob_task(root)
    meta = json.loads((root / "Blob_dataset.json").read_text())
    meta["registration_val"].append({"fixed": "./imagesTr/Blob_0001_0000.nii.gz", "moving": "./imagesTr/Blob_0002_0000.nii.gz"})
    (root / "Blob_dataset.json").write_text(json.dumps(meta))
    return root




@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run and the task it was trained on (current layout)."""
    return trained_blob_run(tmp_path_factory.mktemp("pred"))


def test_predict_writes_a_current_format_submission_the_evaluator_accepts(trained, tmp_path):
    task, run = trained
    out = tmp_path / "sub"
    assert predict(task, out, run, "val", device="cpu") == 0
    field = out / disp_filename_l2r("0004_0000", "0005_0000")
    u, _ = load_nifti(field)
    assert u.shape == SHAPE + (3,) and u.dtype == np.float32 and np.isfinite(u).all()
    manifest = read_manifest(out / "runtimes.json")
    rt = manifest["runtimes"]["0004_0000<--0005_0000"]
    assert rt["total_s"] >= rt["network_s"] > 0 and manifest["device"] == "cpu"
    assert manifest["checkpoint"].endswith("best.pt") and len(manifest["config_hash"]) == 16
    result = evaluate(out, task, workers=1)
    case = result["cases"]["0004_0000<--0005_0000"]
    assert {"DSC", "LogJacDetStd"} <= set(case) and case["runtime"]["mean"] == pytest.approx(rt["total_s"])
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # atomic writes leave no temporaries


def test_predict_writes_a_2020_submission_at_full_resolution_when_the_task_does(trained, tmp_path):
    _, run = trained
    task2020 = make_blob_task(tmp_path / "task_04", layout="l2r2020")
    out = tmp_path / "sub"
    assert predict(task2020, out, run, "val", device="cpu") == 0
    path = out / "disp_0004_0005.npz"
    arr = np.load(path)["arr_0"]
    assert arr.dtype == np.float16 and arr.shape == (3,) + SHAPE  # the run is at full resolution
    result = evaluate(out, task2020, workers=1)
    assert "0004_0000<--0005_0000" in result["cases"]


def test_half_resolution_runs_write_half_resolution_2020_fields(tmp_path):
    task2020 = make_blob_task(tmp_path / "task_03", layout="l2r2020")
    cfg = {**FAST, "preprocess": {"half_resolution": True}}
    assert train(task2020, config_from_dict(cfg), tmp_path / "run", device="cpu") == 0
    out = tmp_path / "sub"
    assert predict(task2020, out, tmp_path / "run", "val", device="cpu") == 0
    arr = np.load(out / "disp_0004_0005.npz")["arr_0"]
    assert arr.dtype == np.float16 and arr.shape == (3,) + tuple(n // 2 for n in SHAPE)
    assert from_2020(arr).shape == SHAPE + (3,)
    assert "0004_0000<--0005_0000" in evaluate(out, task2020, workers=1)["cases"]


def test_predict_resumes_refuses_another_configuration_and_overwrites_only_when_asked(trained, tmp_path):
    task, run = trained
    out = tmp_path / "sub"
    assert predict(task, out, run, "val", device="cpu") == 0
    field = out / disp_filename_l2r("0004_0000", "0005_0000")
    first = read_manifest(out / "runtimes.json")
    stamp = field.stat().st_mtime_ns
    assert predict(task, out, run, "val", device="cpu") == 0
    assert field.stat().st_mtime_ns == stamp and read_manifest(out / "runtimes.json") == first  # skipped
    with pytest.raises(DataError, match="another configuration.*--overwrite"):
        predict(task, out, run, "val", device="cpu", instance_opt_steps=2)
    assert field.stat().st_mtime_ns == stamp and read_manifest(out / "runtimes.json") == first  # nothing touched
    assert predict(task, out, run, "val", device="cpu", overwrite=True, instance_opt_steps=2) == 0
    assert field.stat().st_mtime_ns != stamp
    assert read_manifest(out / "runtimes.json")["config_hash"] != first["config_hash"]


def test_a_bad_pair_is_reported_by_name_and_the_others_still_run(trained, tmp_path, capsys):
    task, run = trained
    broken = task_with_two_val_pairs(tmp_path / "task")
    bad = np.ones(SHAPE, np.float32)
    bad[3, 3, 3] = np.nan
    save_nifti(broken / "imagesTr" / "Blob_0001_0000.nii.gz", bad, Geometry.identity(SHAPE))
    out = tmp_path / "sub"
    assert predict(broken, out, run, "val", device="cpu") == 1
    printed = capsys.readouterr().err
    assert "0001_0000<--0002_0000" in printed and "Blob_0001_0000.nii.gz: contains NaN" in printed
    assert (out / disp_filename_l2r("0004_0000", "0005_0000")).exists()
    assert not (out / disp_filename_l2r("0001_0000", "0002_0000")).exists()
    assert list(read_manifest(out / "runtimes.json")["runtimes"]) == ["0004_0000<--0005_0000"]


def test_a_checkpoint_from_before_the_numerics_keys_predicts_with_its_legacy_numerics(trained, tmp_path, monkeypatch):
    """Its model ran with align_corners=True and zero padding; the field comes from predict_field
    (the function validation uses) under predict.amp."""
    task, run = trained
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    ckpt["model_config"] = {k: v for k, v in ckpt["model_config"].items() if k not in ("align_corners", "warp_padding")}
    old = tmp_path / "old.pt"
    save_checkpoint(old, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    p = load_predictor(run_config(run, {}), run, load_task(task), torch.device("cpu"), str(old))
    assert (p.model.config.align_corners, p.model.config.warp_padding) == (True, "zeros")
    calls = []
    original = predict_module.predict_field
    monkeypatch.setattr(predict_module, "predict_field", lambda *a, **k: calls.append(a[4]) or original(*a, **k))
    assert predict(task, tmp_path / "sub", run, "val", device="cpu", checkpoint=str(old)) == 0
    assert calls == [p.cfg.predict.amp]


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("payload", ["plain", "pickle"])
def test_a_checkpoint_that_is_not_ours_is_refused(trained, tmp_path, payload):
    task, run = trained
    fake = tmp_path / "fake.pt"
    if payload == "plain":
        torch.save({"state_dict": {}}, fake)
        expected = "not a l2r-lapirn-checkpoint"
    else:
        fake.write_bytes(pickle.dumps({"model": _Evil()}))
        expected = "not a loadable checkpoint"
    with pytest.raises(DataError, match=expected):
        predict(task, tmp_path / "sub", run, "val", device="cpu", checkpoint=str(fake))
    assert not (tmp_path / "sub").exists() or not any((tmp_path / "sub").iterdir())


def test_affine_only_configuration_needs_no_run_and_recovers_a_translation(tmp_path):
    """Fixed = moving shifted by a known translation; the affine-only prediction finds it."""
    root = make_blob_task(tmp_path / "task")
    moving, geom = load_nifti(root / "imagesTr" / "Blob_0005_0000.nii.gz")
    from scipy import ndimage

    save_nifti(root / "imagesTr" / "Blob_0004_0000.nii.gz", ndimage.shift(moving, (2.0, -1.0, 1.5), order=1), geom)
    cfg = tmp_path / "affine.json"
    cfg.write_text(json.dumps({"predict": {"affine": "rigid", "affine_only": True}}))
    out = tmp_path / "sub"
    assert predict(root, out, None, "val", device="cpu", config_file=cfg) == 0
    u, _ = load_nifti(out / disp_filename_l2r("0004_0000", "0005_0000"))
    core = u[6:-6, 5:-5, 6:-6].reshape(-1, 3)
    np.testing.assert_allclose(core.mean(axis=0), (-2.0, 1.0, -1.5), atol=0.3)


def test_an_implausible_pre_alignment_falls_back_is_named_and_exits_3(tmp_path, capsys):
    """Moving = fixed turned by 30 degrees: beyond the default 15 degree bound. The pair is
    predicted (the fallback's transform), named on stderr and in runtimes.json, exit 3."""
    root = make_blob_task(tmp_path / "task")
    fixed, geom = load_nifti(root / "imagesTr" / "Blob_0004_0000.nii.gz")
    from scipy import ndimage

    save_nifti(root / "imagesTr" / "Blob_0005_0000.nii.gz", ndimage.rotate(fixed, 30.0, axes=(1, 2), reshape=False, order=1), geom)
    cfg = tmp_path / "affine.json"
    cfg.write_text(json.dumps({"predict": {"affine": "rigid", "affine_only": True}}))
    out = tmp_path / "sub"
    assert predict(root, out, None, "val", device="cpu", config_file=cfg) == 3
    assert "implausible pre-alignment: 0004_0000<--0005_0000: rotation" in capsys.readouterr().err
    note = json.loads((out / "runtimes.json").read_text())["affine"]["0004_0000<--0005_0000"]
    assert note["action"] in ("fallback-translation", "fallback-initial") and "bound (15 deg)" in note["reasons"][0]
    assert (out / disp_filename_l2r("0004_0000", "0005_0000")).exists()


@pytest.mark.parametrize(("settings", "code", "action"), [({"affine_max_rotation_deg": 45.0}, 0, "accepted"),
                                                          ({"affine_on_implausible": "warn"}, 3, "warned")])
def test_the_run_configuration_sets_the_pre_alignments_bounds_and_policy(tmp_path, capsys, settings, code, action):
    """The same 30 degree pair: a 45 degree bound (``predict.affine_max_rotation_deg``) makes the
    result plausible (exit 0, nothing named); ``predict.affine_on_implausible`` "warn" keeps it,
    named, exit 3. The keys reach the affine stage (not only the default settings)."""
    root = make_blob_task(tmp_path / "task")
    fixed, geom = load_nifti(root / "imagesTr" / "Blob_0004_0000.nii.gz")
    from scipy import ndimage

    save_nifti(root / "imagesTr" / "Blob_0005_0000.nii.gz", ndimage.rotate(fixed, 30.0, axes=(1, 2), reshape=False, order=1), geom)
    cfg = tmp_path / "affine.json"
    cfg.write_text(json.dumps({"predict": {"affine": "rigid", "affine_only": True, **settings}}))
    out = tmp_path / "sub"
    assert predict(root, out, None, "val", device="cpu", config_file=cfg) == code
    named = "implausible pre-alignment: 0004_0000<--0005_0000: rotation" in capsys.readouterr().err
    assert named == (code == 3)
    assert json.loads((out / "runtimes.json").read_text())["affine"]["0004_0000<--0005_0000"]["action"] == action


def test_refuse_is_aligns_policy_not_predicts(tmp_path):
    """predict writes a field for every pair: "refuse" (align's) is not a predict setting."""
    from pipeline.config import load_config

    cfg = tmp_path / "affine.json"
    cfg.write_text(json.dumps({"predict": {"affine": "rigid", "affine_on_implausible": "refuse"}}))
    with pytest.raises(DataError, match="affine_on_implausible"):
        load_config(cfg)


@pytest.mark.slow
def test_torchrun_shards_the_pairs_and_merges_one_manifest(trained, tmp_path):
    import os
    import subprocess
    import sys

    task, run = trained
    data = task_with_two_val_pairs(tmp_path / "task")
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "sub"
    # --run-dir, not --run: torchrun's own parser would take "--run" for an abbreviation of --run-path
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "pipeline", "predict", "--data", str(data),
           "--run-dir", str(run), "--out", str(out), "--device", "cpu"]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [read_manifest(out / f"runtimes.rank{r}.json")["runtimes"] for r in (0, 1)]
    assert [len(r) for r in ranks] == [1, 1] and set(ranks[0]) != set(ranks[1])  # one pair per rank
    merged = read_manifest(out / "runtimes.json")["runtimes"]
    assert set(merged) == {"0004_0000<--0005_0000", "0001_0000<--0002_0000"}
    assert {"0004_0000<--0005_0000", "0001_0000<--0002_0000"} == set(evaluate(out, data, workers=1)["cases"])


@pytest.mark.cuda
@pytest.mark.parametrize(("amp", "tol"), [("none", 0.01), ("bf16", 0.03)])
def test_predict_on_cuda_gives_the_cpu_fields_on_a_demo_task(tmp_path, amp, tol):
    """``predict --device cuda`` end to end (the real command line) on the T4-like demo task, against
    ``--device cpu`` on the same run. The CPU always computes in float32; on the GPU the
    convolutions may use TF32 (amp "none") or run in bfloat16. Measured with CPU autocast standing
    in (float16 for TF32's 10-bit mantissa): at most 0.04 % (fp16) and 0.46 % (bf16) of the
    field's largest component, about 5 voxels; allowed: 1 % and 3 %."""
    import os
    import subprocess
    import sys

    from pipeline.demo.tasks import SPEC_BY_KEY, generate_task, write_task

    write_task(generate_task(SPEC_BY_KEY["T4"], seed=0, subjects=5), tmp_path / "task")
    cfg = {"preprocess": {"half_resolution": True}, "model": {"start_channel": 4}, "loss": {"dice": 1.0},
           "train": {"steps_per_level": [2, 2, 20], "freeze_steps": 1, "val_every": 100, "checkpoint_every": 100, "lr": 1e-3},
           "predict": {"amp": amp}}
    assert train(tmp_path / "task", config_from_dict(cfg), tmp_path / "run", device="cpu") == 0
    fields = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        cmd = [sys.executable, "-m", "pipeline", "predict", "--data", str(tmp_path / "task"), "--run", str(tmp_path / "run"),
               "--out", str(out), "--device", device]
        done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert read_manifest(out / "runtimes.json")["device"].startswith(device)
        fields[device] = {p.name: load_nifti(p)[0] for p in sorted(out.glob("disp_*.nii.gz"))}
    assert len(fields["cpu"]) == 3 and fields["cpu"].keys() == fields["cuda"].keys()
    for name, u in fields["cpu"].items():
        size = float(np.abs(u).max())
        assert size > 1.0, name  # a field worth comparing
        assert float(np.abs(fields["cuda"][name] - u).max()) < tol * size, name
