"""One LapIRN training run, step by step (the stage around it: ``pipeline.training.train``, whose
docstring says what is trained and how): the model, its optimiser and schedule per level, the
pairs drawn (and read ahead), each step's losses under mixed precision, validation with the
best checkpoint kept, atomic checkpoints with everything ``--resume`` needs, and a stop on
SIGTERM/SIGINT or at ``--stop-at-step`` that saves ``last.pt`` first.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from learn2reg.io import DataError, write_json
from learn2reg.progress import progress
from pipeline.config import RunConfig, TrainConfig
from pipeline.data.stream import CaseStore
from pipeline.distributed import (
    DistInfo,
    any_flag,
    gather_checksums,
)
from pipeline.model.checkpoint import load_checkpoint, load_state, save_checkpoint
from pipeline.model.field import full_resolution_field
from pipeline.model.lapirn import LapIRN, LapIRNConfig
from pipeline.model.losses import level_loss, one_hot
from pipeline.model.precision import autocast, grad_scaler
from pipeline.training.augment import augment, sample_affine
from pipeline.training.log import TrainingLog, format_validation
from pipeline.training.pairs import TrainingData, tensor
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
