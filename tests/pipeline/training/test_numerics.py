"""Training numerics: model options plumbed from the config, float32 losses under autocast, the
fp16 loss scaler in checkpoints, legacy checkpoints, validation under the prediction's amp,
deterministic mode.

Mixed precision, loss scaling and CUDA's deterministic mode are GPU paths: their CPU stand-ins
say so in their names (``cpu_stand_in``), and their real twins are marked ``cuda`` (``pytest -m cuda``)."""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest
import torch

from evaluation.metrics import dice, label_counts
from learn2reg.io import DataError
from learn2reg.task import load_task
from pipeline.config import config_from_dict
from pipeline.distributed import DistInfo
from pipeline.model.checkpoint import save_checkpoint
from pipeline.training import trainer as trainer_module
from pipeline.training import validation as validation_module
from pipeline.training.pairs import load_training_data
from pipeline.training.train import use_deterministic_algorithms
from pipeline.training.trainer import Trainer
from tests.devices import STAND_IN_AND_CUDA
from tests.pipeline.training.test_train import TINY, make_blob_task

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def blob_task(tmp_path_factory):
    return make_blob_task(tmp_path_factory.mktemp("blob"))


def make_trainer(blob_task, tmp_path, model: dict | None = None, device: torch.device = CPU, train: dict | None = None,
                 **sections) -> Trainer:
    raw = {**TINY, "model": {**TINY["model"], **(model or {})}, "train": {**TINY["train"], "augment": {"prob": 0.0}, **(train or {})},
           **sections}
    cfg = config_from_dict(raw)
    data = load_training_data(load_task(blob_task), cfg, tmp_path / "cache")
    data = dataclasses.replace(data, train_pairs=data.train_pairs[:1])
    return Trainer(tmp_path / "run", data, cfg, device, DistInfo())


def conv_dtypes(trainer: Trainer) -> list[torch.dtype]:
    """The output dtype of every level's first convolution in the next forward passes."""
    seen: list[torch.dtype] = []
    for net in trainer.model.nets:
        net.encoder[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_model_numerics_come_from_the_run_config(blob_task, tmp_path):
    default = make_trainer(blob_task, tmp_path)
    assert (default.model.config.align_corners, default.model.config.warp_padding) == (True, "border")
    authors = make_trainer(blob_task, tmp_path, model={"align_corners": False, "warp_padding": "zeros"})
    assert (authors.model.config.align_corners, authors.model.config.warp_padding) == (False, "zeros")
    saved = authors.payload()["model_config"]
    assert saved["align_corners"] is False and saved["warp_padding"] == "zeros"


@pytest.mark.parametrize("device", STAND_IN_AND_CUDA)
def test_a_bf16_training_step_computes_float32_fields_and_losses(blob_task, tmp_path, monkeypatch, device):
    """The Trainer's autocast is GPU only: cpu_stand_in puts CPU bfloat16 autocast in its place;
    cuda runs the Trainer's own (train.amp "bf16") on the GPU. With zero residuals the Dice term
    is exactly 1 - Dice of the unwarped label maps, as in float32."""
    if device == "cpu":
        monkeypatch.setattr(trainer_module, "autocast", lambda device, amp: torch.autocast("cpu", dtype=torch.bfloat16))
    trainer = make_trainer(blob_task, tmp_path, device=torch.device(device))
    with torch.no_grad():
        for net in trainer.model.nets:
            net.head[2].weight.zero_()
    trainer.set_phase(1, 0, new_level=True)
    seen = conv_dtypes(trainer)
    parts = trainer.train_step(1)
    assert seen == [torch.bfloat16]
    (fixed_id, moving_id), = trainer.data.train_pairs
    fixed, moving = trainer.data.cases[fixed_id].label, trainer.data.cases[moving_id].label
    assert parts["dice"] == pytest.approx(1.0 - np.mean(dice(label_counts(fixed, moving, moving, [1, 2]))), abs=1e-5)
    assert all(np.isfinite(v) for v in parts.values())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in trainer.model.level_parameters(1))


def test_the_fp16_loss_scale_is_checkpointed_and_old_checkpoints_resume_cpu_stand_in(blob_task, tmp_path, caplog):
    """The scaler is enabled for fp16 on CUDA only; an enabled CPU scaler stands in for it and
    exercises the same code (the real one: test_an_fp16_training_step_on_cuda_...)."""
    trainer = make_trainer(blob_task, tmp_path)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    trainer.set_phase(1, 0, new_level=True)
    for step in range(2):
        trainer.train_step(1)
        trainer.state.update(step=step + 1, global_step=step + 1)
    assert trainer.scaler.get_scale() == 2.0**12  # grew once per finite step
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, trainer.payload())
    resumed = make_trainer(blob_task, tmp_path)
    resumed.scaler = torch.amp.GradScaler("cpu")  # a fresh scale of 2^16
    resumed.restore(path)
    assert resumed.scaler.get_scale() == 2.0**12 and resumed.state["global_step"] == 2
    payload = trainer.payload()
    del payload["scaler"]  # a checkpoint written before the scaler was saved
    save_checkpoint(path, payload)
    old = make_trainer(blob_task, tmp_path)
    old.scaler = torch.amp.GradScaler("cpu")
    with caplog.at_level(logging.WARNING):
        old.restore(path)
    assert old.scaler.get_scale() == 2.0**16 and "no fp16 loss-scaler state" in caplog.text
    plain = make_trainer(blob_task, tmp_path)  # CPU: the scaler is off, its state {} is ignored
    plain.restore(path)
    assert plain.payload()["scaler"] == {}


@pytest.mark.cuda
def test_an_fp16_training_step_on_cuda_scales_the_loss_and_checkpoints_the_scale(blob_task, tmp_path):
    """train.amp "fp16" on the GPU: float16 convolutions, the Trainer's own GradScaler (2^16 at the
    start, halved for every step whose gradients overflow, which it then skips), finite losses,
    weights that move, and the scale restored from the checkpoint."""
    trainer = make_trainer(blob_task, tmp_path, device=CUDA, train={"amp": "fp16"})
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 2.0**16
    seen = conv_dtypes(trainer)
    start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.set_phase(1, 0, new_level=True)
    for step in range(8):
        parts = trainer.train_step(1)
        assert all(np.isfinite(v) for v in parts.values()), parts
        trainer.state.update(step=step + 1, global_step=step + 1)
    assert set(seen) == {torch.float16}
    scale = trainer.scaler.get_scale()
    assert scale in [2.0**k for k in range(8, 17)]  # at most one halving per step
    weights = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert any(not torch.equal(start[k], weights[k]) for k in start)  # not every step was skipped
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, trainer.payload())
    resumed = make_trainer(blob_task, tmp_path, device=CUDA, train={"amp": "fp16"})
    resumed.restore(path)
    assert resumed.scaler.get_scale() == scale and resumed.state["global_step"] == 8


def test_a_checkpoint_from_before_the_numerics_keys_resumes_only_with_its_legacy_numerics(blob_task, tmp_path):
    trainer = make_trainer(blob_task, tmp_path)
    payload = trainer.payload()
    payload["model_config"] = {k: v for k, v in payload["model_config"].items() if k not in ("align_corners", "warp_padding")}
    path = tmp_path / "old.pt"
    save_checkpoint(path, payload)
    with pytest.raises(DataError, match='trained with align_corners true and warp_padding "zeros"'):
        make_trainer(blob_task, tmp_path).restore(path)
    legacy = make_trainer(blob_task, tmp_path, model={"warp_padding": "zeros"})
    legacy.restore(path)
    assert legacy.model.config.warp_padding == "zeros"


def test_validation_uses_the_prediction_amp_and_the_prediction_field(blob_task, tmp_path, monkeypatch):
    calls = []
    original = validation_module.predict_field

    def spy(model, moving, fixed, device, amp, level=None):
        calls.append((amp, level))
        return original(model, moving, fixed, device, amp, level=level)

    monkeypatch.setattr(validation_module, "predict_field", spy)
    trainer = make_trainer(blob_task, tmp_path, predict={"amp": "none"})
    assert trainer.cfg.train.amp == "bf16"
    metrics = trainer.validate(2)
    assert calls == [("none", 2)] * len(trainer.data.val_pairs) and np.isfinite(metrics["val_dice"])


def test_deterministic_mode_is_strict_on_cpu_and_sets_warn_only_for_cuda_cpu_stand_in(monkeypatch):
    """The CUDA half sets the flags only, without CUDA work, so that it runs anywhere; the real
    thing: test_deterministic_mode_on_cuda_trains_and_repeats_the_forward_pass."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        use_deterministic_algorithms(CPU)
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # CPU behaviour unchanged
        use_deterministic_algorithms(torch.device("cuda", 0))  # sets flags only: no CUDA work
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        use_deterministic_algorithms(torch.device("cuda", 0))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # a user's setting is kept
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.mark.cuda
def test_deterministic_mode_on_cuda_trains_and_repeats_the_forward_pass(blob_task, tmp_path, monkeypatch):
    """On the GPU: warn_only (grid_sample's backward has no deterministic CUDA kernel, so a
    training step warns instead of failing), the cuBLAS workspace set, and two identical trainers
    give bit-identical first losses (deterministic forward kernels)."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        use_deterministic_algorithms(CUDA)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        losses = []
        for _ in range(2):
            trainer = make_trainer(blob_task, tmp_path, device=CUDA)
            trainer.set_phase(1, 0, new_level=True)
            losses.append(trainer.train_step(1))
        assert all(np.isfinite(v) for v in losses[0].values()) and losses[0] == losses[1]
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
