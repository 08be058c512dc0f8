"""Counting memory (``pipeline.model.memory``) against independent computations: the live-tensor
tracker against hand-counted bytes, the count on ``meta`` against the same work on real CPU
tensors, the scaled count of a large grid against its exact count, instance optimisation's
model against a tracked real run, the fold repair's model against tracemalloc; and the time
counting takes."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import tracemalloc

import numpy as np
import pytest
import torch

from pipeline.config import LossConfig
from pipeline.model import memory
from pipeline.model.field import full_resolution_field, predict_field
from pipeline.model.instance_opt import InstanceOptSettings, refine_field, repair_folds
from pipeline.model.lapirn import LapIRN, LapIRNConfig
from pipeline.model.losses import level_loss, one_hot

SMALL = LapIRNConfig(start_channel=2)
DICE = LossConfig(dice=1.0)


def test_the_tracker_counts_live_storages_once_and_frees_them():
    with memory.LiveBytes() as live:
        a = torch.empty(1000, device="meta")  # 4000 bytes
        b = a * 2  # +4000
        view = a.view(10, 100)  # a view: no new storage
        assert live.now == 8000
        del b
        assert live.now == 4000 and live.peak == 8000
        c = torch.empty(10, dtype=torch.float64)  # real CPU tensors too: +80
        assert live.now == 4080
        del a, view, c
        assert live.now == 0
    assert live.peak == 8000


def test_counting_leaves_the_random_generators_alone():
    state = torch.get_rng_state()
    memory.peak_of(lambda: torch.rand(10))
    assert torch.equal(torch.get_rng_state(), state)


def _cpu_train_step(config: LapIRNConfig, grid: tuple[int, int, int], num_classes: int) -> None:
    """The training step of ``meta_train_step`` on real CPU tensors (real one-hot labels, the real Dice)."""
    model = LapIRN(config)
    fixed, moving = torch.rand(1, 1, *grid), torch.rand(1, 1, *grid)
    out = model(moving, fixed)
    labels = [torch.randint(0, num_classes, (1, 1, *grid), dtype=torch.uint8) for _ in range(2)]
    onehots = [one_hot(lab, num_classes) for lab in labels]
    parts = level_loss(DICE, 3, 3, out.final.warped, out.final.fixed, out.final.field, fixed_onehot=onehots[0],
                       moving_onehot=onehots[1], dice_field=full_resolution_field(model, out))
    parts["total"].backward()


def test_the_meta_count_of_a_training_step_is_what_real_cpu_tensors_hold():
    grid = (24, 16, 32)
    counted = memory.peak_of(lambda: memory.meta_train_step(SMALL, DICE, grid, num_classes=3))
    real = memory.peak_of(lambda: _cpu_train_step(SMALL, grid, 3))
    # the real one-hot also makes the labels' int64 copies of two uint8 maps before one_hot's checks
    assert real == pytest.approx(counted, rel=0.02)
    assert memory.train_step_bytes(SMALL, DICE, grid, 3) == counted + 2 * memory.parameter_bytes(SMALL)  # + Adam's moments


def test_the_meta_count_of_inference_is_what_real_cpu_tensors_hold():
    grid = (24, 16, 32)
    model = LapIRN(SMALL)
    f, m = torch.rand(1, 1, *grid), torch.rand(1, 1, *grid)
    real = memory.peak_of(lambda: predict_field(model, m, f, torch.device("cpu"), "none"))
    params = memory.parameter_bytes(SMALL)  # made outside the tracker here, inside the count
    inputs = 2 * f.numel() * 4
    assert memory.inference_bytes(SMALL, grid) == pytest.approx(real + params + inputs, rel=0.02)


@pytest.mark.parametrize("grid", [(96, 80, 72), (200, 144, 40)])
def test_a_large_grid_scaled_from_two_small_counts_matches_its_exact_count(grid):
    """Tensor memory is affine in the voxel count: the line through two scaled-down grids (same
    aspect ratio) predicts the exact count of a grid 2-5 times larger within 2 %."""
    assert memory.padded_voxels(grid, 8) > memory.EXACT_VOXELS
    exact_train = memory.peak_of(lambda: memory.meta_train_step(SMALL, DICE, grid, num_classes=3))
    scaled_train = memory.train_step_bytes(SMALL, DICE, grid, 3) - 2 * memory.parameter_bytes(SMALL)
    assert scaled_train == pytest.approx(exact_train, rel=0.02)
    exact_inference = memory.peak_of(lambda: memory.meta_inference(SMALL, grid))
    assert memory.inference_bytes(SMALL, grid) == pytest.approx(exact_inference, rel=0.02)


def test_an_absurd_grid_is_counted_as_fast_as_a_small_one():
    config = LapIRNConfig(start_channel=7)
    memory.inference_bytes(config, (64, 64, 64))  # the first count imports torch's meta kernels
    start = time.perf_counter()
    huge = memory.inference_bytes(config, (2351, 2351, 2351))
    small = memory.inference_bytes(config, (48, 48, 48))
    assert time.perf_counter() - start < 5.0  # two scaled counts and one exact one (about 0.3 s idle)
    assert huge / 2351**3 == pytest.approx(small / 48**3, rel=0.1)  # bytes per voxel: the same network
    assert huge > 5 * 2**40  # terabytes


def test_reduced_precision_counts_the_convolutions_in_16_bits():
    grid = (32, 32, 32)
    fp32 = memory.train_step_bytes(SMALL, DICE, grid, 3, amp="none")
    bf16 = memory.train_step_bytes(SMALL, DICE, grid, 3, amp="bf16")
    assert 0.4 * fp32 < bf16 < 0.9 * fp32  # the fields, warps and losses stay float32
    assert memory.inference_bytes(SMALL, grid, "fp16") < memory.inference_bytes(SMALL, grid)


def test_the_count_follows_the_configuration():
    grid = (32, 32, 32)
    plain = memory.train_step_bytes(SMALL, LossConfig(), grid)
    assert memory.train_step_bytes(SMALL, DICE, grid, 36) > plain + 2 * 36 * math.prod(grid) * 4  # two float one-hots
    assert memory.train_step_bytes(SMALL, LossConfig(use_mask=True), grid, mask=True) > plain
    wide = dataclasses.replace(SMALL, start_channel=4)
    assert memory.train_step_bytes(wide, LossConfig(), grid) > 1.5 * plain
    diff = dataclasses.replace(SMALL, diffeomorphic=True)
    assert memory.inference_bytes(diff, grid) > memory.inference_bytes(SMALL, grid)  # scaling and squaring


@pytest.mark.parametrize("shape", [(48, 48, 48), (64, 72, 80)])
def test_instance_optimisation_matches_a_tracked_real_run(shape):
    settings = InstanceOptSettings(steps=2, unfold=False)
    gen = torch.Generator().manual_seed(1)
    f, m = torch.rand(1, 1, *shape, generator=gen), torch.rand(1, 1, *shape, generator=gen)
    real = memory.peak_of(functools.partial(refine_field, torch.zeros(1, 3, *shape), m, f, settings))
    device, host = memory.instance_opt_bytes(shape, settings)
    assert device == pytest.approx(real, rel=0.05) and host == 0


def test_the_fold_repair_model_bounds_its_numpy_arrays():
    shape = (40, 36, 32)
    rng = np.random.default_rng(0)
    u = (rng.normal(size=(*shape, 3)) * 0.8).astype(np.float32)  # folds: the repair rounds run
    tracemalloc.start()
    try:
        repair_folds(u, max_rounds=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = memory.instance_opt_bytes(shape, InstanceOptSettings(steps=1))[1]
    assert 0.7 * bound < peak <= bound


def test_phases_add_up_on_the_cpu_and_split_on_a_gpu():
    phases = [memory.Phase("a", "A", device=10, host=5), memory.Phase("b", "B", device=2, host=20)]
    top, host = memory.peaks(phases, on_gpu=False)
    assert (top.name, top.device, host) == ("b", 22, None)
    top, host = memory.peaks(phases, on_gpu=True)
    assert (top.name, top.device) == ("a", 10) and host is not None and (host.name, host.host) == ("b", 20)


def test_allowances_are_a_capped_fraction_plus_a_constant():
    mb = memory.MB
    assert memory.allowance(100 * mb, False, "train") == 50 * mb + 64 * mb
    assert memory.allowance(10_000 * mb, False, "train") == 384 * mb + 64 * mb
    assert memory.allowance(10_000 * mb, False, "predict") == 256 * mb + 32 * mb
    assert memory.allowance(10_000 * mb, True, "predict") == 1000 * mb + 256 * mb
