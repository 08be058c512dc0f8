"""Training stage: schedule, run folder, exact resume after SIGTERM/SIGKILL, torchrun DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from evaluation.dataset import load_task
from evaluation.io import DataError, Geometry, save_nifti
from pipeline.checkpoint import load_checkpoint
from pipeline.config import config_from_dict
from pipeline.train import train
from pipeline.training_data import split_pairs

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (20, 16, 24)


def make_blob_task(root: Path, subjects: int = 5, seed: int = 0, layout: str = "l2r") -> Path:
    """Inter-patient task: two labelled ellipsoids at random offsets per subject, written in
    the current layout or the 2020 layout; validation pair = the last two subjects."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    training = []
    for s in range(1, subjects + 1):
        c = np.array(SHAPE) / 2 + rng.uniform(-2.5, 2.5, 3)
        lab = (np.linalg.norm((grid - c) / [5, 4, 6], axis=-1) < 1).astype(np.uint8)
        lab[np.linalg.norm((grid - c - [0, 0, 4]) / 2.5, axis=-1) < 1] = 2
        img = ndimage.gaussian_filter(lab * 60.0 + rng.normal(0, 3, SHAPE), 1.0).astype(np.float32)
        stem = f"Blob_{s:04d}_0000" if layout == "l2r" else f"img{s:04d}"
        folders = ("imagesTr", "labelsTr") if layout == "l2r" else ("images", "labels")
        save_nifti(root / folders[0] / f"{stem}.nii.gz", img, Geometry.identity(SHAPE))
        save_nifti(root / folders[1] / f"{stem}.nii.gz", lab, Geometry.identity(SHAPE))
        training.append({"image": f"./imagesTr/{stem}.nii.gz", "label": f"./labelsTr/{stem}.nii.gz"})
    if layout != "l2r":
        (root / "pairs_val.csv").write_text(f"fixed,moving\n{subjects - 1},{subjects}\n")
        (root / "task.json").write_text(json.dumps({"name": "Blob2020", "labels": {"1": "big", "2": "small"}, "shape": list(SHAPE)}))
        return root
    meta = {
        "name": "Blob", "tensorImageShape": {"0": list(SHAPE)}, "labels": {"0": {"1": "big", "2": "small"}},
        "training": training,
        "registration_val": [{"fixed": f"./imagesTr/Blob_{subjects - 1:04d}_0000.nii.gz", "moving": f"./imagesTr/Blob_{subjects:04d}_0000.nii.gz"}],
    }
    (root / "Blob_dataset.json").write_text(json.dumps(meta))
    return root


TINY = {
    "model": {"start_channel": 2},
    "loss": {"dice": 1.0},
    "train": {
        "steps_per_level": [4, 4, 4], "freeze_steps": 2, "val_every": 4, "checkpoint_every": 1, "lr": 1e-3,
        "deterministic": True, "augment": {"prob": 0.5},
    },
}


@pytest.fixture(scope="module")
def blob_task(tmp_path_factory):
    return make_blob_task(tmp_path_factory.mktemp("blob"))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def test_pairs_exclude_validation_subjects_and_run_folder_is_complete(blob_task, tmp_path):
    train_pairs, val = split_pairs(load_task(blob_task), exclude_val_subjects=True)
    assert val == (("0004_0000", "0005_0000"),)
    assert len(train_pairs) == 6 and all("0004" not in f + m and "0005" not in f + m for f, m in train_pairs)
    cfg = config_from_dict({**TINY, "train": {**TINY["train"], "steps_per_level": [2, 1, 1], "freeze_steps": 1}})
    assert train(blob_task, cfg, tmp_path / "run", device="cpu") == 0
    run = tmp_path / "run"
    for name in ("config.json", "dataset.json", "log.csv", "curves.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"]["start_channel"] == 2
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["state"]["global_step"] == 4 and ckpt["model_config"]["start_channel"] == 2
    kinds = (run / "log.csv").read_text()
    assert "initial" in kinds and kinds.count(",val,") >= 3
    with pytest.raises(DataError, match="already holds a training run"):
        train(blob_task, cfg, run, device="cpu")


def test_frozen_levels_do_not_change_during_the_freeze_steps(blob_task, tmp_path):
    """Level 2's first freeze_steps update level 2 only; level 1 moves again afterwards."""
    base = {**TINY, "train": {**TINY["train"], "steps_per_level": [2, 2, 1], "freeze_steps": 2, "checkpoint_every": 1}}
    train(blob_task, config_from_dict(base), tmp_path / "a", device="cpu")
    longer = {**base, "train": {**base["train"], "steps_per_level": [2, 3, 1]}}
    train(blob_task, config_from_dict(longer), tmp_path / "b", device="cpu")
    only_l1 = {**base, "train": {**base["train"], "steps_per_level": [2, 0, 0]}}
    ref = tmp_path / "c"
    train(blob_task, config_from_dict(only_l1), ref, device="cpu")
    w_l1, w_a, w_b = _weights(ref), _weights(tmp_path / "a"), _weights(tmp_path / "b")
    l1_keys = [k for k in w_a if k.startswith("nets.0.")]
    l2_keys = [k for k in w_a if k.startswith("nets.1.")]
    assert all(torch.equal(w_l1[k], w_a[k]) for k in l1_keys)  # frozen for both level-2 steps
    assert any(not torch.equal(w_l1[k], w_b[k]) for k in l1_keys)  # the third step trains level 1 again
    assert any(not torch.equal(w_l1[k], w_a[k]) for k in l2_keys)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_final_weights(blob_task, tmp_path, sig):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(TINY))
    train(blob_task, config_from_dict(TINY), tmp_path / "straight", device="cpu")
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli("train", "--data", str(blob_task), "--config", str(cfg_path), "--out", str(run), "--device", "cpu"),
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and load_checkpoint(last)["state"]["global_step"] >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    assert code == (143 if sig == signal.SIGTERM else -9), proc.stderr.read().decode()[-2000:]
    stopped_at = load_checkpoint(last)["state"]["global_step"]
    assert 3 <= stopped_at < 12  # really in the middle
    resumed = subprocess.run(_cli("train", "--data", str(blob_task), "--config", str(cfg_path), "--out", str(run), "--device", "cpu", "--resume"),
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "straight"), _weights(run)
    assert load_checkpoint(last)["state"]["global_step"] == 12
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(blob_task, tmp_path):
    cfg = {**TINY, "train": {**TINY["train"], "steps_per_level": [3, 2, 2], "freeze_steps": 1}}
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "pipeline", "train", "--data", str(blob_task),
           "--config", str(cfg_path), "--out", str(tmp_path / "ddp"), "--device", "cpu"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((tmp_path / "ddp" / "final.json").read_text())
    assert final["world_size"] == 2 and len(final["rank_checksums"]) == 2
    assert final["rank_checksums"][0] == final["rank_checksums"][1]
    assert final["state"]["global_step"] == 7
    single = tmp_path / "single"
    train(blob_task, config_from_dict(cfg), single, device="cpu")
    a, b = _weights(single), _weights(tmp_path / "ddp")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two ranks really saw other pairs (averaged gradients)
