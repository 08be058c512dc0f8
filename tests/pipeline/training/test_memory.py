"""The memory check of ``train`` (``pipeline.training.memory``): refused before the run folder
exists, the skip option, ``memory.json`` with the estimate beside the measured peak, and the
estimate against the peak a child process measures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from learn2reg.io import DataError
from learn2reg.task import load_task
from pipeline.config import config_from_dict
from pipeline.demo.tasks import write_demo
from pipeline.model import memory_check
from pipeline.training.memory import cases_held, check_training
from pipeline.training.train import train
from tests.paths import REPO
from tests.pipeline.prediction.test_memory import TOLERANCE, within_tolerance
from tests.pipeline.training.test_train import FAST, make_blob_task


def test_training_that_cannot_fit_is_refused_before_the_run_folder_exists(tmp_path, monkeypatch):
    task = make_blob_task(tmp_path / "task")
    monkeypatch.setattr(memory_check, "free_bytes", lambda device: 2**20)  # 1 MB free
    with pytest.raises(DataError) as err:
        train(task, config_from_dict(FAST), tmp_path / "run", device="cpu")
    message = str(err.value)
    assert message.startswith("train: ") and "on cpu, 1 MB is free: use preprocess.half_resolution" in message
    assert "--skip-memory-check runs it anyway" in message
    assert not (tmp_path / "run").exists()


def test_the_estimate_follows_the_task_and_the_configuration(tmp_path):
    task = load_task(make_blob_task(tmp_path / "task"))
    cpu = torch.device("cpu")
    small = check_training(task, config_from_dict(FAST), cpu, skip=True).needs[0]
    assert small.what == "a training step on the network grid 20x16x24 (start_channel 2, 3 label classes)"
    wide = check_training(task, config_from_dict({**FAST, "model": {"start_channel": 8}}), cpu, skip=True).needs[0]
    assert wide.work > small.work
    half = check_training(task, config_from_dict({**FAST, "preprocess": {"half_resolution": True}}), cpu, skip=True).needs[0]
    assert half.work < small.work


@pytest.mark.parametrize(("count", "budget_mb", "workers", "held"), [
    (3384, 2048, 0, 78 + 1 + 2),  # LUMIR at 26.25 MiB a case: the 2 GiB budget (78 cases), the one kept, the pair in use
    (3384, 2048, 2, 78 + 1 + 2 + 8),  # + the prefetched cases that may wait (4 per worker)
    (3384, 0, 0, 1 + 2),
    (16, 2048, 2, 16),  # never more than all of them
])
def test_the_cases_training_holds_are_bounded_by_the_store_not_by_the_task(count, budget_mb, workers, held):
    assert cases_held(count, 160 * 224 * 192 * 4, budget_mb * 2**20, workers) == held


def test_the_estimate_counts_the_cases_the_store_keeps(tmp_path):
    task = load_task(make_blob_task(tmp_path / "task"))  # 5 cases of 20x16x24
    cpu, cfg = torch.device("cpu"), config_from_dict(FAST)
    every = check_training(task, cfg, cpu, skip=True).needs[0].work
    few = check_training(task, cfg, cpu, skip=True, case_memory_bytes=0).needs[0].work  # 3: the one kept, the pair in use
    # 25 bytes per voxel for the 5 cases (float32 images, uint8 labels) against 15 for 3 of them,
    # on 20x16x24 voxels, with the CPU training allowance (half the counted bytes) on top
    assert every - few == pytest.approx(1.5 * (25 - 15) * 20 * 16 * 24, rel=1e-6)


def test_a_skipped_check_trains_and_memory_json_records_the_estimate_and_the_peak(tmp_path, monkeypatch):
    task = make_blob_task(tmp_path / "task")
    monkeypatch.setattr(memory_check, "free_bytes", lambda device: 2**20)
    assert train(task, config_from_dict(FAST), tmp_path / "run", device="cpu", skip_memory_check=True) == 0
    record = json.loads((tmp_path / "run" / "memory.json").read_text())
    assert record["device"] == "cpu" and record["verdict"] == "refuse" and record["checked"] is False
    assert 0 < record["work_estimate_gb"] < record["estimate_gb"] and record["peak_gb"] > 0


@pytest.mark.slow
def test_the_estimate_of_training_matches_the_peak_a_child_process_measures(tmp_path):
    """start_channel 7 at 48^3 with Dice (the demo hippocampus task at full resolution, one step
    per level): about 0.3 GB beyond the 0.4 GB of Python and torch."""
    demo = write_demo(tmp_path / "data", tasks=("T4",), subjects=5)[0]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"start_channel": 7}, "loss": {"dice": 1.0},
                                  "train": {"steps_per_level": [1, 1, 1], "freeze_steps": 0}}))
    done = subprocess.run([sys.executable, "-m", "pipeline", "train", "--data", str(demo), "--config", str(config),
                           "--out", str(tmp_path / "run"), "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "run" / "memory.json").read_text())
    assert record["work_estimate_gb"] > 0.2
    assert within_tolerance(record), (record, TOLERANCE)


