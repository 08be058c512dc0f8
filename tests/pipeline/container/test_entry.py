"""The submission image's entry point, run in this process on temporary mounts: it registers what
the contract lists with the prediction path of ``predict`` (same fields), logs one line per pair and a
summary, stops with one message on missing inputs, and trains and tests as OncoReg's scripts do;
started as root it becomes the owner of the folder it writes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from learn2reg.io import load_nifti, write_json
from learn2reg.task import Case
from pipeline.container import entry
from pipeline.container import run as run_module
from pipeline.container.jobs import Mounts, parse_summary
from pipeline.prediction.predict import register_images
from pipeline.prediction.predictor import load_predictor, run_config
from tests.pipeline.training.test_train import trained_blob_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_blob_run(tmp_path_factory.mktemp("entry"))


def image_root(tmp_path: Path, contract: str, run: Path | None = None, config: dict | None = None, **record) -> Path:
    """What the image holds under /app/submission: the contract record and the run."""
    root = tmp_path / "submission"
    (root / "run" / "checkpoints").mkdir(parents=True)
    write_json(root / "contract.json", {"contract": contract, **record})
    if run is not None:
        (root / "run" / "config.json").write_bytes((run / "config.json").read_bytes())
        (root / "run" / "checkpoints" / "best.pt").write_bytes((run / "checkpoints" / "best.pt").read_bytes())
    else:
        write_json(root / "run" / "config.json", config or {})
    return root


def test_l2r_image_writes_the_fields_predict_computes_and_logs_each_pair(trained, tmp_path, capsys):
    task, run = trained
    out = tmp_path / "output"
    out.mkdir()
    code = entry.main(["-c", str(task / "Blob_dataset.json")], root=image_root(tmp_path, "l2r", run),
                      mounts=Mounts(input=task, output=out), switch_user=False)
    text = capsys.readouterr().out
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["disp_0004_0000_0005_0000.nii.gz"]
    assert "'registration_val' (no 'registration_test' pairs)" in text
    assert "[1/1] Blob_0004_0000.nii.gz <- Blob_0005_0000.nii.gz: disp_0004_0000_0005_0000.nii.gz in" in text
    summary = parse_summary(text)
    assert summary["pairs"] == summary["written"] == 1 and len(summary["pair_s"]) == 1 and summary["device"] == "cpu"
    p = load_predictor(run_config(run, {}), run, None, torch.device("cpu"), "best")
    expected, _, _ = register_images(p, Case("0004_0000", task / "imagesTr/Blob_0004_0000.nii.gz"),
                                     Case("0005_0000", task / "imagesTr/Blob_0005_0000.nii.gz"))
    np.testing.assert_allclose(load_nifti(out / "disp_0004_0000_0005_0000.nii.gz")[0], expected, atol=1e-5)


def test_an_implausible_pre_alignment_is_logged_and_summarised_and_the_field_still_written(trained, tmp_path, capsys, monkeypatch):
    """``predict`` exits 3 for it; the image exits 0 (the organisers' scripts count any other code as a failure)."""
    task, run = trained
    real = run_module.register_images

    def fell_back(p, fixed, moving, names=("", ""), grid=None, notes=None):
        result = real(p, fixed, moving, names, grid=grid, notes=notes)
        assert notes is not None, "the image asks for the pre-alignment's notes"
        notes["affine"] = {"action": "kept the translation stage's result", "reasons": ["rotation 95 deg > 45 deg"]}
        return result

    monkeypatch.setattr(run_module, "register_images", fell_back)
    out = tmp_path / "output"
    out.mkdir()
    code = entry.main(["-c", str(task / "Blob_dataset.json")], root=image_root(tmp_path, "l2r", run),
                      mounts=Mounts(input=task, output=out), switch_user=False)  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0 and (out / "disp_0004_0000_0005_0000.nii.gz").is_file(), text
    assert "disp_0004_0000_0005_0000.nii.gz in " in text and "s (implausible pre-alignment, fell back: rotation 95 deg > 45 deg)" in text
    assert parse_summary(text)["implausible_prealignment"] == ["disp_0004_0000_0005_0000.nii.gz"]


def test_a_missing_input_ends_the_run_with_one_message_and_nothing_written(trained, tmp_path, capsys):
    task, run = trained
    out = tmp_path / "output"
    out.mkdir()
    code = entry.main([], root=image_root(tmp_path, "lumir", run), mounts=Mounts(input=task, output=out, json=tmp_path / "LUMIR_dataset.json"),
                      switch_user=False)
    assert code == 1 and not list(out.iterdir())
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'LUMIR_dataset.json'}: not found (the organiser's command line binds or names it)"


def test_extra_arguments_are_logged_and_ignored_where_the_template_takes_none(trained, tmp_path, capsys):
    task, _ = trained
    out = tmp_path / "output"
    out.mkdir()
    meta = json.loads((task / "Blob_dataset.json").read_text())
    write_json(tmp_path / "d.json", {"validation": meta["registration_val"]})
    code = entry.main(["--fast", "x"], root=image_root(tmp_path, "lumir", config={"predict": {"affine_only": True}}),
                      mounts=Mounts(input=task, output=out, json=tmp_path / "d.json"), switch_user=False)
    text = capsys.readouterr().out
    assert code == 0 and "ignoring arguments --fast x (the lumir contract takes none of them)" in text
    u = load_nifti(out / "disp_0004_0005.nii.gz")[0]
    assert u.shape[0] == 3 and not u.any(), "a network-free run without pre-alignment: the zero field, channel-first"


def test_oncoreg_trains_then_tests_with_the_model_it_trained(trained, tmp_path, capsys):
    task, run = trained  # an inter-patient task: train.sh trains whatever the json holds
    model, results = tmp_path / "model", tmp_path / "results"
    model.mkdir()
    results.mkdir()
    config = json.loads((run / "config.json").read_text())
    config["train"]["steps_per_level"] = [1, 1, 2]
    root = image_root(tmp_path, "oncoreg", config=config)
    mounts = Mounts(input=task, output=results, model=model)
    assert entry.main(["Blob", "Val"], root=root, mounts=mounts, switch_user=False) == 1  # nothing trained, no baked weights
    assert "no trained model; run ./train.sh TASK first" in capsys.readouterr().err
    assert entry.main(["train", "Blob"], root=root, mounts=mounts, switch_user=False) == 0
    assert (model / "lapirn" / "checkpoints" / "best.pt").is_file() and (model / "debug.log").is_file()
    assert entry.main(["test", "Blob", "Val"], root=root, mounts=mounts, switch_user=False) == 0
    assert sorted(p.name for p in results.iterdir()) == ["debug.log", "disp_0004_0000_0005_0000.nii.gz"]
    assert f"model: {model / 'lapirn' / 'checkpoints' / 'best.pt'}" in capsys.readouterr().out


def _become(folder: str, queue) -> None:
    line = entry.become_user(Path(folder), 10001)
    queue.put((os.getuid(), os.getgid(), line))


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.parametrize(
    ("owner", "mode", "expected_uid", "says"),
    [(4242, 0o755, 4242, "the owner of"), (0, 0o777, 10001, "the image's user"), (0, 0o755, 0, "running as root: ")],
)
def test_started_as_root_the_entry_becomes_the_owner_of_the_folder_it_writes(tmp_path, owner, mode, expected_uid, says):
    folder = tmp_path / "out"
    folder.mkdir()
    os.chown(folder, owner, owner)
    folder.chmod(mode)
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_become, args=(str(folder), queue))
    child.start()
    uid, gid, line = queue.get(timeout=60)
    child.join(60)
    assert (uid, gid) == (expected_uid, expected_uid) and says in line, line
