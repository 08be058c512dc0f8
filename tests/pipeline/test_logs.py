"""Logs you can read: the stages run as commands with their output in a file get plain progress
lines (no carriage returns, a bounded number of them), and on a terminal (a pseudo-terminal
here) a progress bar."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO
from tests.pipeline.affine.test_align import make_task
from tests.pipeline.training.test_train import TINY, make_blob_task


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "L2R_PROGRESS_SECONDS"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def run_to_file(tmp_path: Path, *args: str, **env: str) -> str:
    """``python -m pipeline ARGS`` with stdout and stderr in one file; returns its text."""
    log = tmp_path / "stage.log"
    with log.open("wb") as fh:
        done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=_env(**env),
                              stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_bytes().decode()
    assert done.returncode == 0, text
    return text


def run_on_terminal(*args: str, **env: str) -> str:
    """``python -m pipeline ARGS`` on a pseudo-terminal (no window size, as a bare ``docker -t``)."""
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=_env(**env),
                            stdin=child, stdout=child, stderr=child)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=300) == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def progress_lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if f"{prefix} " in line and re.search(rf"{re.escape(prefix)} \d+", line)]


@pytest.fixture(scope="module")
def blob(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("logs")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return make_blob_task(root / "Blob"), root / "tiny.json"


@pytest.mark.parametrize(("seconds", "count"), [(None, 1), ("0", 6)])
def test_preprocess_in_a_file_logs_plain_lines_at_most_every_interval(blob, tmp_path, seconds, count):
    """Five cases: with the default interval (30 s) one line, at the end; with 0 s, one per case and the end."""
    task, config = blob
    env = {} if seconds is None else {"L2R_PROGRESS_SECONDS": seconds}
    text = run_to_file(tmp_path, "preprocess", "--data", str(task), "--config", str(config), "--cache", str(tmp_path / "c"), **env)
    assert "\r" not in text
    lines = progress_lines(text, "preprocess Blob: case")
    assert len(lines) == count, text
    assert lines[-1].startswith("INFO pipeline.data.preprocess: preprocess Blob: case 5/5 (100%), ") and "done in" in lines[-1]


def test_preprocess_on_a_terminal_draws_a_bar(blob, tmp_path):
    task, config = blob
    text = run_on_terminal("preprocess", "--data", str(task), "--config", str(config), "--cache", str(tmp_path / "c"), L2R_PROGRESS_SECONDS="0")
    assert "\r" in text and "preprocess Blob: 100%|" in text and "5/5" in text
    assert not progress_lines(text, "preprocess Blob: case")


def test_align_in_a_file_logs_one_plain_line(tmp_path):
    make_task(tmp_path / "Toy", subjects=1)
    text = run_to_file(tmp_path, "align", "--data", str(tmp_path / "Toy"), "--out", str(tmp_path / "out"))
    assert "\r" not in text
    assert [line.split(", ")[0] for line in progress_lines(text, "align Toy: pair")] == ["INFO pipeline.affine.align: align Toy: pair 1/1 (100%)"]


@pytest.mark.slow
def test_train_in_a_file_counts_global_steps_names_the_level_and_logs_validation_and_best(blob, tmp_path):
    """TINY: 3 levels x 4 steps, validation at the end of each level. One line per step (interval 0)."""
    task, config = blob
    run = tmp_path / "run"
    text = run_to_file(tmp_path, "train", "--data", str(task), "--config", str(config), "--out", str(run), "--device", "cpu",
                       L2R_PROGRESS_SECONDS="0")
    assert "\r" not in text
    lines = progress_lines(text, "train: step")
    assert len(lines) == 12 + 1, text
    for line in lines:
        step, level = map(int, re.search(r"train: step (\d+)/12 \(\d+%\), level (\d), loss -?\d\.\d{4}, ", line).groups())
        assert level == (step - 1) // 4 + 1, line
    assert lines[-1].startswith("INFO pipeline.training.trainer: train: step 12/12 (100%), level 3") and "done in" in lines[-1]
    assert f"training Blob on cpu (world size 1) into {run}" in text
    assert "validation of the zero field: Dice " in text
    assert [int(s) for s in re.findall(r"validation at step (\d+) \(level \d, step 4 of 4\): Dice 0\.\d{4}", text)] == [4, 8, 12]
    # issue 21: levels 1 and 2 are not best.pt candidates, and the log says so where a reader looks
    assert len(re.findall(r"\(level [12], step 4 of 4\): .*; not a best\.pt candidate \(best\.pt is chosen at the final level 3\)", text)) == 2
    assert re.search(r"first best checkpoint at step 12: validation score 0\.\d{4} \(best\.pt is tracked at the final level 3 only\)", text)
    assert f"run folder: {run} (checkpoints/best.pt, log.csv, curves.png)" in text
    assert f"next: python -m pipeline predict --run {run} --data {task} --out outputs/run/Blob" in text
    assert f"finished at step 12: checkpoints in {run / 'checkpoints'} (best.pt from step 12)" in text


@pytest.mark.slow
def test_train_on_a_terminal_draws_a_bar_with_the_level(blob, tmp_path):
    task, config = blob
    text = run_on_terminal("train", "--data", str(task), "--config", str(config), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert "\r" in text and "train: 100%|" in text and "12/12" in text and "level=3" in text
    assert "validation at step 12" in text and not progress_lines(text, "train: step")


def test_report_in_a_file_logs_plain_lines_and_ends_with_where_it_wrote(blob, tmp_path):
    """report drew tqdm bars with carriage returns into a redirected log (issue 21)."""
    from evaluation.initial import write_zero_submission

    task, _ = blob
    sub = write_zero_submission(task, tmp_path / "zero")
    text = run_to_file(tmp_path, "report", "--data", str(task), "--submission", str(sub))
    assert "\r" not in text
    assert [line.split(", ")[0] for line in progress_lines(text, "report Blob: pair")] == ["INFO evaluation.pair_reports.stage: report Blob: pair 1/1 (100%)"]
    assert f"1 report(s) in {sub / 'report'}; open {sub / 'report' / 'index.html'}" in text
