"""The work of a submission image once its contract, user and arguments are settled
(``pipeline.container.entry``): register every pair, or train (OncoReg's ``train.sh``).

Both use the pipeline's own stages: one pair goes through ``predict``'s prediction path
(:func:`pipeline.prediction.predict.register_images`: optional affine pre-alignment, network,
optional instance optimisation, the field on the fixed grid) and training is ``train``'s
(:func:`pipeline.training.train.train`), on CUDA when the container has a GPU, else on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from learn2reg.dataset import description_path
from learn2reg.io import DataError
from pipeline.config import RunConfig
from pipeline.container.contracts import PAIRS_ONCOREG, Contract
from pipeline.container.jobs import (
    ONCOREG_RUN,
    Job,
    Mounts,
    check_output,
    oncoreg_json,
    pair_jobs,
    peak_memory_gib,
    summary_line,
    write_field,
)
from pipeline.distributed import DistInfo, pick_device
from pipeline.prediction.predict import register_images
from pipeline.prediction.predictor import Predictor, load_predictor, run_config
from pipeline.prediction.scale import explicit_scale
from pipeline.training.train import train

log = logging.getLogger("l2r-submission")


def model_run(contract: Contract, baked: Path, mounts: Mounts) -> Path:
    """The run to register with: OncoReg's model trained by ``train.sh`` (``/oncoreg/model/lapirn``)
    when there is one, else the run baked into the image. ``DataError`` when the image holds only a
    training configuration and nothing was trained."""
    if contract.pairs == PAIRS_ONCOREG and mounts.model is not None:
        trained = mounts.model / ONCOREG_RUN
        if (trained / "checkpoints" / "best.pt").is_file():
            return trained
        log.info("no model trained by ./train.sh in %s: registering with the run built into the image", mounts.model)
    cfg = run_config(baked, {})
    if cfg.predict.uses_network and not (baked / "checkpoints" / "best.pt").is_file():
        raise DataError(f"{mounts.model or baked}: no trained model; run ./train.sh TASK first (the image holds the training "
                        "configuration only)")
    return baked


def predictor(run: Path) -> Predictor:
    """The run's model on CUDA when the container has a GPU, else on the CPU; the network at the
    run's trained spacing unless the baked configuration gives a scale (as ``predict`` does)."""
    cfg: RunConfig = run_config(run, {})
    device = pick_device("auto", DistInfo())
    return load_predictor(cfg, None if not cfg.predict.uses_network else run, None, device, "best", explicit_scale({}, cfg))


def device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible)"


def register_all(contract: Contract, record: dict[str, Any], baked: Path, mounts: Mounts, args: argparse.Namespace,
                 started: float) -> int:
    """Check every input, then register every pair and write its field; returns the exit code
    (1 when a pair failed: the others are still written). Ends with the summary line. A pair whose
    pre-alignment was implausible (``predict`` exits 3) is logged and listed in the summary but
    exits 0: its field is written, and the organisers' scripts take any other code as a failure."""
    json_arg = getattr(args, "json_c", None) or getattr(args, "json", None)
    if contract.name == "l2r" and json_arg is None and mounts.input.is_dir():
        json_arg = description_path(mounts.input)  # none given: the data folder's only *_dataset.json
    jobs, source = pair_jobs(contract, mounts, json_arg=json_arg, moving_modality=record.get("moving_modality"),
                             task=getattr(args, "task", None), mode=getattr(args, "mode", None),
                             force_test=bool(getattr(args, "test", False)))
    check_output(mounts.output)
    run = model_run(contract, baked, mounts)
    p = predictor(run)
    log.info("%d pair(s) from %s; fields to %s", len(jobs), source, mounts.output)
    log.info("model: %s (config %s) on %s", p.checkpoint, p.config_hash, device_text(p.device))
    startup = time.perf_counter() - started
    times, failed, implausible = [], [], []
    for i, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        try:
            reasons = register_pair(contract, p, job, mounts.output)
        except (DataError, ValueError, OSError) as exc:
            failed.append(f"{job.fixed.image.name} <- {job.moving.image.name}: {exc}")
            log.info("[%d/%d] %s <- %s: FAILED (%s)", i, len(jobs), job.fixed.image.name, job.moving.image.name, exc)
            continue
        times.append(time.perf_counter() - t0)
        fell_back = f" (implausible pre-alignment, fell back: {'; '.join(reasons)})" if reasons else ""
        implausible += [job.name] if reasons else []
        log.info("[%d/%d] %s <- %s: %s in %.2f s%s", i, len(jobs), job.fixed.image.name, job.moving.image.name, job.name, times[-1],
                 fell_back)  # fmt: skip
    done = len(jobs) - len(failed)
    if times:
        log.info("done: %d of %d field(s) in %s, %.2f s per pair (max %.2f s), start-up %.1f s, peak memory %.2f GiB",
                 done, len(jobs), mounts.output, sum(times) / len(times), max(times), startup, peak_memory_gib())
    log.info("%s", summary_line({
        "contract": contract.name, "pairs": len(jobs), "written": done, "pair_s": [round(t, 3) for t in times],
        "startup_s": round(startup, 3), "peak_rss_gib": round(peak_memory_gib(), 3), "cpus": os.cpu_count(),
        "device": str(p.device), "peak_gpu_gib": _gpu_peak(p.device), "uid": os.getuid(), "implausible_prealignment": implausible,
    }))  # fmt: skip
    for problem in failed:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if failed else 0


def register_pair(contract: Contract, p: Predictor, job: Job, out_dir: Path) -> list[str]:
    """One pair through the prediction path, written as the contract's template writes it. The
    affine pre-alignment finds the fields of view from the images, with the modality names as
    hints, as in ``predict`` (``pipeline.affine.fov``). Returns why the pre-alignment was
    implausible (it then fell back, as in ``predict``, and the field is still written); empty: it was not."""
    notes: dict[str, Any] = {}
    u, _, _ = register_images(p, job.fixed, job.moving, job.modalities, notes=notes)
    write_field(contract, out_dir / job.name, u, job.moving)
    return list(notes.get("affine", {}).get("reasons", []))


def _gpu_peak(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def train_in_image(baked: Path, mounts: Mounts, task: str) -> int:
    """OncoReg's ``./train.sh TASK``: train the image's configuration on the task's
    ``training_paired_images`` into ``/oncoreg/model/lapirn`` (an earlier, interrupted training
    there is resumed; a finished one just finishes)."""
    if not mounts.input.is_dir():
        raise DataError(f"{mounts.input}: data folder not mounted (the organiser's command line binds it)")
    json_path = oncoreg_json(mounts.input, task)
    if description_path(mounts.input) != json_path:  # raises for several *_dataset.json
        raise DataError(f"{mounts.input}: {json_path.name} is not the folder's dataset json")
    if mounts.model is None:
        raise ValueError("the OncoReg contract has a model folder")
    check_output(mounts.model)
    cfg = run_config(baked, {})
    if not cfg.predict.uses_network:
        raise DataError(f"{baked}: a network-free configuration: there is nothing to train (test.sh registers without training)")
    out = mounts.model / ONCOREG_RUN
    resume = (out / "checkpoints" / "last.pt").is_file()
    log.info("training %s on %s into %s%s", task, device_text(pick_device("auto", DistInfo())), out, " (resuming)" if resume else "")
    code = train(mounts.input, cfg, out, resume=resume, device="auto")
    if code == 0:
        log.info("trained: %s (./test.sh %s Val|Ts registers with it)", out / "checkpoints" / "best.pt", task)
    return code
