"""The train stage on a task with bad or unusual label maps: errors name the file, large ids train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from learn2reg.io import load_nifti, save_nifti
from pipeline.cli import main
from tests.pipeline.training.test_train import TINY, make_blob_task

SHORT = {**TINY, "train": {**TINY["train"], "steps_per_level": [1, 1, 1], "freeze_steps": 0, "val_every": 1, "augment": {"prob": 1.0}}}


def _task_and_config(tmp_path: Path, raw: dict = SHORT) -> tuple[Path, Path]:
    task = make_blob_task(tmp_path / "blob", subjects=4)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(raw))
    return task, cfg


def _relabel(path: Path, change) -> None:
    labels, geometry = load_nifti(path, dtype=None)
    save_nifti(path, change(labels), geometry)


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (lambda lab: lab.astype(np.float32) * 0.5, "non-integer voxel(s) (e.g. [0.5])"),  # 2 -> 1.0 stays
        (lambda lab: lab.astype(np.int16) - 1, "label map has negative values (minimum -1)"),
        (lambda lab: lab.astype(np.int32) * 5000, "label 10000 is too large"),
    ],
    ids=["fractional", "negative", "too-large"],
)
def test_train_cli_refuses_a_bad_label_map_naming_it(tmp_path, capsys, change, text):
    task, cfg = _task_and_config(tmp_path)
    bad = task / "labelsTr" / "Blob_0002_0000.nii.gz"
    _relabel(bad, change)
    assert main(["train", "--data", str(task), "--config", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and text in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_labels_above_255_train_with_dice(tmp_path):
    """Label 2 renumbered 300: stored uint16, 301 one-hot channels, augmented and validated."""
    task, cfg = _task_and_config(tmp_path)
    for path in (task / "labelsTr").glob("*.nii.gz"):
        _relabel(path, lambda lab: np.where(lab == 2, 300, lab).astype(np.uint16))
    meta = json.loads((task / "Blob_dataset.json").read_text())
    meta["labels"] = {"0": {"1": "big", "300": "small"}}
    (task / "Blob_dataset.json").write_text(json.dumps(meta))
    run = tmp_path / "run"
    assert main(["train", "--data", str(task), "--config", str(cfg), "--out", str(run), "--device", "cpu"]) == 0
    assert json.loads((run / "dataset.json").read_text())["num_classes"] == 301
    assert (run / "checkpoints" / "last.pt").is_file()
