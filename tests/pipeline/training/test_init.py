"""``train --init SRC``: a new run starts from existing weights (an imported run, an authors' .pth,
a run folder), records where they came from, keeps ``train.frozen_levels`` unchanged, and
resumes exactly like any run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from learn2reg.io import DataError
from pipeline.cli import main
from pipeline.config import config_from_dict, load_config
from pipeline.model.authors import sha256_file
from pipeline.model.checkpoint import load_checkpoint
from pipeline.training.import_weights import import_weights
from pipeline.training.train import train
from pipeline.training.trainer import Trainer
from tests.paths import REPO
from tests.pipeline.training.test_train import TINY, make_blob_task

WEIGHTS = REPO / "weights" / "LapIRN_diff_fea7.pth"
# fine-tune only the finest level of the published weights, a few steps, labels supervising
FINETUNE = {
    "loss": {"dice": 1.0},
    "train": {**TINY["train"], "steps_per_level": [0, 0, 4], "frozen_levels": [1, 2], "freeze_steps": 0, "lr": 1e-4,
              "val_every": 2, "checkpoint_every": 1},
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("init")
    import_weights(WEIGHTS, root / "imported")
    return {"task": make_blob_task(root / "task"), "imported": root / "imported"}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_init_from_an_imported_run_starts_from_its_weights_and_records_the_source(sources, tmp_path, monkeypatch):
    start: list = []
    run_loop = Trainer.run
    monkeypatch.setattr(Trainer, "run", lambda self, tlog: start.append({k: v.clone() for k, v in self.model.state_dict().items()})
                        or run_loop(self, tlog))
    cfg = config_from_dict(FINETUNE)  # model section: our defaults (start_channel 7, align_corners true, ...)
    run = tmp_path / "run"
    assert train(sources["task"], cfg, run, device="cpu", init=sources["imported"]) == 0
    source = _weights(sources["imported"] / "checkpoints" / "best.pt")
    assert all(torch.equal(start[0][k], source[k]) for k in source)  # the first step starts from the source
    record = json.loads((run / "init.json").read_text())
    assert record["kind"] == "imported run" and record["source"] == str(sources["imported"].resolve())
    assert record["sha256"] == sha256_file(sources["imported"] / "checkpoints" / "best.pt")
    assert record["imported"]["sha256"] == sha256_file(WEIGHTS) and record["imported"]["published_file"] == WEIGHTS.name
    assert record["trained_spacing_mm"] == [1.0, 1.0, 1.0] and record["network_spacing_mm"] == [1.0, 1.0, 1.0]
    saved = load_config(run / "config.json")
    imported = load_config(sources["imported"] / "config.json")
    assert saved.model == imported.model and saved.model.align_corners is False  # the weights' model section
    assert saved.train.frozen_levels == (1, 2) and saved.loss.dice == 1.0  # the rest is --config's
    last = _weights(run / "checkpoints" / "last.pt")
    for key in source:  # levels 1 and 2 frozen throughout, level 3 trained
        assert torch.equal(last[key], source[key]) == (not key.startswith("nets.2.")), key
    log = pd.read_csv(run / "log.csv")
    first = log[(log.kind == "val") & (log.global_step == 0)]
    assert len(first) == 1 and first.level.item() == 3  # the starting weights, validated before any step
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["global_step"] == 4


def test_init_from_the_authors_pth_on_the_command_line(sources, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**FINETUNE, "train": {**FINETUNE["train"], "steps_per_level": [0, 0, 1]}}))
    run = tmp_path / "run"
    argv = ["train", "--data", str(sources["task"]), "--config", str(cfg), "--out", str(run), "--device", "cpu"]
    assert main([*argv, "--init", str(WEIGHTS)]) == 0
    record = json.loads((run / "init.json").read_text())
    assert (record["kind"], record["sha256"], record["variant"]) == ("authors' checkpoint", sha256_file(WEIGHTS), "diff")
    assert record["published_file"] == WEIGHTS.name and "sha256" in record["variant_from"]
    assert load_config(run / "config.json").model.diffeomorphic is True
    # a second run from the first one's folder
    assert main([*argv[:-4], "--out", str(tmp_path / "again"), "--device", "cpu", "--init", str(run)]) == 0
    assert json.loads((tmp_path / "again" / "init.json").read_text())["kind"] == "run folder"


def test_a_stopped_init_run_resumes_to_the_same_final_weights(sources, tmp_path, monkeypatch):
    cfg = config_from_dict(FINETUNE)
    assert train(sources["task"], cfg, tmp_path / "straight", device="cpu", init=sources["imported"]) == 0
    after = Trainer.after_step

    def stop_at_2(self, level, step, level_steps, tlog):
        after(self, level, step, level_steps, tlog)
        if self.state["global_step"] == 2:
            self.stop_signal = 15

    monkeypatch.setattr(Trainer, "after_step", stop_at_2)
    run = tmp_path / "stopped"
    assert train(sources["task"], cfg, run, device="cpu", init=sources["imported"]) == 143
    monkeypatch.setattr(Trainer, "after_step", after)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["global_step"] == 2
    # --resume needs no --init (init.json keeps the model section); the same --init is accepted, another refused
    with pytest.raises(DataError, match="not from these weights"):
        train(sources["task"], cfg, run, resume=True, device="cpu", init=WEIGHTS)
    assert train(sources["task"], cfg, run, resume=True, device="cpu") == 0
    a, b = _weights(tmp_path / "straight" / "checkpoints" / "last.pt"), _weights(run / "checkpoints" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_levels_are_checked_against_the_schedule():
    with pytest.raises(DataError, match="frozen_levels.*level 1 has 2 steps"):
        config_from_dict({"train": {"steps_per_level": [2, 0, 4], "frozen_levels": [1]}})
    with pytest.raises(DataError, match=r"frozen_levels: \[4\] \(allowed: levels 1..3"):
        config_from_dict({"train": {"frozen_levels": [4]}})
    assert config_from_dict({"train": {"steps_per_level": [0, 0, 4], "frozen_levels": [1, 2]}}).train.frozen_levels == (1, 2)


def test_a_missing_or_foreign_source_is_named(sources, tmp_path):
    cfg = config_from_dict(FINETUNE)
    with pytest.raises(DataError, match="not found"):
        train(sources["task"], cfg, tmp_path / "a", device="cpu", init=tmp_path / "nothing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="without checkpoints/best.pt"):
        train(sources["task"], cfg, tmp_path / "b", device="cpu", init=tmp_path / "empty")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
