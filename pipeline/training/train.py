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
import logging
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path

import torch

from learn2reg.errors import OutputError
from learn2reg.io import DataError, check_output_path, write_json
from learn2reg.task import load_task
from pipeline.config import RunConfig, load_config
from pipeline.data.stream import DEFAULT_MEMORY_BYTES
from pipeline.distributed import (
    add_device_argument,
    hold_folder,
    init_distributed,
    pick_device,
    shutdown,
)
from pipeline.training.init_weights import INIT_RECORD, check_init_spacing, init_config
from pipeline.training.log import TrainingLog
from pipeline.training.memory import check_training, write_memory_record
from pipeline.training.pairs import TrainingData, load_training_data, split_pairs
from pipeline.training.run_dir import (
    check_checkpoint_space,
    check_resume,
    checkpoint_to_resume,
    fresh_run_dir,
    resume_advice,
    task_problems,
)
from pipeline.training.trainer import Trainer

log = logging.getLogger(__name__)


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
