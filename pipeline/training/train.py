"""Training stage: ``python -m pipeline train --data TASK_DIR --config CFG.json --out RUN_DIR``.

Progressive LapIRN training (level 1, then level 2 with level 1 frozen for the first
``freeze_steps``, then level 3 likewise), Adam (a fresh optimiser per level, as the authors'
code; constant or warm-up + cosine learning rate per level), ordered training pairs of the task,
the seed paper's affine augmentation, validation Dice/TRE every ``val_every`` steps with the
best checkpoint kept (fields computed as prediction does, under ``predict.amp``). The Dice term
of every level is scored on the input grid (the level's field upsampled), see
``pipeline.model.losses.level_loss``.

Mixed precision (``train.amp``, GPU only, ``pipeline.model.precision``): autocast covers the
forward pass, where only the convolutions run in reduced precision; the fields come back
float32 and the losses are computed outside autocast. fp16 scales the loss (``GradScaler``,
its state checkpointed). ``train.deterministic``: deterministic kernels (strict on CPU; on CUDA
with ``warn_only``, since ``grid_sample``'s backward has no deterministic kernel there, and
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set).

Fine-tuning (``--init SRC``, ``pipeline.training.init_weights``): the model starts from the
weights of a run folder, an imported run, a checkpoint or an authors' ``.pth``; optimiser and
schedule start fresh; the starting weights are validated first (a ``val`` row at step 0 and the
first ``best.pt`` candidate). ``train.frozen_levels`` keeps levels out of training throughout.

Faults: checkpoints are atomic; ``--resume`` restores model, optimiser, schedule position and
the random generator (and the fp16 loss scale), so a resumed run ends with the same weights as an uninterrupted one
(deterministic mode on CPU); SIGTERM/SIGINT save ``last.pt`` before exiting (code 143/130), and
``--stop-at-step N`` does the same after global step N, exiting 0 (training in slices).
Under ``torchrun`` the model is wrapped in DistributedDataParallel (nccl on GPU, gloo on CPU),
the pairs are sharded across ranks and rank 0 writes every file.

Data: the training pairs are drawn on the fly from an index (all ordered pairs are never
listed) and the cases are read on demand through the preprocessing cache, a few kept in memory
(``--case-memory-gb``; ``pipeline.training.pairs``), so memory does not grow with the number of
images. ``--workers N`` threads read the cases of the next steps ahead of time: the pairs of the
next steps are known in advance, drawn from a copy of the random generator exactly as the steps
will draw them, so prefetching changes the timing only, never which pairs are trained on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from learn2reg.errors import OutputError
from learn2reg.io import DataError, check_output_path, write_json
from learn2reg.progress import progress
from learn2reg.task import load_task
from pipeline.config import RunConfig, TrainConfig, load_config
from pipeline.data.stream import DEFAULT_MEMORY_BYTES, CaseStore
from pipeline.distributed import (
    DistInfo,
    add_device_argument,
    any_flag,
    gather_checksums,
    hold_folder,
    init_distributed,
    pick_device,
    shutdown,
)
from pipeline.model.checkpoint import load_checkpoint, load_state, save_checkpoint
from pipeline.model.field import full_resolution_field
from pipeline.model.lapirn import LapIRN, LapIRNConfig
from pipeline.model.losses import level_loss, one_hot
from pipeline.model.precision import autocast, grad_scaler
from pipeline.training.augment import augment, sample_affine
from pipeline.training.init_weights import INIT_RECORD, check_init_spacing, init_config
from pipeline.training.log import TrainingLog, format_validation
from pipeline.training.memory import check_training, write_memory_record
from pipeline.training.pairs import TrainingData, load_training_data, split_pairs, tensor
from pipeline.training.run_dir import (
    check_checkpoint_space,
    check_resume,
    checkpoint_to_resume,
    fresh_run_dir,
    resume_advice,
    task_problems,
)
from pipeline.training.validation import validate_pairs

log = logging.getLogger(__name__)


def learning_rate(cfg: TrainConfig, level: int, step: int) -> float:
    """Adam's learning rate for 0-based ``step`` of ``level`` (see ``TrainConfig``): a pure
    function of the position, so a resumed run follows the same schedule."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps_per_level[level - 1] - cfg.warmup_steps, 1)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - cfg.warmup_steps) / span))


class TrainState(TypedDict):
    """Where a run stands (checkpointed as it is): level and step within it, steps overall, the best
    validation score so far and its global step (-1: none yet)."""

    level: int
    step: int
    global_step: int
    best_score: float
    best_step: int


class Trainer:
    """One training run in ``run_dir``; ``run()`` returns the exit code."""

    def __init__(self, run_dir: Path, data: TrainingData, cfg: RunConfig, device: torch.device, info: DistInfo,
                 init_state: dict[str, torch.Tensor] | None = None) -> None:
        self.run_dir, self.data, self.cfg, self.device, self.info = run_dir, data, cfg, device, info
        torch.manual_seed(cfg.train.seed)
        self.model = LapIRN(LapIRNConfig(**vars(cfg.model))).to(device)
        self.from_init = init_state is not None  # --init: the starting weights are validated first
        if init_state is not None:
            self.model.load_state_dict(init_state)
        self.levels = cfg.model.levels
        self.loss_cfg = cfg.loss if data.num_classes > 1 else dataclasses.replace(cfg.loss, dice=0.0)
        self.gen = torch.Generator().manual_seed(cfg.train.seed)
        self.state: TrainState = {"level": 1, "step": 0, "global_step": 0, "best_score": float("-inf"), "best_step": -1}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler = grad_scaler(device, cfg.train.amp)  # a pass-through unless fp16 on CUDA
        self.wrapped: torch.nn.Module = self.model
        self.phase: tuple[int, bool] | None = None
        self.stop_signal: int | None = None
        self.stop_at_step: int | None = None  # see train()
        self.on_step: Callable[[dict], None] | None = None  # see train()
        self.prefetch_steps = 0  # steps whose cases are read ahead (train(workers=...))
        self.saved: dict[str, int] = {}  # checkpoint name -> global step it holds (written by this process)

    # ------------------------------------------------------------------ checkpoints

    def payload(self) -> dict:
        return {
            "model_config": self.model.config.to_dict(),
            "run_config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),  # {} when loss scaling is off
            "state": dict(self.state),
            "rng": {"generator": self.gen.get_state(), "torch": torch.get_rng_state()},
            "task": self.data.task.name,
        }

    def save(self, name: str) -> None:
        if self.info.is_main:
            save_checkpoint(self.run_dir / "checkpoints" / name, self.payload())
            self.saved[name] = self.state["global_step"]

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        self.check_model_config(path, ckpt["model_config"])
        load_state(self.model, ckpt, path)
        self.state.update(ckpt["state"])
        self.gen.set_state(ckpt["rng"]["generator"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.set_phase(self.state["level"], self.state["step"], new_level=True)
        if ckpt["optimizer"] is not None:
            self.adam.load_state_dict(ckpt["optimizer"])
        if self.scaler.is_enabled():
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            else:  # written before loss scaling was checkpointed, or by a run without it
                log.warning("%s holds no fp16 loss-scaler state: starting from a fresh scale", path)
        log.info("resumed from %s at level %d step %d", path, self.state["level"], self.state["step"])

    def check_model_config(self, path: Path, saved: dict) -> None:
        """Refuse a checkpoint made with another model configuration; missing keys of old
        checkpoints count with their legacy values (``LapIRNConfig.from_dict``)."""
        try:
            same = LapIRNConfig.from_dict(saved) == self.model.config
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from exc
        if not same:
            hint = ""
            if {"align_corners", "warp_padding"} - set(saved):
                hint = (" (written before model.align_corners/model.warp_padding existed: it was trained with"
                        " align_corners true and warp_padding \"zeros\"; set those in the model section to resume it)")
            raise DataError(f"{path}: model config {saved} differs from the run's {self.model.config.to_dict()}{hint}")

    # ------------------------------------------------------------------ schedule

    @property
    def adam(self) -> torch.optim.Optimizer:
        """The optimiser of the current phase (made by :meth:`set_phase`)."""
        if self.optimizer is None:
            raise RuntimeError("no optimiser before set_phase")
        return self.optimizer

    def set_phase(self, level: int, step: int, new_level: bool = False) -> None:
        """Trainable levels for (level, step): level alone while the lower ones are frozen,
        then 1..level, less ``train.frozen_levels`` (when those include ``level``, its freeze
        phase leaves the lower levels free). Levels above are never trainable (unused in the forward)."""
        frozen = level > 1 and step < self.cfg.train.freeze_steps and level not in self.cfg.train.frozen_levels
        phase = (level, frozen)
        if phase == self.phase and not new_level:
            return
        lowest = level if frozen else 1
        for p, net in enumerate(self.model.nets, start=1):
            net.requires_grad_(lowest <= p <= level and p not in self.cfg.train.frozen_levels)
        if new_level or self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.train.lr)
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DDP(self.model, device_ids=ids)
        self.phase = phase

    # ------------------------------------------------------------------ one step

    def sample_pair(self, gen: torch.Generator | None = None) -> tuple[str, str]:
        """Same random stream on every rank; each rank reads its own shard of the pairs."""
        shard = self.data.train_pairs[self.info.rank :: self.info.world_size] or self.data.train_pairs
        idx = int(torch.randint(1 << 30, (1,), generator=self.gen if gen is None else gen)) % len(shard)
        return shard[idx]

    def upcoming_pairs(self, steps: int) -> list[tuple[str, str]]:
        """The pairs of the next ``steps`` training steps, drawn from a copy of the generator as
        :meth:`train_step` will draw them (a pair, then an augmentation, which consumes the same
        random numbers whatever it draws and whatever the grid)."""
        gen = torch.Generator().manual_seed(0)
        gen.set_state(self.gen.get_state())
        pairs = []
        for _ in range(steps):
            pairs.append(self.sample_pair(gen))
            sample_affine((2, 2, 2), gen, self.cfg.train.augment)
        return pairs

    def prefetch(self) -> None:
        """Ask the case store to read the cases of the next steps (``--workers``; else nothing)."""
        if self.prefetch_steps > 0 and isinstance(self.data.cases, CaseStore):
            self.data.cases.prefetch(c for pair in self.upcoming_pairs(self.prefetch_steps) for c in pair)

    def train_step(self, level: int) -> dict[str, float]:
        fixed_id, moving_id = self.sample_pair()
        fixed_case, moving_case = self.data.cases[fixed_id], self.data.cases[moving_id]
        fixed = tensor(fixed_case.image, self.device)
        moving = tensor(moving_case.image, self.device)
        moving_label = tensor(moving_case.label, self.device) if moving_case.label is not None else None
        matrix = sample_affine(tuple(moving.shape[2:]), self.gen, self.cfg.train.augment)
        self.prefetch()  # the generator now stands where the next step starts
        if matrix is not None:
            moving, moving_label, _, _ = augment(matrix, moving, moving_label)
        with autocast(self.device, self.cfg.train.amp):  # convolutions only: the outputs are float32
            out = self.wrapped(moving, fixed, level=level)
        lv = out.final  # losses outside autocast, in float32
        extra = self.level_extras(level, fixed_case, moving_label)
        if "fixed_onehot" in extra:
            extra["dice_field"] = full_resolution_field(self.model, out)
        parts = level_loss(self.loss_cfg, level, self.levels, lv.warped, lv.fixed, lv.field, reg_field=lv.velocity_field, **extra)
        self.adam.zero_grad(set_to_none=True)
        self.scaler.scale(parts["total"]).backward()
        self.scaler.step(self.adam)
        self.scaler.update()
        return {k: float(v.detach()) for k, v in parts.items()}

    def level_extras(self, level: int, fixed_case, moving_label: torch.Tensor | None) -> dict:
        extra: dict = {}
        if self.cfg.loss.use_mask and fixed_case.mask is not None:
            extra["mask"] = self.model.pyramid(tensor(fixed_case.mask, self.device).float())[level - 1]
        if self.loss_cfg.dice > 0 and fixed_case.label is not None and moving_label is not None:
            # on the input grid at every level (warped by the level's upsampled field, see level_loss)
            k = self.data.num_classes
            extra["fixed_onehot"] = one_hot(tensor(fixed_case.label, self.device), k)
            extra["moving_onehot"] = one_hot(moving_label, k)
        return extra

    # ------------------------------------------------------------------ the loop

    def validate(self, level: int) -> dict[str, float]:
        self.model.eval()
        try:
            return validate_pairs(self.model, self.data, level, self.device, self.cfg.predict.amp)
        finally:
            self.model.train()

    def run(self, tlog: TrainingLog) -> int:
        steps = self.cfg.train.steps_per_level
        start = time.perf_counter()
        if self.state["global_step"] == 0 and self.info.is_main:
            zero = self.validate_zero()
            log.info("validation of the zero field: %s", format_validation(zero))
            tlog.add(global_step=0, level=0, step=0, kind="initial", **zero)
            if self.from_init:
                self.validate_init(tlog)
        total = sum(steps[: self.levels])  # the bar counts global steps; the postfix names the level
        bar = progress(total=total, initial=self.state["global_step"], desc="train", unit="step", enabled=self.info.is_main, logger=log)
        self.model.train()
        for level in range(self.state["level"], self.levels + 1):
            first = self.state["step"] if level == self.state["level"] else 0
            self.state.update({"level": level, "step": first})
            self.set_phase(level, first, new_level=self.optimizer is None or first == 0)
            for step in range(first, steps[level - 1]):
                self.set_phase(level, step)
                lr = learning_rate(self.cfg.train, level, step)
                for group in self.adam.param_groups:
                    group["lr"] = lr
                t0 = time.perf_counter()
                parts = self.train_step(level)
                self.state.update({"step": step + 1, "global_step": self.state["global_step"] + 1})
                rate = 1.0 / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(level=level, loss=f"{parts['total']:.4f}", refresh=False)
                bar.update(1)
                if self.info.is_main:
                    tlog.add(global_step=self.state["global_step"], level=level, step=step + 1, kind="train",
                             loss=parts["total"], similarity=parts["similarity"], smooth=parts["smooth"],
                             dice=parts["dice"], antifold=parts["antifold"], lr=lr, steps_per_s=rate,
                             elapsed_s=time.perf_counter() - start)
                self.after_step(level, step + 1, steps[level - 1], tlog)
                if self.on_step is not None:
                    self.on_step(dict(self.state))
                asked = self.state["global_step"] == self.stop_at_step and self.state["global_step"] < total
                if any_flag(self.stop_signal is not None or asked, self.info, self.device):
                    self.save("last.pt")
                    if self.info.is_main:
                        tlog.write()
                    bar.close()
                    if asked and self.stop_signal is None:
                        log.info("stopped at global step %d (--stop-at-step); continue with --resume", self.state["global_step"])
                        return 0
                    sig = self.stop_signal or signal.SIGTERM
                    log.warning("stopped by signal %d at global step %d; resume with --resume", sig, self.state["global_step"])
                    return 128 + int(sig)
            if level < self.levels:  # the next level starts with a fresh optimiser
                self.state.update({"level": level + 1, "step": 0})
                self.optimizer = None
        bar.close()
        self.finish(tlog)
        return 0

    def after_step(self, level: int, step: int, level_steps: int, tlog: TrainingLog) -> None:
        g, t = self.state["global_step"], self.cfg.train
        if step % t.val_every == 0 or step == level_steps:
            metrics = self.validate(level) if self.info.is_main else {}
            if self.info.is_main:
                why = "" if level == self.levels else f"; not a best.pt candidate (best.pt is chosen at the final level {self.levels})"
                log.info("validation at step %d (level %d, step %d of %d): %s%s", g, level, step, level_steps,
                         format_validation(metrics), why)
                tlog.add(global_step=g, level=level, step=step, kind="val", **metrics)
                if level == self.levels:
                    self.keep_best(metrics["val_score"], g)
                    tlog.best_step = self.state["best_step"]  # marked in curves.png
                tlog.write()
        if step % t.checkpoint_every == 0 or step == level_steps:
            self.save("last.pt")

    def keep_best(self, score: float, global_step: int) -> None:
        """``best.pt``: the checkpoint with the highest held-out validation score; without a
        score (no validation pairs, no labels or points on them) or without held-out pairs
        (``train.exclude_val_subjects`` false), the latest checkpoint (best = last)."""
        if not self.data.val_held_out or not math.isfinite(score):
            if self.state["best_step"] < 0:
                why = "no validation metric" if self.data.val_held_out else "the validation pairs are not held out"
                log.info("best.pt follows the last checkpoint (%s)", why)
            self.state.update({"best_step": global_step})
            self.save("best.pt")
        elif score > self.state["best_score"]:
            first = self.state["best_step"] < 0
            self.state.update({"best_score": score, "best_step": global_step})
            if first:  # earlier levels may have scored higher: their coarser fields are not candidates
                log.info("first best checkpoint at step %d: validation score %.4f (best.pt is tracked at the final level %d only)",
                         global_step, score, self.levels)
            else:
                log.info("new best checkpoint at step %d: validation score %.4f (best at level %d so far)", global_step, score, self.levels)
            self.save("best.pt")

    def validate_init(self, tlog: TrainingLog) -> None:
        """``--init``: the starting weights at the finest level, before any step: a ``val`` row at
        step 0 and the first candidate for ``best.pt`` (fine-tuning must beat them to replace them)."""
        metrics = self.validate(self.levels)
        log.info("validation of the starting weights (--init): %s", format_validation(metrics))
        tlog.add(global_step=0, level=self.levels, step=0, kind="val", **metrics)
        self.keep_best(metrics["val_score"], 0)
        tlog.best_step = self.state["best_step"]
        tlog.write()

    def validate_zero(self) -> dict[str, float]:
        return validate_pairs(None, self.data, self.levels, self.device, self.cfg.predict.amp)

    def finish(self, tlog: TrainingLog) -> None:
        """Final checkpoint, log, and (distributed) a check that every rank holds the same weights."""
        self.save("last.pt")
        flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
        checksum = float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)).sum())
        sums = gather_checksums(checksum, self.info, self.device)
        if self.info.is_main:
            if not (self.run_dir / "checkpoints" / "best.pt").exists():
                self.save("best.pt")
                tlog.best_step = self.state["global_step"]  # best = last
            tlog.write()
            log.info("finished at step %d: checkpoints in %s (best.pt from step %d)", self.state["global_step"],
                     self.run_dir / "checkpoints", self.state["best_step"])
            write_json(self.run_dir / "final.json", {"state": self.state, "rank_checksums": sums, "world_size": self.info.world_size})


# ---------------------------------------------------------------------- the stage


def use_deterministic_algorithms(device: torch.device) -> None:
    """``train.deterministic``. CPU: strict (every op LapIRN uses has a deterministic kernel; the
    exact-resume tests rely on it). CUDA: ``warn_only``, because ``grid_sample``'s backward has
    no deterministic CUDA kernel (a warning instead of a crash), and cuBLAS needs a fixed
    workspace: ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless already set (before cuBLAS starts)."""
    if device.type != "cuda":
        torch.use_deterministic_algorithms(True)
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    log.info("deterministic mode on %s: deterministic kernels where they exist (warn_only: grid_sample's backward has none),"
             " CUBLAS_WORKSPACE_CONFIG=%s", device, os.environ["CUBLAS_WORKSPACE_CONFIG"])


def train(data_dir: Path, cfg: RunConfig, run_dir: Path, resume: bool = False, device: str = "auto", cache: Path | None = None,
          stop_at_step: int | None = None, on_step: Callable[[dict], None] | None = None, skip_memory_check: bool = False,
          init: Path | None = None, *, workers: int = 0, case_memory_bytes: int = DEFAULT_MEMORY_BYTES) -> int:
    """Train LapIRN on a task folder into ``run_dir``; returns the exit code.

    ``workers``: threads that read the cases of the next ``2 * workers`` steps ahead (0: each case
    is read when a step needs it); ``case_memory_bytes``: the prepared cases kept in memory (LRU).
    Neither changes the result.

    ``stop_at_step``: after that global step (counted over all levels) write ``last.pt`` and the
    log and return 0; ``resume=True`` continues from there (a step at or past the end: the run
    just finishes). ``on_step``: called after every step, once its validation and checkpoint are
    done, with a copy of the trainer state (``level``, ``step``, ``global_step``, ``best_score``,
    ``best_step``), e.g. to report progress from Python. Before the run folder is filled, the peak
    memory of training is checked against what the device has free (``pipeline.training.memory``:
    ``DataError`` when it cannot fit, unless ``skip_memory_check``); the estimate and the measured
    peak go into ``run_dir/memory.json``. ``init``: start from those weights
    (``pipeline.training.init_weights``).
    """
    if not cfg.predict.uses_network:
        raise DataError(f"{data_dir}: this configuration is network-free (predict.network \"none\" or predict.affine_only): "
                        "there is no network to train; predict with it directly (predict --config)")
    info = init_distributed(device)
    held = contextlib.ExitStack()  # the run folder's writer lock (one writer; the torchrun job is one)
    trainer: Trainer | None = None
    data: TrainingData | None = None
    try:
        dev = pick_device(device, info)
        if cfg.train.deterministic:
            use_deterministic_algorithms(dev)  # before any CUDA work
        task = load_task(data_dir)
        task_problems(task)
        check_output_path(run_dir, folder=True)  # before the lock makes the folder
        lock = held.enter_context(hold_folder(run_dir, info, dev))
        resume_from = checkpoint_to_resume(run_dir, resume)
        cfg, source = init_config(run_dir, cfg, init, resume_from is not None)
        if resume_from is not None:
            train_pairs, val_pairs = split_pairs(task, cfg.train.exclude_val_subjects)
            check_resume(run_dir, cfg, {"train_pairs": train_pairs.describe(), "val_pairs": [list(p) for p in val_pairs]})
        memory = check_training(task, cfg, dev, skip_memory_check, case_memory_bytes=case_memory_bytes, workers=workers)  # before the run folder is filled
        with fresh_run_dir(run_dir, created=lock.created):
            data = load_training_data(task, cfg, cache or run_dir / "cache", workers=workers, memory_bytes=case_memory_bytes)
            if info.is_main and resume_from is None:
                write_json(run_dir / "config.json", cfg.to_dict())
                write_json(run_dir / "dataset.json", data.describe())
                if source is not None:
                    write_json(run_dir / INIT_RECORD, {**source.record, "network_spacing_mm": data.network_spacing})
            if source is not None:
                check_init_spacing(source, data.network_spacing)
            trainer = Trainer(run_dir, data, cfg, dev, info, None if source is None or resume_from is not None else source.state)
            if info.is_main:
                check_checkpoint_space(run_dir, trainer.model)
                log.info("training %s on %s (world size %d) into %s", task.name, dev, info.world_size, run_dir)
            if resume_from is not None:
                trainer.restore(resume_from)
            if stop_at_step is not None and trainer.state["global_step"] >= stop_at_step:
                raise DataError(f"{run_dir}: --stop-at-step {stop_at_step} is not after the run's step {trainer.state['global_step']}")
            trainer.stop_at_step, trainer.on_step = stop_at_step, on_step
            trainer.prefetch_steps = 2 * workers
        tlog = TrainingLog(run_dir, trainer.state["global_step"] if resume_from else None, levels=cfg.model.levels,
                           best_step=trainer.state["best_step"] if trainer.state["best_step"] >= 0 else None)
        previous = {s: signal.signal(s, lambda signum, _f: setattr(trainer, "stop_signal", signum)) for s in (signal.SIGTERM, signal.SIGINT)}
        threads = torch.get_num_threads()
        if dev.type == "cpu" and cfg.train.cpu_threads:
            torch.set_num_threads(cfg.train.cpu_threads)
        try:
            code = trainer.run(tlog)
            if info.is_main:
                write_memory_record(run_dir, memory)
            return code
        except DataError as exc:  # a streamed case found bad when a step first read it
            raise DataError(f"{exc} (met at global step {trainer.state['global_step']}, when training first read it); "
                            + bad_case_advice(data_dir, run_dir)) from exc
        finally:
            torch.set_num_threads(threads)
            for s, handler in previous.items():
                signal.signal(s, handler)
    except OutputError as exc:  # a full disk or a folder it may not write: what is kept, how to resume
        if trainer is None:
            raise
        raise exc.with_next_step(resume_advice(run_dir, trainer.saved.get("last.pt"))) from exc
    finally:
        if data is not None:
            data.close()
        held.close()
        shutdown(info)


def bad_case_advice(data_dir: Path, run_dir: Path) -> str:
    """How to go on after a bad image met during training (the cases are read when first used)."""
    check = f"python -m pipeline preprocess --data {data_dir} --config CFG checks every image at once"
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists():
        return f"{last} is kept: fix or replace the image ({check}), then rerun the same command with --resume"
    return f"no checkpoint was written yet: fix or replace the image ({check}), then rerun the same command"


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="task folder (either layout)")
    parser.add_argument("--config", type=Path, required=True, help="run configuration (JSON, see configs/)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, plots)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                        help="after global step N (all levels counted): write last.pt and exit 0; continue with --resume")
    add_device_argument(parser)
    parser.add_argument("--cache", type=Path, default=None, help="preprocessing cache (default: OUT/cache)")
    parser.add_argument("--workers", type=_count, default=0, metavar="N",
                        help="threads that read (and on first use preprocess) the cases of the next steps ahead (0: none); "
                             "the result does not depend on it")
    parser.add_argument("--case-memory-gb", type=_gigabytes, default=DEFAULT_MEMORY_BYTES / 2**30, metavar="GB",
                        help="prepared cases kept in memory, most recently used first; memory does not "
                             "grow with the number of images")
    parser.add_argument("--skip-memory-check", action="store_true",
                        help="run even when the estimated peak memory exceeds what the device has free")
    parser.add_argument("--init", type=Path, default=None, metavar="SRC",
                        help="start from these weights (fine-tuning): a run folder, an imported run, a checkpoint, or an "
                             "authors' .pth (as import-weights recognises it); the model section follows them, the rest "
                             "is --config's (train.frozen_levels, preprocess.target_spacing); fresh optimiser and schedule")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0")
    return value


def _gigabytes(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number >= 0")
    return value


def run(args: argparse.Namespace) -> int:
    code = train(args.data, load_config(args.config), args.out, args.resume, args.device, args.cache, args.stop_at_step,
                 skip_memory_check=args.skip_memory_check, init=args.init, workers=args.workers,
                 case_memory_bytes=int(args.case_memory_gb * 2**30))
    if code == 0 and int(os.environ.get("RANK", "0")) == 0:
        if args.stop_at_step is not None:
            print(f"run folder: {args.out} (stopped at step {args.stop_at_step} or earlier if the schedule ended)\n"
                  f"next: the same command with --resume (and without --stop-at-step, or a later one) continues it")
        else:
            print(f"run folder: {args.out} (checkpoints/best.pt, log.csv, curves.png)\n"
                  f"next: python -m pipeline predict --run {args.out} --data {args.data} --out outputs/{Path(args.out).name}/{Path(args.data).name}")
    return code
