"""One behaviour across the commands (issue 21, item 4), through the real command lines
(``python -m pipeline ...`` in-process): existing outputs are refused unless ``--overwrite``,
everywhere; a refusal names the option or file that differs; a run with nothing to do says so;
commands end with where they wrote and what to run next; a raw 2020 archive is named as one."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from evaluation.initial import write_zero_submission
from pipeline.cli import main
from tests.pipeline.affine.test_align import make_task as make_toy_task
from tests.pipeline.training.test_train import trained_blob_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run and its task (current layout)."""
    return trained_blob_run(tmp_path_factory.mktemp("cli"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def refused_then_overwritten(capsys, argv: list[str], output: Path) -> None:
    """``argv`` writes ``output``; again it is refused naming it (the file kept), with --overwrite it is replaced."""
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    before = output.stat().st_mtime_ns
    code, _, err = run(capsys, *argv)
    assert code == 1 and str(output) in err.split(": already exist")[0] and "pass --overwrite to replace" in err, err
    assert output.stat().st_mtime_ns == before
    code, _, err = run(capsys, *argv, "--overwrite")
    assert code == 0, err


def test_evaluation_commands_refuse_existing_outputs_unless_overwrite(trained, tmp_path, capsys):
    task, _ = trained
    sub = write_zero_submission(task, tmp_path / "zero")
    refused_then_overwritten(capsys, ["evaluate", "-i", str(sub), "-d", str(task), "-o", str(tmp_path / "r.json"), "-j", "1"],
                             tmp_path / "r.json")
    refused_then_overwritten(capsys, ["initial", "-d", str(task), "-o", str(tmp_path / "i.json")], tmp_path / "i.json")
    (tmp_path / "results").mkdir()
    shutil.copy(tmp_path / "r.json", tmp_path / "results" / "Blob.json")
    refused_then_overwritten(capsys, ["leaderboard", f"Zero={tmp_path / 'results'}", "-o", str(tmp_path / "board")],
                             tmp_path / "board" / "leaderboard.md")
    refused_then_overwritten(capsys, ["report", "--data", str(task), "--submission", str(sub)],
                             sub / "report" / "0004_0000_0005_0000.html")


def test_pipeline_commands_refuse_existing_outputs_unless_overwrite(trained, tmp_path, capsys):
    task, run_dir = trained
    images = task / "imagesTr"
    refused_then_overwritten(capsys, ["register", "--fixed", str(images / "Blob_0004_0000.nii.gz"), "--moving",
                                      str(images / "Blob_0005_0000.nii.gz"), "--run", str(run_dir), "--out", str(tmp_path / "reg"),
                                      "--device", "cpu", "--no-report"], tmp_path / "reg" / "disp.nii.gz")
    make_toy_task(tmp_path / "Toy", subjects=1)
    refused_then_overwritten(capsys, ["align", "--data", str(tmp_path / "Toy"), "--out", str(tmp_path / "aligned")],
                             tmp_path / "aligned" / "align_summary.json")


def test_predict_names_the_option_that_differs_and_a_run_with_nothing_to_do_says_so(trained, tmp_path, capsys, caplog):
    task, run_dir = trained
    out = tmp_path / "sub"
    argv = ["predict", "--data", str(task), "--run", str(run_dir), "--out", str(out), "--device", "cpu"]
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and json.loads((out / "predict_config.json").read_text())["config"]["predict"]["instance_opt_steps"] == 0
    assert stdout.splitlines() == [f"fields and runtimes.json in {out}",
                                   f"next: python -m pipeline evaluate -i {out} -d {task} -o {out.with_suffix('.json')}",
                                   f"then: the zip to upload: python -m pipeline package --data {task} --submission {out} "
                                   f"--out {out.with_suffix('.zip')}"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code, _, _ = run(capsys, *argv)  # again: nothing to do, and no made-up rate
    assert code == 0 and f"1 pair(s) already present in {out} (same configuration), nothing to do" in caplog.text
    assert "pairs/s" not in caplog.text and "pair/s" not in caplog.text
    code, _, err = run(capsys, *argv, "--instance-opt-steps", "2", "--affine", "rigid")
    assert code == 1 and "--instance-opt-steps was 0, now 2" in err and "--affine was 'none', now 'rigid'" in err
    assert "choose another --out, or pass --overwrite to replace them" in err
    other = tmp_path / "other_run"
    shutil.copytree(run_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["predict"]["amp"] = "fp16" if config["predict"]["amp"] != "fp16" else "bf16"  # (a GPU-only setting: same numbers on CPU)
    (other / "config.json").write_text(json.dumps(config))
    code, _, err = run(capsys, "predict", "--data", str(task), "--run", str(other), "--out", str(out), "--device", "cpu")
    assert code == 1 and "predict.amp of the configuration" in err and f"--run/--checkpoint was {run_dir / 'checkpoints' / 'best.pt'}" in err


@pytest.mark.parametrize("layout", [("training/scans", "training/keypoints"), ("Training/img",)])
def test_a_raw_2020_archive_is_named_with_the_conversion_command(trained, tmp_path, capsys, layout):
    _, run_dir = trained
    archive = tmp_path / "archive"
    for folder in layout:
        (archive / folder).mkdir(parents=True)
    task = 2 if "scans" in layout[0] else 3
    hint = f"looks like an unpacked Learn2Reg 2020 archive ({', '.join(sorted(f + '/' for f in layout))})"
    command = f"python -m pipeline convert-2020 {archive} --task {task} --out data/task_0{task}"
    code, _, err = run(capsys, "validate", "--no-progress", str(archive))
    assert code == 1 and hint in err and command in err
    code, _, err = run(capsys, "predict", "--data", str(archive), "--run", str(run_dir), "--out", str(tmp_path / "sub"), "--device", "cpu")
    assert code == 1 and hint in err and command in err
    (tmp_path / "plain" / "notes").mkdir(parents=True)
    code, _, err = run(capsys, "validate", "--no-progress", str(tmp_path / "plain"))
    assert code == 1 and "neither a *_dataset.json" in err and "2020 archive" not in err  # no archive folders: no such hint
