"""The memory check of ``train``: before the run folder is touched, the peak memory of training
(``pipeline.model.memory.training_phases``: the preprocessed cases held in memory, a training step
at the finest level with the configured loss, validation) against what the device has free
(``pipeline.model.memory_check``)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from learn2reg.io import read_nifti_header, write_json
from learn2reg.task import Task
from pipeline.config import RunConfig
from pipeline.data.preprocess import network_shape
from pipeline.data.stream import DEFAULT_MEMORY_BYTES
from pipeline.model.lapirn import LapIRNConfig
from pipeline.model.memory import Grid, Phase, allowance, peaks, training_phases
from pipeline.model.memory_check import MemoryCheck, Need, check, in_use
from pipeline.training.pairs import split_pairs

log = logging.getLogger(__name__)
RECORD = "memory.json"  # in the run folder
ASSUMED_CLASSES = 2  # label classes when the task description names none (a lower bound)


def task_grid(task: Task, ids: list[str]) -> tuple[Grid, tuple[float, float, float]]:
    """The largest image grid of the cases ``ids`` and its spacing (mm): the description's shape
    with the first image's spacing, else the largest header (the spacing matters with
    ``preprocess.target_spacing``)."""
    if task.shape is not None:
        return task.shape, read_nifti_header(task.case(ids[0]).image).spacing
    largest = max((read_nifti_header(task.case(c).image) for c in ids), key=lambda g: math.prod(g.shape))
    return largest.shape, largest.spacing


def cases_held(count: int, case_bytes: float, memory_bytes: int, workers: int) -> int:
    """At most how many of ``count`` prepared cases of ``case_bytes`` each training holds at once
    (``pipeline.data.stream.CaseStore``): the LRU's budget ``memory_bytes`` (and the one case it
    always keeps) plus the pair in use and, with ``workers``, the prefetched cases waiting
    (``lookahead``: ``4 * workers``); never more than all of them."""
    lru = int(memory_bytes // case_bytes) + 1 if case_bytes > 0 else count
    return min(count, lru + 2 + (4 * workers if workers > 0 else 0))


def hints(cfg: RunConfig, device: torch.device, top: Phase, num_classes: int) -> list[str]:
    """The options that would make training fit, the largest part first."""
    found = []
    if not cfg.preprocess.half_resolution:
        found.append("preprocess.half_resolution")
    if top.name != "preprocess" and cfg.model.start_channel > 1:
        found.append(f"fewer channels (model.start_channel {cfg.model.start_channel})")
    if device.type == "cuda" and cfg.train.amp == "none":
        found.append('train.amp "bf16"')
    if cfg.loss.dice > 0 and num_classes > 2:
        found.append(f"no Dice term (loss.dice 0; {num_classes} label classes one-hot)")
    if device.type == "cuda":
        found.append("--device cpu")
    elif torch.cuda.is_available():
        found.append("--device cuda")
    return found


def check_training(task: Task, cfg: RunConfig, device: torch.device, skip: bool = False, *,
                   case_memory_bytes: int = DEFAULT_MEMORY_BYTES, workers: int = 0) -> MemoryCheck:
    """Check training ``task`` under ``cfg`` on ``device`` before anything is written:
    ``DataError`` when it cannot fit (unless ``skip``), a warning when it is close. The cases
    held are those the case store keeps (:func:`cases_held`), not all of them."""
    started = time.perf_counter()
    on_gpu = device.type == "cuda"
    train, val = split_pairs(task, cfg.train.exclude_val_subjects)
    ids = sorted(train.case_ids() | {c for pair in val for c in pair})
    cases = [task.case(c) for c in ids]
    raw, spacing = task_grid(task, ids)
    grid = network_shape(raw, cfg.preprocess, spacing)
    labelled = [c for c in cases if c.label is not None]
    num_classes = (max(task.labels) + 1 if task.labels else ASSUMED_CLASSES) if labelled else 1
    held = 4 * len(cases) + (1 if num_classes <= 256 else 2) * len(labelled) + sum(c.mask is not None for c in cases)
    kept = cases_held(len(cases), held / len(cases) * math.prod(grid), case_memory_bytes, workers)
    held = math.ceil(held * kept / len(cases))
    model = LapIRNConfig(**vars(cfg.model))
    mask = cfg.loss.use_mask and any(c.mask is not None for c in cases)
    dice = cfg.loss.dice > 0 and num_classes > 1
    what = (f"a training step on the network grid {'x'.join(map(str, grid))} (start_channel {cfg.model.start_channel}"
            + (f", {num_classes} label classes" if dice else "") + ")")
    phases = training_phases(model, cfg.loss, grid, raw, held, num_classes=num_classes if dice else 1, mask=mask,
                             amp=cfg.train.amp if on_gpu else "none", on_gpu=on_gpu, network_what=what,
                             held_what=f"{kept} of the {len(cases)} preprocessed images held for training")
    top, host = peaks(phases, on_gpu)
    needs = [Need(device, top.device + allowance(top.device, on_gpu, "train"), in_use(device), top.what)]
    if host is not None:
        cpu = torch.device("cpu")
        needs.append(Need(cpu, host.host + allowance(host.host, False, "train"), in_use(cpu), host.what))
    return check("train", needs, hints(cfg, device, top, num_classes if dice else 1), skip, started=started)


def write_memory_record(run_dir: Path, memory: MemoryCheck) -> None:
    """``run_dir/memory.json``: the estimate beside the measured peak (``MemoryCheck.record``), logged too."""
    record = memory.record()
    write_json(run_dir / RECORD, record)
    if record:
        log.info("memory on %s: estimated peak %.2f GB, measured peak %.2f GB (%s)", record["device"],
                 record["estimate_gb"], record["peak_gb"], run_dir / RECORD)
