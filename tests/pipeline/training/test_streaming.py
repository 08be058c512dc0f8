"""Training streams its data: prefetching threads and the in-memory budget change nothing in the
result, the pairs read ahead are the pairs the steps draw, a pair set too large to list resumes,
and a run folder from before a configuration key existed still resumes."""

from __future__ import annotations

import json

import pytest
import torch

from learn2reg.task import load_task
from pipeline.config import config_from_dict
from pipeline.data import split
from pipeline.distributed import DistInfo
from pipeline.model.checkpoint import load_checkpoint
from pipeline.training.pairs import load_training_data
from pipeline.training.run_dir import check_resume
from pipeline.training.train import train
from pipeline.training.trainer import Trainer
from tests.pipeline.training.test_train import FAST, make_blob_task

QUICK = {**FAST, "train": {**FAST["train"], "augment": {"prob": 0.5}}}


@pytest.fixture(scope="module")
def blob_task(tmp_path_factory):
    return make_blob_task(tmp_path_factory.mktemp("blob"))


def _weights(run) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def test_workers_and_a_tiny_memory_budget_give_the_same_weights(blob_task, tmp_path):
    cfg = config_from_dict(QUICK)
    assert train(blob_task, cfg, tmp_path / "plain", device="cpu") == 0
    assert train(blob_task, cfg, tmp_path / "streamed", device="cpu", workers=2, case_memory_bytes=0) == 0
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "streamed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "plain" / "dataset.json").read_text() == (tmp_path / "streamed" / "dataset.json").read_text()


def test_the_pairs_read_ahead_are_the_pairs_the_steps_draw(blob_task, tmp_path):
    cfg = config_from_dict(QUICK)
    data = load_training_data(load_task(blob_task), cfg, tmp_path / "cache")
    trainer = Trainer(tmp_path / "run", data, cfg, torch.device("cpu"), DistInfo())
    planned = trainer.upcoming_pairs(6)
    drawn: list[str] = []
    read = data.cases.__class__.__getitem__

    def spy(store, case_id):
        drawn.append(case_id)
        return read(store, case_id)

    trainer.set_phase(1, 0, new_level=True)
    data.cases.__class__.__getitem__ = spy  # type: ignore[method-assign]
    try:
        for _ in range(6):
            trainer.train_step(1)
    finally:
        data.cases.__class__.__getitem__ = read  # type: ignore[method-assign]
    assert [c for pair in planned for c in pair] == drawn and len(set(planned)) > 1


def test_a_pair_set_too_large_to_list_is_described_and_resumes(blob_task, tmp_path, monkeypatch):
    monkeypatch.setattr(split, "MAX_LISTED_PAIRS", 2)
    cfg = config_from_dict(QUICK)
    run = tmp_path / "run"
    assert train(blob_task, cfg, run, device="cpu", stop_at_step=2) == 0
    described = json.loads((run / "dataset.json").read_text())["train_pairs"]
    assert described == {"all_ordered_pairs_of": ["0001_0000", "0002_0000", "0003_0000"], "count": 6}
    assert train(blob_task, cfg, run, resume=True, device="cpu") == 0


def test_a_run_from_before_predict_network_existed_resumes(tmp_path):
    cfg = config_from_dict(QUICK)
    old = cfg.to_dict()
    del old["predict"]["network"], old["predict"]["instance_opt_levels"], old["predict"]["instance_opt_window"]  # keys added later
    (tmp_path / "config.json").write_text(json.dumps(old))
    check_resume(tmp_path, cfg, {})  # no difference reported
