"""Training stage: schedule, run folder, exact resume after SIGTERM/SIGKILL, torchrun DDP."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from evaluation.metrics import dice, label_counts
from learn2reg.io import DataError, Geometry, save_nifti
from learn2reg.task import load_task
from pipeline.cli import main
from pipeline.config import TrainConfig, config_from_dict
from pipeline.distributed import DistInfo
from pipeline.model.checkpoint import load_checkpoint
from pipeline.model.losses import one_hot, soft_dice
from pipeline.training.pairs import load_training_data, split_pairs
from pipeline.training.train import train
from pipeline.training.trainer import Trainer, learning_rate
from tests.paths import REPO as ROOT

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


FAST = {**TINY, "train": {**TINY["train"], "steps_per_level": [2, 1, 1], "freeze_steps": 1}}


def trained_blob_run(root: Path) -> tuple[Path, Path]:
    """A tiny run trained (``FAST``) on the blob task, both under ``root``: ``(task, run)``."""
    task = make_blob_task(root / "task")
    assert train(task, config_from_dict(FAST), root / "run", device="cpu") == 0
    return task, root / "run"


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


def test_learning_rate_schedules():
    const = TrainConfig(steps_per_level=(10, 10, 10), lr=1e-3)
    assert [learning_rate(const, 2, s) for s in (0, 5, 9)] == [1e-3] * 3
    cos = TrainConfig(steps_per_level=(4, 12, 6), lr=1e-3, lr_schedule="cosine", warmup_steps=2)
    assert learning_rate(cos, 2, 0) == pytest.approx(0.5e-3) and learning_rate(cos, 2, 1) == pytest.approx(1e-3)
    assert learning_rate(cos, 2, 2) == pytest.approx(1e-3)  # the decay starts after the warm-up
    assert learning_rate(cos, 2, 7) == pytest.approx(0.5e-3)  # half-way through the 10 decay steps
    assert learning_rate(cos, 2, 11) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert learning_rate(cos, 3, 2) == pytest.approx(1e-3)  # every level starts again (fresh Adam)
    with pytest.raises(DataError, match="lr_schedule"):
        config_from_dict({"train": {"lr_schedule": "step"}})


def test_the_optimiser_follows_the_schedule_and_the_log_records_it(blob_task, tmp_path):
    raw = {**TINY, "train": {**TINY["train"], "steps_per_level": [2, 3, 4], "lr_schedule": "cosine", "warmup_steps": 1}}
    cfg = config_from_dict(raw)
    assert train(blob_task, cfg, tmp_path / "run", device="cpu") == 0
    rows = pd.read_csv(tmp_path / "run" / "log.csv").query("kind == 'train'")
    expected = [learning_rate(cfg.train, int(r.level), int(r.step) - 1) for r in rows.itertuples()]
    assert rows["lr"].tolist() == pytest.approx(expected)
    assert len(set(expected)) > 3  # really a schedule
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected[-1])


def test_cpu_threads_hold_while_training_only(blob_task, tmp_path, monkeypatch):
    seen = []
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, level: seen.append(torch.get_num_threads()) or step(self, level))
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    cfg = config_from_dict({**TINY, "train": {**TINY["train"], "steps_per_level": [1, 1, 1], "cpu_threads": want}})
    assert train(blob_task, cfg, tmp_path / "run", device="cpu") == 0
    assert seen == [want] * 3 and torch.get_num_threads() == before
    with pytest.raises(DataError, match="cpu_threads"):
        config_from_dict({"train": {"cpu_threads": -1}})


def test_coarse_levels_score_the_dice_term_on_the_input_grid(blob_task, tmp_path):
    """With identity fields the warped one-hot labels are the moving labels themselves, so the
    Dice term at level 1 must be exactly 1 - Dice of the two label maps on the network grid
    (labels averaged down to level 1 could not reach that value)."""
    raw = {**TINY, "train": {**TINY["train"], "augment": {"prob": 0.0}}}
    cfg = config_from_dict(raw)
    data = load_training_data(load_task(blob_task), cfg, tmp_path / "cache")
    data = dataclasses.replace(data, train_pairs=data.train_pairs[:1])
    trainer = Trainer(tmp_path / "run", data, cfg, torch.device("cpu"), DistInfo())
    with torch.no_grad():
        for net in trainer.model.nets:
            net.head[2].weight.zero_()  # every level's residual is 0
    trainer.set_phase(1, 0, new_level=True)
    parts = trainer.train_step(1)
    (fixed_id, moving_id), = data.train_pairs
    fixed, moving = data.cases[fixed_id].label, data.cases[moving_id].label
    expected = 1.0 - np.mean(dice(label_counts(fixed, moving, moving, [1, 2])))
    assert parts["dice"] == pytest.approx(expected, abs=1e-5)
    # why: labels averaged down to level 1 (5 x 4 x 6) keep a large soft Dice loss even when aligned
    pooled = trainer.model.pyramid(one_hot(torch.from_numpy(fixed)[None, None], 3))[0]
    assert soft_dice(pooled, pooled).item() > 0.5


# Exact resume: a run interrupted at global step STOP of 12 (level 2, step 3: after the frozen
# phase, mid-level with Adam state, one step after a checkpoint) ends, resumed through the real
# command line, with the same weights as an uninterrupted run. The schedule resumes too.
RESUMABLE = {**TINY, "train": {**TINY["train"], "lr_schedule": "cosine", "warmup_steps": 2, "checkpoint_every": 2}}
STOP = 7
# A real training process that signals itself right after global step STOP (its validation and
# checkpoint done), through train()'s documented on_step hook: the signal arrives at a known
# step however fast the machine is. SIGTERM runs the real handler; SIGKILL leaves what was on disk.
SIGNAL_AT_STEP = """
import os, sys
from pathlib import Path
from pipeline.config import load_config
from pipeline.training.train import train
data, config, out, sig, at = sys.argv[1:]
def on_step(state):
    if state["global_step"] == int(at):
        os.kill(os.getpid(), int(sig))
sys.exit(train(Path(data), load_config(Path(config)), Path(out), device="cpu", on_step=on_step))
"""
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def straight_run(blob_task, tmp_path_factory) -> tuple[Path, Path]:
    """(config file, run folder) of RESUMABLE trained without interruption."""
    root = tmp_path_factory.mktemp("straight")
    (root / "cfg.json").write_text(json.dumps(RESUMABLE))
    assert train(blob_task, config_from_dict(RESUMABLE), root / "run", device="cpu") == 0
    return root / "cfg.json", root / "run"


def _resume_to_the_end(blob_task: Path, config: Path, run: Path, straight: Path) -> None:
    resumed = subprocess.run(_cli("train", "--data", str(blob_task), "--config", str(config), "--out", str(run), "--device", "cpu", "--resume"),
                             cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["global_step"] == 12
    a, b = _weights(straight), _weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "saved_at"), [(signal.SIGTERM, 143, STOP), (signal.SIGKILL, -9, STOP - 1)], ids=["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_to_the_same_final_weights(blob_task, straight_run, tmp_path, sig, code, saved_at):
    """SIGTERM saves last.pt at the step it arrives (exit 143); SIGKILL leaves the checkpoint of
    the step before (checkpoint_every 2), so the resumed run redoes a lost step."""
    config, straight = straight_run
    run = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", SIGNAL_AT_STEP, str(blob_task), str(config), str(run), str(int(sig)), str(STOP)],
                            cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert killed.returncode == code, killed.stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["global_step"] == saved_at
    assert not (run / "final.json").exists()
    _resume_to_the_end(blob_task, config, run, straight)


@pytest.mark.slow
def test_stop_at_step_exits_cleanly_and_resumes_to_the_same_final_weights(blob_task, straight_run, tmp_path, capsys):
    config, straight = straight_run
    run = tmp_path / "sliced"
    stopped = subprocess.run(_cli("train", "--data", str(blob_task), "--config", str(config), "--out", str(run), "--device", "cpu",
                                  "--stop-at-step", str(STOP)), cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert f"stopped at global step {STOP} (--stop-at-step); continue with --resume" in stopped.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["global_step"] == STOP
    assert not (run / "final.json").exists()
    _resume_to_the_end(blob_task, config, run, straight)
    with pytest.raises(DataError, match="--stop-at-step 12 is not after the run's step 12"):
        train(blob_task, config_from_dict(RESUMABLE), run, resume=True, device="cpu", stop_at_step=12)
    assert main(["train", "--data", str(blob_task), "--config", str(config), "--out", str(tmp_path / "x"), "--stop-at-step", "0"]) == 1
    assert "--stop-at-step 0 is not after the run's step 0" in capsys.readouterr().err and not (tmp_path / "x").exists()


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
