"""Bad input, stage by stage, through the real command lines: every class of the trust issue.

Each case runs a command (``python -m pipeline ...`` / ``python -m evaluation.*`` in-process),
checks its exit code (1 bad input, 2 usage), that the message names the file and what is wrong,
that no traceback escapes, and that nothing partial is written and nothing already written lost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from evaluation import evaluate as evaluate_cli
from evaluation import initial as initial_cli
from evaluation.leaderboard import stage as leaderboard_cli
from learn2reg.contract import disp_filename_l2r
from learn2reg.io import Geometry, load_nifti, save_nifti
from learn2reg.writers import machine_id
from pipeline.cli import main
from pipeline.model.checkpoint import load_checkpoint, save_checkpoint
from tests.learn2reg.test_task_current import CASES, remind_task
from tests.pipeline.training.test_train import FAST, SHAPE, make_blob_task, trained_blob_run

VAL_FIELD = disp_filename_l2r("0004_0000", "0005_0000")
EXTRA_FIELD = disp_filename_l2r("0001_0000", "0002_0000")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run and its task (current layout)."""
    return trained_blob_run(tmp_path_factory.mktemp("bad"))


def copy_task(task: Path, to: Path, edit=None) -> Path:
    """A copy of the blob task, its dataset.json passed through ``edit(meta)``."""
    shutil.copytree(task, to)
    if edit is not None:
        path = to / "Blob_dataset.json"
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))
    return to


def run(capsys, *argv: str, module=None) -> tuple[int, str, str]:
    """One command in-process -> (exit code, stdout, stderr); a traceback fails the test by itself."""
    code = main(list(argv)) if module is None else module.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def add_val_pair(meta: dict, fixed: str, moving: str) -> None:
    meta["registration_val"].append({"fixed": fixed, "moving": moving})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> content): compare before and after a command."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------- 1. nothing dropped silently


@pytest.mark.parametrize(("moving", "named"), [
    ("../outside/Blob_0002_0000.nii.gz", "Blob_dataset.json registration_val[1] (moving)"),
    ("/tmp/Blob_0002_0000.nii.gz", "Blob_dataset.json registration_val[1] (moving)"),
    ("./imagesTr/link_0009_0000.nii.gz", "link_0009_0000.nii.gz"),  # a symlink that leads nowhere
])  # fmt: skip
def test_an_unreadable_val_pair_fails_every_stage_by_name_and_predict_still_writes_the_others(trained, tmp_path, capsys, moving, named):
    task, run_dir = trained
    bad = copy_task(task, tmp_path / "task", lambda m: add_val_pair(m, "./imagesTr/Blob_0001_0000.nii.gz", moving))
    (tmp_path / "elsewhere").mkdir()
    (bad / "imagesTr" / "link_0009_0000.nii.gz").symlink_to(tmp_path / "elsewhere" / "x.nii.gz")  # dangling
    out = tmp_path / "sub"
    code, _, err = run(capsys, "predict", "--data", str(bad), "--run", str(run_dir), "--out", str(out), "--device", "cpu")
    assert code == 1 and named in err
    assert (out / VAL_FIELD).exists() and (out / "runtimes.json").exists()  # the readable pair is written
    code, _, err = run(capsys, "-i", str(out), "-d", str(bad), "-o", str(tmp_path / "r.json"), module=evaluate_cli)
    assert code == 1 and named.split(" ", 1)[-1] in err and not (tmp_path / "r.json").exists()
    code, _, err = run(capsys, "train", "--data", str(bad), "--config", str(_config(tmp_path)), "--out", str(tmp_path / "run"))
    assert code == 1 and named.split(" ", 1)[-1] in err and not (tmp_path / "run").exists()


def test_a_pairs_csv_line_that_is_not_two_ids_fails_predict_and_evaluate_by_line(trained, tmp_path, capsys):
    _, run_dir = trained
    task = make_blob_task(tmp_path / "task_04", layout="l2r2020")
    (task / "pairs_val.csv").write_text("fixed,moving\n4,5\nfour,5\n")
    out = tmp_path / "sub"
    code, _, err = run(capsys, "predict", "--data", str(task), "--run", str(run_dir), "--out", str(out), "--device", "cpu")
    assert code == 1 and "pairs_val.csv: line 3 is not two integer ids" in err and (out / "disp_0004_0005.npz").exists()
    code, _, err = run(capsys, "-i", str(out), "-d", str(task), "-o", str(tmp_path / "r.json"), module=evaluate_cli)
    assert code == 1 and "pairs_val.csv: line 3" in err and not (tmp_path / "r.json").exists()


def test_a_training_entry_outside_the_task_names_the_json_the_entry_and_the_path(trained, tmp_path, capsys):
    task, _ = trained
    bad = copy_task(task, tmp_path / "task", lambda m: m["training"][1].update(image="../x/Blob_0018_0000.nii.gz"))
    code, _, err = run(capsys, "train", "--data", str(bad), "--config", str(_config(tmp_path)), "--out", str(tmp_path / "run"))
    assert code == 1 and "Blob_dataset.json training[1] (image): path '../x/Blob_0018_0000.nii.gz' escapes" in err
    assert "no case" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["labels", "keypoints", "landmarks"])
def test_derived_evaluation_lists_every_missing_ground_truth_file(trained, tmp_path, capsys, kind):
    task, run_dir = trained
    two = copy_task(task, tmp_path / "task", lambda m: add_val_pair(m, "./imagesTr/Blob_0001_0000.nii.gz", "./imagesTr/Blob_0002_0000.nii.gz"))
    if kind != "labels":  # points for three of the four images
        for s in (1, 2, 4):
            (two / f"{kind}Tr").mkdir(exist_ok=True)
            (two / f"{kind}Tr" / f"Blob_{s:04d}_0000.csv").write_text("5,5,5\n6,6,6\n")
        missing = [two / f"{kind}Tr" / "Blob_0005_0000.csv"]
    else:
        missing = [two / "labelsTr" / "Blob_0002_0000.nii.gz", two / "labelsTr" / "Blob_0005_0000.nii.gz"]
        for path in missing:
            path.unlink()
    out = tmp_path / "sub"
    assert run(capsys, "predict", "--data", str(two), "--run", str(run_dir), "--out", str(out), "--device", "cpu")[0] == 0
    code, _, err = run(capsys, "-i", str(out), "-d", str(two), "-o", str(tmp_path / "r.json"), module=evaluate_cli)
    assert code == 1 and not (tmp_path / "r.json").exists()
    for path in missing:
        assert f"{path}: ground-truth file not found" in err


def test_a_2020_npz_under_another_key_is_refused_naming_both_keys(tmp_path, capsys):
    task = make_blob_task(tmp_path / "task_04", layout="l2r2020")
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "disp_0004_0005.npz", disp=np.zeros((3, *SHAPE), np.float16))
    code, _, err = run(capsys, "-i", str(tmp_path / "sub"), "-d", str(task), "-o", str(tmp_path / "r.json"), module=evaluate_cli)
    assert code == 1 and "disp_0004_0005.npz" in err and "'disp'" in err and "'arr_0'" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("values", "why"), [((0.0, 1.5), "non-integer"), ((0.0, -1.0), "negative")])
def test_train_refuses_a_label_map_that_is_not_integer_labels(trained, tmp_path, capsys, values, why):
    task, _ = trained
    bad = copy_task(task, tmp_path / "task")
    label = np.zeros(SHAPE, np.float32)
    label[5:9, 5:9, 5:9] = values[1]
    save_nifti(bad / "labelsTr" / "Blob_0002_0000.nii.gz", label, Geometry.identity(SHAPE))
    code, _, err = run(capsys, "train", "--data", str(bad), "--config", str(_config(tmp_path)), "--out", str(tmp_path / "run"))
    assert code == 1 and "labelsTr/Blob_0002_0000.nii.gz" in err and why in err and not (tmp_path / "run").exists()


def test_a_pair_naming_an_unlisted_image_is_a_warning_and_every_stage_uses_it(trained, tmp_path, capsys):
    task, run_dir = trained
    held_out = copy_task(task, tmp_path / "task", lambda m: m["training"].pop())  # subject 5 only in the val pair
    code, out, err = run(capsys, "validate", "--no-progress", str(held_out))
    assert code == 0 and "Blob_0005_0000.nii.gz: warning: named by a registration pair but not listed" in err
    sub = tmp_path / "sub"
    assert run(capsys, "predict", "--data", str(held_out), "--run", str(run_dir), "--out", str(sub), "--device", "cpu")[0] == 0
    assert run(capsys, "-i", str(sub), "-d", str(held_out), "-o", str(tmp_path / "r.json"), module=evaluate_cli)[0] == 0
    assert "DSC" in json.loads((tmp_path / "r.json").read_text())["aggregates"]
    assert run(capsys, "train", "--data", str(held_out), "--config", str(_config(tmp_path)), "--out", str(tmp_path / "run"))[0] == 0
    described = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert described["val_pairs"] == [["0004_0000", "0005_0000"]]
    assert not any("0005_0000" in pair for pair in described["train_pairs"])


def test_validate_warns_about_duplicate_pairs_and_reports_a_label_map_on_another_grid(trained, tmp_path, capsys):
    task, _ = trained
    twice = copy_task(task, tmp_path / "task", lambda m: add_val_pair(m, "./imagesTr/Blob_0004_0000.nii.gz", "./imagesTr/Blob_0005_0000.nii.gz"))
    label = twice / "labelsTr" / "Blob_0003_0000.nii.gz"
    save_nifti(label, np.zeros(SHAPE, np.uint8), Geometry.identity(SHAPE, spacing=(1.0, 1.0, 2.0)))
    before = snapshot(twice)
    code, _, err = run(capsys, "validate", "--no-progress", str(twice))
    assert code == 1 and f"{label.resolve()}: " in err and "spacing" in err
    assert "warning: val pair 0004_0000<--0005_0000 is listed 2 times" in err
    assert snapshot(twice) == before  # validate only reads


# ------------------------------------------------------------------- 2. clear errors, never a traceback


def test_a_config_value_of_the_wrong_type_is_refused_at_load_and_leaves_no_run(trained, tmp_path, capsys):
    task, _ = trained
    cfg = _config(tmp_path, train={"steps_per_level": [2, "four", 10]})
    code, _, err = run(capsys, "train", "--data", str(task), "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert code == 1 and str(cfg) in err and 'train.steps_per_level[1]: "four"' in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("breakage", ["model_config", "weights"])
def test_a_checkpoint_of_another_network_is_refused_naming_it(trained, tmp_path, capsys, breakage):
    task, run_dir = trained
    foreign = tmp_path / "run"
    shutil.copytree(run_dir, foreign)
    ckpt = load_checkpoint(foreign / "checkpoints" / "best.pt")
    if breakage == "model_config":
        ckpt["model_config"] = {"levels": 3, "width": 16}
    else:
        ckpt["model"] = {"conv.weight": ckpt["model"]["nets.0.encoder.0.weight"]}
    save_checkpoint(foreign / "checkpoints" / "best.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    out = tmp_path / "sub"
    code, _, err = run(capsys, "predict", "--data", str(task), "--run", str(foreign), "--out", str(out), "--device", "cpu")
    why = {"model_config": "model_config is not a LapIRN configuration (unknown LapIRN config keys: width)",
           "weights": "the weights do not fit this LapIRN"}[breakage]
    assert code == 1 and f"{foreign / 'checkpoints' / 'best.pt'}: {why}" in err and not out.exists()


def test_outputs_that_cannot_be_written_are_refused_before_any_work(trained, tmp_path, capsys):
    task, run_dir = trained
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "predict", "--data", str(task), "--run", str(run_dir), "--out", str(a_file), "--device", "cpu")
    assert code == 1 and str(a_file) in err and a_file.read_text() == "keep me"
    code, _, err = run(capsys, "-i", str(tmp_path), "-d", str(task), "-o", str(a_file / "r.json"), module=evaluate_cli)
    assert code == 1 and f"{a_file} is a file" in err
    code, _, err = run(capsys, "x=" + str(tmp_path / "none.json"), "-o", str(a_file / "board"), module=leaderboard_cli)
    assert code == 1 and f"{a_file} is a file" in err
    code, _, err = run(capsys, "-d", str(task), "-o", str(a_file / "i.json"), module=initial_cli)
    assert code == 1 and f"{a_file} is a file" in err
    assert snapshot(tmp_path) == before


def test_predict_without_a_run_or_a_config_is_a_usage_error(trained, tmp_path, capsys):
    task, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--data", str(task), "--out", str(tmp_path / "sub")])
    assert exit_info.value.code == 2 and "--run" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()


def test_a_truncated_image_names_the_real_cause(trained, tmp_path, capsys):
    task, run_dir = trained
    bad = copy_task(task, tmp_path / "task")
    image = bad / "imagesTr" / "Blob_0005_0000.nii.gz"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    code, _, err = run(capsys, "predict", "--data", str(bad), "--run", str(run_dir), "--out", str(tmp_path / "sub"), "--device", "cpu")
    assert code == 1 and f"{image}: unreadable or truncated NIfTI (EOFError" in err and "BufferError" not in err
    written = snapshot(tmp_path / "sub")  # no field of the only pair; the manifests, if any, record none
    assert not [name for name in written if name not in ("runtimes.json", "predict_config.json")]
    assert "runtimes.json" not in written or json.loads(written["runtimes.json"])["runtimes"] == {}


# ------------------------------------------------------------------- 2b. the organisers' rule sets (evaluate)

ORGANISERS = Path(__file__).resolve().parent / "fixtures" / "organisers" / "cases"
LUMIR25_FLAGS = [("-l1", "LUMIR24_Landmark"), ("-s1", "LUMIR24_Segmentation"), ("-s2", "HighField_Segmentation"), ("-s3", "MultiModal_Segmentation")]


def _lumir25_args(disp: Path) -> list[str]:
    root = ORGANISERS / "lumir25"
    configs = [a for flag, name in LUMIR25_FLAGS for a in (flag, str(root / f"LUMIR25_VAL_{name}_evaluation_config.json"))]
    return [*configs, "-i", str(disp), "-d", str(root)]


def test_a_field_under_a_name_its_rules_refuse_names_the_one_they_want(tmp_path, capsys):
    """LUMIR wants disp_3485_3484.nii.gz (equal modalities: the short name), not the long one."""
    disp = tmp_path / "disp"
    shutil.copytree(ORGANISERS / "lumir25" / "disp" / "smooth", disp)
    (disp / "disp_3485_3484.nii.gz").rename(disp / "disp_3485_0000_3484_0000.nii.gz")
    (disp / "disp_4024_4033.nii.gz").rename(disp / "disp_4024_4033.npz")  # MultiModal pair: .npz is never read
    code, _, err = run(capsys, *_lumir25_args(disp), "-o", str(tmp_path / "r.json"), module=evaluate_cli)
    assert code == 1 and not (tmp_path / "r.json").exists() and "2 problem(s)" in err
    assert "expected disp_3485_3484.nii.gz (lumir25 rules); found disp_3485_0000_3484_0000.nii.gz, which the lumir25 rules do not accept" in err
    assert "expected disp_4024_4033.nii.gz (lumir25 rules); found disp_4024_4033.npz" in err


@pytest.mark.parametrize("rules", ["remind2reg", "l2r"])
def test_a_channel_first_field_is_refused_where_its_rules_refuse_it(tmp_path, capsys, rules):
    root = ORGANISERS / "remind"
    disp = tmp_path / "disp"
    shutil.copytree(root / "disp" / "smooth", disp)
    name = "disp_0100_0000_0100_0001.nii.gz"
    u, geometry = load_nifti(disp / name, dtype=None)
    save_nifti(disp / name, np.ascontiguousarray(u.transpose(3, 0, 1, 2)), geometry)
    argv = ["-c", str(root / "ReMIND2Reg_VAL_evaluation_config.json"), "-i", str(disp), "-d", str(root), "--rules", rules]
    code, _, err = run(capsys, *argv, "-o", str(tmp_path / "r.json"), module=evaluate_cli)
    assert code == 1 and name in err and f"shape 3x20x24x20; expected 20x24x20x3 (fixed grid x 3); the {rules} rules do not accept channel-first" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rules", "lumir24", "-c", "remind/ReMIND2Reg_VAL_evaluation_config.json"], "the lumir24 rules read the task name from the config key 'name'"),
        (["--rules", "remind2reg", "-c", "lumir24/LUMIR_VAL_Landmark_evaluation_config.json"], "the remind2reg rules read the task name from the config key 'task_name'"),
        (["--rules", "l2r", "-c", "lumir24/LUMIR_VAL_Landmark_evaluation_config.json"], "metric 'ndv' (Non-diffeomorphic Volumes) is not scored by the l2r rules"),
        (["-c", "lumir24/LUMIR_VAL_Landmark_evaluation_config.json", "-c1", "lumir24/LUMIR_VAL_Segmentation_evaluation_config.json"], "give -c CONFIG, or LUMIR 2024's -c1/-c2, or LUMIR 2025's -l1/-s1/-s2/-s3"),
        (["-c1", "lumir24/LUMIR_dataset.json"], "LUMIR_dataset.json: invalid evaluation config"),
    ],
)  # fmt: skip
def test_a_config_its_rules_cannot_read_is_refused_by_name(tmp_path, capsys, args, message):
    args = [str(ORGANISERS / a) if a.endswith(".json") else a for a in args]
    code, _, err = run(capsys, *args, "-i", str(ORGANISERS / "lumir24" / "disp" / "zero"), "-d", str(ORGANISERS / "lumir24"), "-o", str(tmp_path / "r.json"), module=evaluate_cli)
    assert code == 1 and message in err and not (tmp_path / "r.json").exists()


def test_remind2reg_rules_with_fewer_than_three_pairs_say_why(tmp_path, capsys):
    root = ORGANISERS / "remind"
    config = json.loads((root / "ReMIND2Reg_VAL_evaluation_config.json").read_text())
    config["eval_pairs"] = config["eval_pairs"][:2]
    (tmp_path / "two.json").write_text(json.dumps(config))
    argv = ["-c", str(tmp_path / "two.json"), "-i", str(root / "disp" / "smooth"), "-d", str(root), "-o", str(tmp_path / "r.json")]
    code, _, err = run(capsys, *argv, module=evaluate_cli)
    assert code == 1 and "take the aggregated metrics from the third case, and this run has 2 pair(s)" in err
    assert run(capsys, *argv, "--rules", "l2r", module=evaluate_cli)[0] == 0


# ------------------------------------------------------------------- 3. nothing already written is lost


def test_resume_with_another_configuration_is_refused_before_anything_is_rewritten(trained, tmp_path, capsys):
    task, run_dir = trained
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    before = snapshot(run_copy)
    other = _config(tmp_path, loss={"smooth": 2.0})
    code, _, err = run(capsys, "train", "--data", str(task), "--config", str(other), "--out", str(run_copy), "--resume")
    assert code == 1 and "loss.smooth" in err and "--resume" in err
    assert snapshot(run_copy) == before  # config, checkpoints, log and curves untouched


def test_a_submission_folder_never_holds_fields_without_their_records(trained, tmp_path, capsys):
    task, run_dir = trained
    two = copy_task(task, tmp_path / "task", lambda m: add_val_pair(m, "./imagesTr/Blob_0001_0000.nii.gz", "./imagesTr/Blob_0002_0000.nii.gz"))
    out = tmp_path / "sub"
    assert run(capsys, "predict", "--data", str(two), "--run", str(run_dir), "--out", str(out), "--device", "cpu")[0] == 0
    manifest = (out / "runtimes.json").read_bytes()
    argv = ["predict", "--data", str(task), "--run", str(run_dir), "--out", str(out), "--device", "cpu", "--instance-opt-steps", "1"]
    code, _, err = run(capsys, *argv)
    assert code == 1 and "another configuration" in err and "--overwrite" in err
    assert (out / "runtimes.json").read_bytes() == manifest and (out / EXTRA_FIELD).exists()
    assert run(capsys, *argv, "--overwrite")[0] == 0
    records = json.loads((out / "runtimes.json").read_text())["runtimes"]
    fields = sorted(p.name for p in out.glob("disp_*"))
    assert fields == [VAL_FIELD] and list(records) == ["0004_0000<--0005_0000"]  # every field has its record


def test_a_temporary_left_by_a_killed_write_is_removed_by_the_next_run_and_a_live_writers_kept(trained, tmp_path, capsys):
    task, run_dir = trained
    out = tmp_path / "sub"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    machine = machine_id()
    stale = [out / f".{VAL_FIELD}.{machine}-{dead}-k1ll3d.tmp.nii.gz", out / f".runtimes.json.{machine}-{dead}-x9.tmp.json",
             out / f".{EXTRA_FIELD}.a.tmp.nii.gz"]  # the last: an older version's name, two days old
    for path in stale:
        path.write_bytes(b"")  # what kill -9 between mkstemp and rename leaves
    os.utime(stale[-1], (time.time() - 2 * 86400,) * 2)
    with subprocess.Popen(["sleep", "60"]) as live:  # a writer still at work (another job writing this file)
        alive = out / f".{EXTRA_FIELD}.{machine}-{live.pid}-w0rk.tmp.nii.gz"
        alive.write_bytes(b"")
        try:
            assert run(capsys, "predict", "--data", str(task), "--run", str(run_dir), "--out", str(out), "--device", "cpu")[0] == 0
        finally:
            live.kill()
    assert [p for p in out.iterdir() if ".tmp" in p.name] == [alive]


def _config(tmp_path: Path, **sections) -> Path:
    """A tiny training configuration file (``FAST`` with some sections replaced)."""
    raw = {**FAST}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    path = tmp_path / f"cfg{len(os.listdir(tmp_path))}.json"
    path.write_text(json.dumps(raw))
    return path


# ------------------------------------------------------------------- 4. the layouts of 2024-2026


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (to see that nothing is written)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _lumir(tmp_path: Path, edit=None) -> Path:
    """A copy of the organisers' LUMIR 2024 parity case, its LUMIR_dataset.json passed through ``edit(meta)``."""
    root = tmp_path / "LUMIR"
    shutil.copytree(CASES / "lumir24", root, ignore=shutil.ignore_patterns("disp"))
    if edit is not None:
        meta = json.loads((root / "LUMIR_dataset.json").read_text())
        edit(meta)
        (root / "LUMIR_dataset.json").write_text(json.dumps(meta))
    return root


def _validate_fails(capsys, root: Path, *expected: str) -> None:
    """``validate`` exits 1, names every ``expected`` text, and writes nothing."""
    before = _snapshot(root)
    code, out, err = run(capsys, "validate", "--no-progress", str(root))
    assert code == 1 and out == "" and err.strip().splitlines()[-1].startswith(f"FAILED {root}: ")
    for text in expected:
        assert text in err, err
    assert _snapshot(root) == before


def test_a_lumir_validation_pair_naming_a_missing_image(tmp_path, capsys):
    root = _lumir(tmp_path, lambda m: m["validation"][2].update(moving="./imagesVal/LUMIRMRI_3999_0000.nii.gz"))
    missing = root.resolve() / "imagesVal" / "LUMIRMRI_3999_0000.nii.gz"
    _validate_fails(capsys, root, f"{missing}: image of case 3999_0000 not found (named by LUMIR_dataset.json validation "
                                  "pair 3457_0000<--3999_0000)")


def test_a_lumir_landmark_volume_on_another_grid(tmp_path, capsys):
    root = _lumir(tmp_path)
    volume = root / "landmarksVal" / "LUMIRMRI_3486_0000.nii.gz"
    data, geometry = load_nifti(volume, dtype=None)
    save_nifti(volume, data[:, :, :-2], Geometry.identity((20, 24, 18)))
    _validate_fails(capsys, root, f"{volume.resolve()}: landmark volume shape (20, 24, 18) differs from its image's shape (20, 24, 20)")


def test_a_remind2reg_pair_missing_its_moving_t2_image(tmp_path, capsys):
    root = remind_task(tmp_path)
    shutil.rmtree(root / "masksTr")  # the parity case's masks hold 2s on purpose
    t2 = root.resolve() / "imagesTr" / "ReMIND2Reg_0100_0002.nii.gz"
    t2.unlink()
    _validate_fails(capsys, root, f"{t2}: image of case 0100_0002 not found")


def test_a_lumir_training_entry_escaping_the_folder(tmp_path, capsys):
    root = _lumir(tmp_path, lambda m: m["training"][1].update(image="../outside/LUMIRMRI_0001_0000.nii.gz"))
    escapes = "(image): path '../outside/LUMIRMRI_0001_0000.nii.gz' escapes the task folder"
    _validate_fails(capsys, root, f"{root.resolve() / 'LUMIR_dataset.json'}: training[1] {escapes}")
    code, _, err = run(capsys, "train", "--data", str(root), "--config", str(_config(tmp_path)), "--out", str(tmp_path / "run"))
    assert code == 1 and f"LUMIR_dataset.json training[1] {escapes}" in err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------- 5. submissions of the new layouts


def _fields(tmp_path: Path, source: Path) -> Path:
    """A copy of a folder of the parity cases' fields, with predict's records beside them."""
    sub = tmp_path / "sub"
    shutil.copytree(source, sub)
    (sub / "runtimes.json").write_text(json.dumps({"device": "cpu", "checkpoint": "x", "config_hash": "h", "runtimes": {}}))
    return sub


def _zeros_int16(path: Path) -> None:
    u, geometry = load_nifti(path)
    save_nifti(path, u.astype(np.int16), geometry)


def _nan(path: Path) -> None:
    u, geometry = load_nifti(path)
    u[1, 2, 3, 0] = np.nan
    save_nifti(path, u, geometry)


def _crop(path: Path) -> None:
    u, geometry = load_nifti(path)
    save_nifti(path, u[:, :, :-2], geometry)


def _channel_first(path: Path) -> None:
    u, geometry = load_nifti(path)
    save_nifti(path, np.ascontiguousarray(u.transpose(3, 0, 1, 2)), geometry)


LUMIR_FIELD, REMIND_FIELD = "disp_3456_3455.nii.gz", "disp_0100_0000_0100_0001.nii.gz"


@pytest.mark.parametrize(
    ("task", "field_set", "edit", "expected"),
    [
        ("lumir", "zero", lambda sub: (sub / LUMIR_FIELD).unlink(),
         "{sub}: missing displacement field for 3456_0000<--3455_0000: expected disp_3456_3455.nii.gz (lumir24 rules)"),
        ("lumir", "zero", lambda sub: (sub / "notes.txt").write_text("x"),
         "{sub}/notes.txt: not a field of a val pair of LUMIR under the lumir24 rules: remove it"),
        ("lumir", "zero", lambda sub: shutil.copy(sub / "disp_3455_3454.nii.gz", sub / "disp_3455_0000_3454_0000.nii.gz"),
         "{sub}: 2 files for 3455_0000<--3454_0000: disp_3455_3454.nii.gz, disp_3455_0000_3454_0000.nii.gz; the lumir24 "
         "evaluator reads disp_3455_3454.nii.gz: keep one file per pair"),
        ("lumir", "zero", lambda sub: _zeros_int16(sub / LUMIR_FIELD),
         "{sub}/" + LUMIR_FIELD + ": dtype int16; a field is stored as float32"),
        ("remind", "both", None,
         "{sub}: 2 files for 0099_0000<--0099_0001: disp_0099_0000_0099_0001.npz, disp_0099_0000_0099_0001.nii.gz; "
         "the remind2reg evaluator reads disp_0099_0000_0099_0001.npz: keep one file per pair"),
        ("remind", "zero", lambda sub: shutil.copy(sub / REMIND_FIELD, sub / "disp_0100_0100.nii.gz"),
         "{sub}: 2 files for 0100_0000<--0100_0001: disp_0100_0100.nii.gz, " + REMIND_FIELD),
        ("remind", "smooth", lambda sub: _crop(sub / REMIND_FIELD),
         "{sub}/" + REMIND_FIELD + ": shape 20x24x18x3; expected 20x24x20x3 (fixed grid x 3)"),
        ("remind", "smooth", lambda sub: _nan(sub / REMIND_FIELD), "{sub}/" + REMIND_FIELD + ": 1 NaN/Inf values"),
        ("remind", "smooth", lambda sub: _channel_first(sub / REMIND_FIELD),
         "{sub}/" + REMIND_FIELD + ": shape 3x20x24x20; expected 20x24x20x3 (fixed grid x 3); the remind2reg rules do not accept channel-first"),
    ],
    ids=["missing", "extra", "short-and-long", "int16", "npz-and-nii", "short-and-long-remind", "shape", "nan", "channel-first"],
)  # fmt: skip
def test_package_refuses_a_bad_submission_naming_the_file_and_what_is_wrong(tmp_path, capsys, task, field_set, edit, expected):
    root = _lumir(tmp_path) if task == "lumir" else remind_task(tmp_path)
    sub = _fields(tmp_path, ORGANISERS / ("lumir24" if task == "lumir" else "remind") / "disp" / field_set)
    if edit is not None:
        edit(sub)
    before, out = snapshot(sub), tmp_path / "upload.zip"
    code, _, err = run(capsys, "package", "--data", str(root), "--submission", str(sub), "--out", str(out))
    assert code == 1 and "problem(s); nothing written" in err and expected.format(sub=sub) in err, err
    assert not out.exists() and snapshot(sub) == before and not list(tmp_path.glob("*.zip*"))


@pytest.mark.parametrize(
    ("out", "expected"),
    [("upload.txt", "upload.txt: --out must name a .zip file"), ("sub/upload.zip", "inside the submission folder"),
     ("exists.zip", "exists.zip: already exists; pass --overwrite to replace it")],
)
def test_package_refuses_an_output_it_must_not_write(tmp_path, capsys, out, expected):
    sub = _fields(tmp_path, ORGANISERS / "lumir24" / "disp" / "zero")
    (tmp_path / "exists.zip").write_bytes(b"keep")
    before = _snapshot(tmp_path)
    code, _, err = run(capsys, "package", "--data", str(_lumir(tmp_path)), "--submission", str(sub), "--out", str(tmp_path / out))
    assert code == 1 and expected in err and (tmp_path / "exists.zip").read_bytes() == b"keep"
    assert {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith("LUMIR")} == before


def test_evaluate_d_alone_on_a_lumir_folder_names_the_short_name_its_rules_want(tmp_path, capsys):
    root = _lumir(tmp_path)
    sub = tmp_path / "long"
    sub.mkdir()
    for path in (ORGANISERS / "lumir24" / "disp" / "long_names").iterdir():
        shutil.copy(path, sub / path.name)
    code, _, err = run(capsys, "-i", str(sub), "-d", str(root), "-o", str(tmp_path / "r.json"), module=evaluate_cli)
    assert code == 1 and not (tmp_path / "r.json").exists()
    assert "expected disp_3455_3454.nii.gz (lumir24 rules); found disp_3455_0000_3454_0000.nii.gz, which the lumir24 rules do not accept" in err


def test_evaluate_d_alone_refuses_a_folder_of_several_configs_none_named_after_the_task(tmp_path, capsys):
    root = remind_task(tmp_path)
    meta = json.loads((root / "ReMIND2Reg_dataset.json").read_text())
    (root / "ReMIND2Reg_dataset.json").write_text(json.dumps({**meta, "name": "MyReMIND"}))
    code, _, err = run(capsys, "-d", str(root), "-o", str(tmp_path / "r.json"), module=initial_cli)
    assert code == 1 and not (tmp_path / "r.json").exists()
    assert "several organisers' configs for -c: L2R_VAL_evaluation_config.json, ReMIND2Reg_VAL_evaluation_config.json" in err


def test_predict_refuses_another_rule_set_for_a_2020_task(trained, tmp_path, capsys):
    _, run_dir = trained
    task = make_blob_task(tmp_path / "task_04", layout="l2r2020")
    code, _, err = run(capsys, "predict", "--data", str(task), "--run", str(run_dir), "--out", str(tmp_path / "sub"), "--rules", "lumir25")
    assert code == 1 and "a 2020-layout task is submitted in the 2020 format; --rules lumir25 is for current layouts" in err
    assert not (tmp_path / "sub").exists()


# ------------------------------------------------------------------- 2c. registration without a network, streamed training


def test_a_network_free_configuration_with_an_unknown_network_or_too_many_levels_is_refused_before_any_work(tmp_path, capsys):
    root = remind_task(tmp_path / "task")
    for key, value, allowed in [("network", "unet", 'one of "lapirn", "none"'), ("instance_opt_levels", 5, "an integer >= 1 and <= 4"),
                                ("instance_opt_window", 4, "an odd number of voxels, centred on each voxel")]:
        cfg = tmp_path / f"{key}.json"
        cfg.write_text(json.dumps({"predict": {"network": "none", "instance_opt_steps": 2, key: value}}))
        code, _, err = run(capsys, "predict", "--data", str(root), "--config", str(cfg), "--out", str(tmp_path / "sub"), "--device", "cpu")
        assert code == 1 and f"{cfg}: predict.{key}: {json.dumps(value)} (allowed: {allowed})" in err
        assert not (tmp_path / "sub").exists()


def test_predict_config_of_a_network_without_a_run_says_which_key_makes_it_network_free(tmp_path, capsys):
    root = remind_task(tmp_path / "task")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"predict": {"instance_opt_steps": 2}}))
    code, _, err = run(capsys, "predict", "--data", str(root), "--config", str(cfg), "--out", str(tmp_path / "sub"), "--device", "cpu")
    assert code == 1 and 'the configuration uses a network (predict.network "lapirn"), which needs --run' in err
    assert 'set predict.network to "none"' in err and not (tmp_path / "sub").exists()


def test_train_refuses_the_network_free_remind2reg_recipe_and_writes_nothing(tmp_path, capsys):
    root = remind_task(tmp_path / "task")
    recipe = Path(__file__).resolve().parent.parent / "configs" / "l2r_remind2reg.json"
    code, _, err = run(capsys, "train", "--data", str(root), "--config", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code == 1 and "this configuration is network-free" in err and "predict --config" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("option", "value", "why"), [("--workers", "-1", "-1: must be >= 0"), ("--workers", "two", "invalid"),
                                                      ("--case-memory-gb", "-1", "-1: must be a finite number >= 0"),
                                                      ("--case-memory-gb", "inf", "inf: must be a finite number >= 0")])
def test_streaming_options_out_of_range_are_usage_errors(trained, tmp_path, capsys, option, value, why):
    task, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(task), "--config", str(_config(tmp_path)), "--out", str(tmp_path / "run"), option, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"argument {option}: " in err and why in err and not (tmp_path / "run").exists()


def _image_only(task: Path, to: Path) -> Path:
    """A copy of the blob task without labels or validation pairs: its cases are read when a step first uses them."""
    def edit(meta: dict) -> None:
        for entry in meta["training"]:
            entry.pop("label", None)
        meta["registration_val"] = []
    copy = copy_task(task, to, edit)
    shutil.rmtree(copy / "labelsTr")
    return copy


def test_a_streamed_training_image_with_a_bad_header_stops_training_before_it_starts(trained, tmp_path, capsys):
    task = _image_only(trained[0], tmp_path / "task")
    image = task / "imagesTr" / "Blob_0003_0000.nii.gz"
    image.write_bytes(b"")
    code, _, err = run(capsys, "train", "--data", str(task), "--config", str(_config(tmp_path, loss={"dice": 0})),
                       "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code == 1 and f"{image}: unreadable NIfTI header" in err and not (tmp_path / "run").exists()


def test_a_streamed_training_image_truncated_inside_is_named_when_first_read_and_the_run_goes_on_once_fixed(trained, tmp_path, capsys):
    """Image-only cases are read when a step first uses them (the headers are checked at the start):
    a broken voxel block stops training then, naming the file and how to go on; fixed, the same
    command runs to the end."""
    task = _image_only(trained[0], tmp_path / "task")
    image = task / "imagesTr" / "Blob_0003_0000.nii.gz"
    intact = image.read_bytes()
    image.write_bytes(intact[: len(intact) // 2])
    cmd = ["train", "--data", str(task), "--config", str(_config(tmp_path, loss={"dice": 0})), "--out", str(tmp_path / "run"), "--device", "cpu"]
    code, _, err = run(capsys, *cmd)
    assert code == 1 and f"{image}: unreadable or truncated NIfTI (EOFError" in err and "when training first read it" in err
    assert f"python -m pipeline preprocess --data {task} --config CFG checks every image at once" in err
    assert "rerun the same command" in err
    image.write_bytes(intact)
    code, _, _ = run(capsys, *cmd + (["--resume"] if (tmp_path / "run" / "checkpoints" / "last.pt").exists() else []))
    assert code == 0 and (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


# ------------------------------------------------------------------- align: bounds, policy, fields of view


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--max-rotation", "-5"], ["--max-rotation", "(0, 90] degrees", "-5"]),
        (["--max-rotation", "ten"], ["--max-rotation", "not a number", "ten"]),
        (["--max-translation", "1.5"], ["--max-translation", "(0, 1]", "1.5"]),
        (["--on-implausible", "ignore"], ["--on-implausible", "ignore", "fallback"]),
        (["--fov", "sometimes"], ["--fov", "sometimes", "auto"]),
    ],
)
def test_align_bound_and_policy_options_are_usage_errors_naming_the_option(tmp_path, capsys, args, words):
    task = remind_task(tmp_path)
    with pytest.raises(SystemExit) as caught:
        main(["align", "--data", str(task), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and all(w in err for w in words) and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"max_rotation_deg": 0}, ["max_rotation_deg must be in (0, 90]"]),
        ({"min_overlap": 2}, ["min_overlap must be in [0, 1]"]),
        ({"on_implausible": "shrug"}, ["on_implausible must be one of", "shrug"]),
        ({"max_shear": "a lot"}, ["max_shear"]),
    ],
)
def test_align_bounds_in_a_config_file_are_refused_naming_the_file_and_the_key(tmp_path, capsys, settings, words):
    task = remind_task(tmp_path)
    (tmp_path / "affine.json").write_text(json.dumps(settings))
    code, _, err = run(capsys, "align", "--data", str(task), "--out", str(tmp_path / "out"), "--config", str(tmp_path / "affine.json"))
    assert code == 1 and "affine.json" in err and all(w in err for w in words), err
    assert not (tmp_path / "out").exists()
