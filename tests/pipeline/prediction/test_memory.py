"""The memory check of ``predict`` and ``register`` (``pipeline.prediction.memory``): a slip of
``--input-scale`` or ``--target-spacing`` ends in a clear message and exit 1 before anything is
written; the skip option; the estimate and the measured peak in ``runtimes.json`` and
``register.json``; the estimate against the peak a child process measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from learn2reg.io import DataError
from learn2reg.submission import read_manifest
from pipeline.demo.tasks import write_demo
from pipeline.model import memory_check
from pipeline.prediction.predict import predict
from pipeline.prediction.register import register
from pipeline.training.import_weights import import_weights
from tests.paths import REPO
from tests.pipeline.training.test_train import make_blob_task

# |estimate - measured peak| <= TOLERANCE * measured peak + OFFSET_GB (see README, "Memory: the check
# before the work"): 25 % for what the allocator keeps beyond the live tensors and arrays, which
# varies with the order of allocations and the library versions; 0.15 GB for what the process
# loads after the check (libraries, oneDNN's kernels and buffers) and the tiny runs' imprecision.
TOLERANCE, OFFSET_GB = 0.25, 0.15


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The demo hippocampus task (48^3, 5 subjects), the blob task and the published weights as a run."""
    root = tmp_path_factory.mktemp("memory")
    demo = write_demo(root / "data", tasks=("T4",), subjects=5)[0]
    run = root / "run"
    import_weights(REPO / "weights" / "LapIRN_disp_fea7.pth", run)
    return demo, make_blob_task(root / "blob"), run


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_an_input_scale_slip_ends_in_a_clear_message_and_exit_1_within_seconds_writing_nothing(setting, tmp_path):
    """``--input-scale 50`` (for 0.5) on a 48^3 task: a 2351^3 network grid, terabytes. Without the
    check the kernel's out-of-memory killer ended it (exit 137) after stalling the machine."""
    demo, _, run = setting
    out = tmp_path / "sub"
    start = time.perf_counter()
    done = cli("predict", "--run", str(run), "--data", str(demo), "--out", str(out), "--input-scale", "50", "--device", "cpu")
    elapsed = time.perf_counter() - start
    assert done.returncode == 1, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: predict: the network grid 2351x2351x2351 (input scale 50) needs about ")
    assert " TB on cpu, " in error and " GB is free: use a smaller --input-scale / --target-spacing" in error
    assert error.endswith("--skip-memory-check runs it anyway")
    assert not out.exists()
    assert elapsed < 60  # the interpreter and torch start in 3-10 s on a busy 2-core machine; the check in 1-2 s


def test_a_target_spacing_far_below_the_images_is_caught_by_the_same_check(setting, tmp_path):
    demo, _, run = setting
    with pytest.raises(DataError, match=r"the network grid 4701x4701x4701 \(target spacing 0.01 mm\) needs about .* TB on cpu"):
        predict(demo, tmp_path / "sub", run, device="cpu", target_spacing=0.01)
    assert not (tmp_path / "sub").exists()


def test_instance_optimisation_on_a_grid_too_large_names_its_options(setting, tmp_path, monkeypatch):
    _, blob, run = setting
    monkeypatch.setattr(memory_check, "free_bytes", lambda device: 40 * 2**20)  # 40 MB free
    with pytest.raises(DataError, match=r"needs about \d+ MB on cpu, 40 MB is free: use "):
        predict(blob, tmp_path / "sub", run, device="cpu", instance_opt_steps=5)
    assert not (tmp_path / "sub").exists()


def test_register_is_checked_before_it_writes(setting, tmp_path, monkeypatch):
    demo, _, run = setting
    images = sorted((demo / "imagesTr").glob("*.nii.gz"))
    monkeypatch.setattr(memory_check, "free_bytes", lambda device: 2**20)
    with pytest.raises(DataError, match=r"^register: .* needs about .* on cpu, 1 MB is free"):
        register(images[0], images[1], run, tmp_path / "out", device="cpu", report=False)
    assert not (tmp_path / "out").exists()
    written = register(images[0], images[1], run, tmp_path / "out", device="cpu", report=False, skip_memory_check=True)
    record = json.loads(written["record"].read_text())["memory"]
    assert record["verdict"] == "refuse" and record["checked"] is False and record["peak_gb"] > 0


def test_skip_memory_check_runs_anyway_and_runtimes_json_records_the_estimate_and_the_peak(setting, tmp_path, monkeypatch):
    _, blob, run = setting
    monkeypatch.setattr(memory_check, "free_bytes", lambda device: 2**20)
    assert predict(blob, tmp_path / "sub", run, device="cpu", skip_memory_check=True) == 0
    memory = read_manifest(tmp_path / "sub" / "runtimes.json")["memory"]
    assert memory["device"] == "cpu" and memory["verdict"] == "refuse" and not memory["checked"]
    assert 0 < memory["work_estimate_gb"] < memory["estimate_gb"] and memory["peak_gb"] > 0 and memory["free_gb"] == 0.001


def within_tolerance(record: dict) -> bool:
    return abs(record["estimate_gb"] - record["peak_gb"]) <= TOLERANCE * record["peak_gb"] + OFFSET_GB


@pytest.mark.slow
def test_the_estimate_of_a_prediction_matches_the_peak_a_child_process_measures(setting, tmp_path):
    """The published weights (start_channel 7) on the blob task at ``--input-scale 4`` (a 77x61x93
    network grid: about 0.3 GB of activations besides the 0.4 GB of Python and torch)."""
    _, blob, run = setting
    done = cli("predict", "--run", str(run), "--data", str(blob), "--out", str(tmp_path / "sub"), "--input-scale", "4",
               "--instance-opt-steps", "2", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    record = read_manifest(tmp_path / "sub" / "runtimes.json")["memory"]
    assert record["work_estimate_gb"] > 0.25
    assert within_tolerance(record), record


def test_a_grid_the_stage_refuses_is_left_to_the_stage_which_names_it(setting, tmp_path, capsys):
    _, blob, run = setting
    assert predict(blob, tmp_path / "sub", run, device="cpu", input_scale=0.01) == 1  # every axis to one voxel
    assert "shrinks the grid" in capsys.readouterr().err
