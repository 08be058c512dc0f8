"""Faults a long run meets, through the real command lines: a full disk, a second writer, a folder
it may not write, a dying worker, torchrun on a fresh folder.

Each case checks the exit code, that the message names the file or folder with what to do, that
no traceback escapes, that nothing partial is left and nothing already written is lost, and that
a rerun completes the work. The full disk is a real size-limited file system (a tmpfs mounted by
the test) where the machine allows it (root); elsewhere the write fails with an injected ENOSPC,
the free space is injected likewise (the ``disk`` fixture says which). Permissions use a process
without CAP_DAC_OVERRIDE (``setpriv``) when root, a folder of mode 555 otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from evaluation import evaluate as evaluate_cli
from learn2reg.contract import disp_filename_l2r
from learn2reg.io import Geometry, save_nifti
from learn2reg.writers import LOCK_NAME
from pipeline.cli import main
from pipeline.prediction import predict as predict_stage
from pipeline.training import trainer as train_steps
from tests.paths import REPO
from tests.pipeline.training.test_train import FAST, TINY, trained_blob_run

PAIRS = [("0004_0000", "0005_0000"), ("0001_0000", "0002_0000"), ("0002_0000", "0003_0000")]
FIELDS = [disp_filename_l2r(f, m) for f, m in PAIRS]
DISK_SIZE = "16m"


def config(tmp_path: Path, base: dict, **train) -> Path:
    """A training configuration file: ``base`` (the tests' tiny ones) training on every subject
    (the task's validation pairs cover them all), with ``train`` settings replaced."""
    path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.json')))}.json"
    path.write_text(json.dumps({**base, "train": {**base["train"], "exclude_val_subjects": False, **train}}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run and its task with three validation pairs."""
    task, run_dir = trained_blob_run(tmp_path_factory.mktemp("faults"))
    meta = json.loads((task / "Blob_dataset.json").read_text())
    meta["registration_val"] = [{"fixed": f"./imagesTr/Blob_{f}.nii.gz", "moving": f"./imagesTr/Blob_{m}.nii.gz"} for f, m in PAIRS]
    (task / "Blob_dataset.json").write_text(json.dumps(meta))
    return task, run_dir


def run(capsys, *argv: str, module=None) -> tuple[int, str]:
    """One command in-process -> (exit code, stderr); a traceback fails the test by itself."""
    code = main(list(argv)) if module is None else module.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


# ------------------------------------------------------------------- a full disk


@dataclass
class Disk:
    """A small file system at ``root``: a real tmpfs (``how == "tmpfs"``) or one whose writes fail
    with an injected ENOSPC once :meth:`fill` is called (``how`` says why)."""

    root: Path
    how: str
    full: bool = False
    free_left: int | None = None
    filler: Path = field(init=False)

    def __post_init__(self) -> None:
        self.filler = self.root / ".filler"

    def fill(self, leave: int = 0) -> None:
        """Leave only ``leave`` bytes free."""
        if self.how == "tmpfs":
            st = os.statvfs(self.root)
            with open(self.filler, "ab") as fh:
                os.posix_fallocate(fh.fileno(), 0, self.filler.stat().st_size + max(st.f_bavail * st.f_frsize - leave, 0))
        else:
            self.full, self.free_left = leave == 0, leave

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.full, self.free_left = False, None


@pytest.fixture
def disk(tmp_path, monkeypatch):
    root = tmp_path / "disk"
    root.mkdir()
    why = "not root: no tmpfs can be mounted" if os.geteuid() != 0 else None
    if why is None:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(root)], capture_output=True, text=True)
        why = None if mounted.returncode == 0 else f"mount -t tmpfs failed ({mounted.stderr.strip()})"
    small = Disk(root, "tmpfs" if why is None else f"injected ENOSPC: {why}")
    if why is not None:
        real_replace, real_usage = os.replace, shutil.disk_usage

        def replace(src, dst):
            if small.full and str(dst).startswith(str(root)):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst)

        def usage(path):
            found = real_usage(path)
            if small.free_left is not None and str(path).startswith(str(root)):
                return type(found)(found.total, found.total - small.free_left, small.free_left)
            return found

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(shutil, "disk_usage", usage)
    yield small
    if why is None:
        subprocess.run(["umount", "-l", str(root)], check=True)


def test_predict_on_a_full_disk_names_the_field_keeps_the_others_and_a_rerun_resumes(trained, disk, capsys, monkeypatch):
    task, run_dir = trained
    out = disk.root / "sub"
    real_write, calls = predict_stage.write_field, []

    def write_field(path, u, t):
        calls.append(path)
        if len(calls) == 3:
            disk.fill()  # the disk fills up before the third field
        real_write(path, u, t)

    monkeypatch.setattr(predict_stage, "write_field", write_field)
    argv = ("predict", "--data", str(task), "--run", str(run_dir), "--out", str(out), "--device", "cpu")
    code, err = run(capsys, *argv)
    assert code == 1, disk.how
    assert f"error: {out / FIELDS[2]}: cannot be written: no space left on device (" in err
    assert "free on the file system of" in err and f"; 2 of 3 field(s) are in {out}, complete and kept" in err
    assert "the 1 left need up to 92.2 kB" in err and "rerun the same command: the pairs already written are skipped" in err
    assert [(out / f).exists() for f in FIELDS] == [True, True, False] and not temporaries(out)
    kept = {f: (out / f).stat().st_mtime_ns for f in FIELDS[:2]}
    records = json.loads((out / "runtimes.json").read_text())["runtimes"]
    disk.free()
    monkeypatch.setattr(predict_stage, "write_field", real_write)
    assert run(capsys, *argv)[0] == 0
    assert {f: (out / f).stat().st_mtime_ns for f in FIELDS[:2]} == kept  # not predicted again
    after = json.loads((out / "runtimes.json").read_text())["runtimes"]
    assert len(after) == 3 and all(after[k] == v for k, v in records.items())
    assert not (out / LOCK_NAME).exists() and not temporaries(out)


def test_predict_refuses_before_the_work_when_the_fields_cannot_fit(trained, disk, capsys):
    task, run_dir = trained
    disk.fill(leave=8192)
    out = disk.root / "sub"
    code, err = run(capsys, "predict", "--data", str(task), "--run", str(run_dir), "--out", str(out), "--device", "cpu")
    assert code == 1 and f"error: {out}: not enough free space for the fields of the 3 pair(s) still to predict: about" in err
    assert "nothing was written" in err and not out.exists()


def test_train_on_a_full_disk_keeps_the_last_checkpoint_and_resume_completes(trained, disk, tmp_path, capsys, monkeypatch):
    task, _ = trained
    cfg = config(tmp_path, TINY)
    run_dir = disk.root / "run"
    real_save = train_steps.save_checkpoint

    def save_then_fill(path, payload):
        real_save(path, payload)
        if payload["state"]["global_step"] == 2:
            disk.fill()  # something else fills the disk after step 2's checkpoint: step 3's cannot be written

    monkeypatch.setattr(train_steps, "save_checkpoint", save_then_fill)
    argv = ("train", "--data", str(task), "--config", str(cfg), "--out", str(run_dir), "--device", "cpu")
    code, err = run(capsys, *argv)
    last = run_dir / "checkpoints" / "last.pt"
    assert code == 1 and f"error: {last}: cannot be written: no space left on device (" in err, disk.how
    assert f"; {last} (global step 2) is complete and kept" in err and "--resume" in err
    assert not temporaries(run_dir)
    disk.free()
    monkeypatch.setattr(train_steps, "save_checkpoint", real_save)
    assert run(capsys, *argv, "--resume")[0] == 0
    assert json.loads((run_dir / "final.json").read_text())["state"]["global_step"] == 12


def test_train_refuses_before_the_first_step_when_the_checkpoints_cannot_fit(trained, disk, tmp_path, capsys):
    task, _ = trained
    cfg = config(tmp_path, FAST)
    disk.fill(leave=400_000)  # the cache and the config fit, three checkpoints (about 1 MB each) do not
    run_dir = disk.root / "run"
    code, err = run(capsys, "train", "--data", str(task), "--config", str(cfg), "--out", str(run_dir), "--device", "cpu")
    assert code == 1 and f"error: {run_dir}: not enough free space for the checkpoints" in err, disk.how
    assert not run_dir.exists()  # a refused start leaves nothing behind


def test_evaluate_on_a_full_disk_writes_nothing_and_a_rerun_completes(trained, disk, tmp_path, capsys):
    task, run_dir = trained
    sub = tmp_path / "sub"
    assert run(capsys, "predict", "--data", str(task), "--run", str(run_dir), "--out", str(sub), "--device", "cpu")[0] == 0
    disk.fill()
    out = disk.root / "results.json"
    code, err = run(capsys, "-i", str(sub), "-d", str(task), "-o", str(out), "-j", "1", module=evaluate_cli)
    assert code == 1 and f"error: {out}: cannot be written: no space left on device (" in err
    assert not out.exists() and not temporaries(disk.root)
    disk.free()
    assert run(capsys, "-i", str(sub), "-d", str(task), "-o", str(out), "-j", "1", module=evaluate_cli)[0] == 0
    assert set(json.loads(out.read_text())["cases"]) == {f"{f}<--{m}" for f, m in PAIRS}


def test_the_other_writing_stages_on_a_full_disk_name_the_file_and_leave_no_file(trained, disk, tmp_path, capsys):
    """align, report, leaderboard and import-weights: exit 1, the file and the cause, no file
    written (every output is renamed into place whole), no temporary."""
    task, run_dir = trained
    sub, results = tmp_path / "sub", tmp_path / "LapIRN.json"
    assert run(capsys, "predict", "--data", str(task), "--run", str(run_dir), "--out", str(sub), "--device", "cpu")[0] == 0
    assert run(capsys, "-i", str(sub), "-d", str(task), "-o", str(results), "-j", "1", module=evaluate_cli)[0] == 0
    disk.fill()
    commands = {
        "align": ["align", "--data", str(task), "--out", str(disk.root / "align")],
        "report": ["report", "--data", str(task), "--submission", str(sub), "--out", str(disk.root / "report")],
        "leaderboard": ["leaderboard", f"LapIRN={results}", "-o", str(disk.root / "board")],
        "import-weights": ["import-weights", str(REPO / "weights" / "LapIRN_disp_fea7.pth"), "--out", str(disk.root / "w")],
    }
    for name, argv in commands.items():
        code, err = run(capsys, *argv)
        assert code == 1 and f"error: {disk.root}/" in err and ": cannot be written: no space left on device (" in err, f"{name}: {err}"
        assert [p.name for p in disk.root.rglob("*") if p.is_file()] == [disk.filler.name] * (disk.how == "tmpfs"), name


# ------------------------------------------------------------------- two writers in one folder


HOLDER = """
import sys, time
from learn2reg.writers import hold_folder
with hold_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_predict_into_a_folder_in_use_is_refused_and_a_killed_holder_blocks_nothing(trained, tmp_path, capsys):
    task, run_dir = trained
    out = tmp_path / "sub"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        argv = ("predict", "--data", str(task), "--run", str(run_dir), "--out", str(out), "--device", "cpu")
        code, err = run(capsys, *argv)
        assert code == 1 and f"error: {out}: in use by another process: pid {holder.pid} on " in err
        assert not list(out.glob("disp_*"))
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert run(capsys, *argv)[0] == 0
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_real_trainings_into_one_run_folder_one_is_refused_and_the_other_completes(trained, tmp_path):
    task, _ = trained
    cfg = config(tmp_path, TINY, steps_per_level=[10, 10, 10])
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "pipeline", "train", "--data", str(task), "--config", str(cfg), "--out", str(run_dir), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not (run_dir / LOCK_NAME).is_file():
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        second = subprocess.run([*argv, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
        assert f"error: {run_dir}: in use by another process: pid {first.pid} on " in second.stderr
        assert first.wait(timeout=400) == 0
    finally:
        first.kill()
        first.wait()
    assert json.loads((run_dir / "final.json").read_text())["state"]["global_step"] == 30
    assert not (run_dir / LOCK_NAME).exists()


# ------------------------------------------------------------------- folders it may not write


Denied = namedtuple("Denied", "prefix owner")


@pytest.fixture
def denied(tmp_path):
    """A folder ``locked`` this test's commands may not write, ``closed`` one they may not read,
    and how to run them (``prefix``)."""
    locked, closed = tmp_path / "locked", tmp_path / "closed"
    locked.mkdir()
    closed.mkdir()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: cannot run a process that permissions bind")
        for folder in (locked, closed):  # another user's folders; the commands run as root without DAC override
            os.chown(folder, 4242, 4242)
        closed.chmod(0o700)
        caps = "-dac_override,-dac_read_search"
        yield Denied(["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"], "belongs to uid 4242")
        return
    locked.chmod(0o555)
    closed.chmod(0o000)
    yield Denied([], "chmod u+rwx")
    closed.chmod(0o700)


@pytest.mark.slow
def test_every_stage_names_a_folder_it_may_not_write_with_the_fix(trained, denied, tmp_path):
    task, run_dir = trained
    locked = tmp_path / "locked"
    cfg = config(tmp_path, FAST)
    commands = {
        "preprocess": ["preprocess", "--data", str(task), "--config", str(cfg), "--cache", str(locked / "demo" / "cache")],
        "demo-data": ["demo-data", "--out", str(locked), "--tasks", "T4"],
        "demo": ["demo", "--out", str(locked / "demo-job"), "--tasks", "T4", "--data-only"],
        "train": ["train", "--data", str(task), "--config", str(cfg), "--out", str(locked / "run"), "--device", "cpu"],
        "predict": ["predict", "--data", str(task), "--run", str(run_dir), "--out", str(locked / "sub"), "--device", "cpu"],
        "evaluate": ["evaluate", "-i", str(run_dir), "-d", str(task), "-o", str(locked / "r.json")],
        "import-weights": ["import-weights", str(REPO / "weights" / "LapIRN_disp_fea7.pth"), "--out", str(locked / "w")],
    }
    closed = tmp_path / "closed" / "task"
    commands |= {  # a task folder it may not read
        "validate (closed)": ["validate", str(closed)],
        "train (closed)": ["train", "--data", str(closed), "--config", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu"],
    }
    for name, argv in commands.items():
        done = subprocess.run([*denied.prefix, sys.executable, "-m", "pipeline", *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 1 and "Traceback" not in done.stderr, f"{name}: {done.stderr[-2000:]}"
        folder, what = (closed, "cannot be read: no read permission") if "closed" in name else (locked, "no write permission")
        assert f"error: {folder}" in done.stderr and what in done.stderr and denied.owner in done.stderr, f"{name}: {done.stderr}"
    assert not [p for p in locked.iterdir()] and not (tmp_path / "run").exists()


# ------------------------------------------------------------------- torchrun on a fresh folder


@pytest.mark.slow
def test_torchrun_trains_and_predicts_on_a_fresh_folder(trained, tmp_path):
    """The README's multi-process way on a fresh run folder: both ranks fill the run's cache (each
    under a temporary of its own) and rank 0 holds the folder for the job; then prediction."""
    task, _ = trained
    cfg = config(tmp_path, FAST)
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "-m", "pipeline"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir, sub = tmp_path / "fresh" / "run", tmp_path / "fresh" / "sub"
    done = subprocess.run([*torchrun, "train", "--data", str(task), "--config", str(cfg), "--out", str(run_dir), "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run_dir / "final.json").read_text())["world_size"] == 2
    assert len(list((run_dir / "cache" / "Blob").glob("*.npz"))) == 5 and not temporaries(run_dir)
    done = subprocess.run([*torchrun, "predict", "--data", str(task), "--run-dir", str(run_dir), "--out", str(sub), "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in sub.glob("disp_*")) == sorted(FIELDS)
    assert len(json.loads((sub / "runtimes.json").read_text())["runtimes"]) == 3
    assert not (sub / LOCK_NAME).exists() and not (run_dir / LOCK_NAME).exists()


# ------------------------------------------------------------------- a dying worker


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _reads_under(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` has a file under ``folder`` open (a worker at work on a pair)."""
    with contextlib.suppress(OSError):
        return any(os.readlink(fd).startswith(f"{folder}/") for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


@pytest.mark.slow
def test_a_killed_evaluator_worker_is_named_by_its_pair_never_a_hang(tmp_path):
    """Twenty pairs of 64^3 images in two worker processes; one worker is killed (SIGKILL, as the
    out-of-memory killer does) while it reads a pair's files (seen in /proc: no timing guess, the
    evaluator takes well under a second on a fast machine)."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to find the worker processes")
    n = 64
    task = _big_task(tmp_path / "task", n=n)
    sub = tmp_path / "sub"
    pairs = json.loads((task / "Big_dataset.json").read_text())["registration_val"]
    noise = np.random.default_rng(0).normal(0, 0.5, (n, n, n, 3)).astype(np.float32)  # slow to inflate: a long read
    for pair in pairs:
        f, m = (Path(pair[k]).name.removeprefix("Big_").removesuffix(".nii.gz") for k in ("fixed", "moving"))
        save_nifti(sub / disp_filename_l2r(f, m), noise, Geometry.identity((n, n, n)))
    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "evaluation.evaluate", "-i", str(sub), "-d", str(task), "-o", str(out), "-j", "2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline, killed = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None and killed is None:
        for worker in _children(proc.pid):
            if _reads_under(worker, tmp_path):
                with contextlib.suppress(ProcessLookupError):  # it ended in between: look again
                    os.kill(worker, signal.SIGKILL)
                    killed = worker
                break
        time.sleep(0.001)
    _, err = proc.communicate(timeout=120)
    assert killed is not None and proc.returncode == 1 and "Traceback" not in err, err[-2000:]
    assert "error: an evaluator worker process died while evaluating " in err and "<--" in err and "-j 1" in err
    assert not out.exists()


def _big_task(root: Path, subjects: int = 5, n: int = 48) -> Path:
    """Five subjects of two labelled spheres on a 48^3 grid; every ordered pair is a validation pair."""
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1)
    rng = np.random.default_rng(1)
    training = []
    for s in range(1, subjects + 1):
        label = np.zeros((n, n, n), np.uint8)
        for value, radius in ((1, 12), (2, 6)):
            label[np.linalg.norm(grid - n / 2 - rng.uniform(-4, 4, 3), axis=-1) < radius] = value
        save_nifti(root / "imagesTr" / f"Big_{s:04d}_0000.nii.gz", label.astype(np.float32) * 50, Geometry.identity((n, n, n)))
        save_nifti(root / "labelsTr" / f"Big_{s:04d}_0000.nii.gz", label, Geometry.identity((n, n, n)))
        training.append({"image": f"./imagesTr/Big_{s:04d}_0000.nii.gz", "label": f"./labelsTr/Big_{s:04d}_0000.nii.gz"})
    pairs = [{"fixed": a["image"], "moving": b["image"]} for a in training for b in training if a is not b]
    meta = {"name": "Big", "tensorImageShape": {"0": [n, n, n]}, "labels": {"0": {"1": "outer", "2": "inner"}},
            "training": training, "registration_val": pairs}
    (root / "Big_dataset.json").write_text(json.dumps(meta))
    return root
