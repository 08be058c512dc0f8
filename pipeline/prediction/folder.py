"""The submission folder of a prediction: the names of its fields, its records (``runtimes.json``,
one ``runtimes.rankN.json`` per torchrun rank, merged at the end, and the resolved configuration
``predict_config.json``), fields of another configuration (refused, or removed with
``--overwrite``, naming the options that differ), resuming an interrupted prediction, and room
for the fields still to write (``pipeline.prediction.predict`` runs the pairs).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from learn2reg import rules as rulesets
from learn2reg.cli import overwrite_hint
from learn2reg.contract import disp_filename_2020
from learn2reg.errors import DataError
from learn2reg.faults import require_space, size_text
from learn2reg.io import read_json, read_nifti_header
from learn2reg.submission import read_manifest, submission_shape, write_manifest
from learn2reg.task import Layout, Pair, Task
from pipeline.config import differences, with_later_keys
from pipeline.distributed import DistInfo

if TYPE_CHECKING:
    from pipeline.prediction.predict import Predictor

log = logging.getLogger(__name__)

#: The resolved configuration of the fields in a submission folder (beside runtimes.json).
CONFIG_RECORD = "predict_config.json"
#: Configuration keys the command line sets -> their option (a refusal names the option).
OPTION_OF = {"predict.affine": "--affine", "predict.instance_opt_steps": "--instance-opt-steps",
             "predict.instance_opt_similarity": "--instance-opt-similarity",
             "predict.input_scale": "--input-scale", "predict.target_spacing": "--target-spacing"}



def task_rules(task: Task | None) -> str:
    """The rule set whose file names a prediction writes: the task's (``l2r`` for a 2020 task or none)."""
    return task.rules if task is not None and task.layout == Layout.L2R else rulesets.L2R.name


def output_name(task: Task, pair: Pair) -> str:
    """The field's file name: the 2020 name, or the one the task's rule set reads (``rules.disp_name``)."""
    if task.layout == Layout.L2R2020:
        return disp_filename_2020(pair.fixed, pair.moving)
    return rulesets.disp_name(task.rules, pair.fixed, pair.moving)


def prepare_out_dir(out_dir: Path, p: Predictor, task: Task, overwrite: bool, info: DistInfo) -> None:
    """Keep ``out_dir`` consistent before writing (its writer lock held, which also removed the
    temporaries of a killed earlier run): fields predicted under another configuration (recorded
    in a manifest there) are refused, or removed with their manifests when ``overwrite`` (every
    rank decides the same; rank 0 deletes)."""
    manifests = [m for m in (out_dir / "runtimes.json", *sorted(out_dir.glob("runtimes.rank*.json"))) if m.is_file()]
    foreign = {}
    for path in manifests:
        old = read_manifest(path)
        if old.get("config_hash") != p.config_hash:
            foreign[path] = [out_dir / name for key in old.get("runtimes", {}) for name in field_names(task, key)]
    present = sorted({f for fields in foreign.values() for f in fields if f.exists()})
    if present and not overwrite:
        old = read_manifest(next(iter(foreign)))
        raise DataError(
            f"{out_dir}: holds {len(present)} field(s) predicted under another configuration: "
            f"{what_differs(out_dir, p, old)}; choose another --out, or pass {overwrite_hint()} to replace them"
        )
    if info.is_main:
        for path in present + list(foreign):
            log.info("removing %s (another configuration; --overwrite)", path)
            path.unlink(missing_ok=True)
    if info.enabled:
        torch.distributed.barrier()


def what_differs(out_dir: Path, p: Predictor, old_manifest: dict) -> str:
    """The options and configuration keys whose values differ from those the fields in ``out_dir``
    were predicted with (``CONFIG_RECORD``), else the two checkpoints and hashes."""
    record_path = out_dir / CONFIG_RECORD
    record = read_json(record_path) if record_path.is_file() else None
    found = []
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
        for key, was, now in differences(with_later_keys(record["config"]), p.cfg.to_dict()):
            found.append(f"{OPTION_OF.get(key, key)} was {was!r}, now {now!r}" + ("" if key in OPTION_OF else f" ({key} of the configuration)"))
        if record.get("rules", rulesets.L2R.name) != task_rules(p.task):  # the file names differ
            found.append(f"--rules was {record.get('rules', rulesets.L2R.name)!r}, now {task_rules(p.task)!r}")
        if record.get("checkpoint") != p.checkpoint:
            found.append(f"--run/--checkpoint was {record.get('checkpoint')}, now {p.checkpoint}")
        elif not found:
            found.append(f"the weights of {p.checkpoint} changed since (config hash {old_manifest.get('config_hash')}, now {p.config_hash})")
        return "; ".join(found)
    return (f"checkpoint {old_manifest.get('checkpoint')}, config hash {old_manifest.get('config_hash')}; this run: "
            f"{p.checkpoint}, {p.config_hash}")


#: a field file is at least this fraction of its raw size (float32, or float16 for 2020): gzip/zip
#: shrink displacement fields to about 60-95 % (their mantissas are noise); zero fields are exempt
MIN_COMPRESSED = 0.25


def fields_bytes(task: Task, pairs: Sequence[Pair]) -> int:
    """The raw size of the fields of ``pairs`` (float32, or float16 for 2020; files are smaller),
    from the fixed images' headers (an unreadable one is that pair's problem, reported later)."""
    itemsize = 2 if task.layout == Layout.L2R2020 else 4
    total = 0
    for pair in pairs:
        with contextlib.suppress(DataError, OSError, KeyError):
            total += int(np.prod(submission_shape(task, read_nifti_header(task.case(pair.fixed).image).shape))) * 3 * itemsize
    return total


def check_field_space(out_dir: Path, p: Predictor, task: Task, pairs: Sequence[Pair]) -> None:
    """Refuse before the work (``OutputError``) when ``out_dir`` cannot hold the fields of
    ``pairs`` (those not yet written) at :data:`MIN_COMPRESSED` of their raw size."""
    if p.model is None and p.cfg.predict.affine == "none":
        return  # zero fields compress to almost nothing
    require_space(out_dir, int(fields_bytes(task, pairs) * MIN_COMPRESSED), f"the fields of the {len(pairs)} pair(s) still to predict")


def resume_advice(out_dir: Path, task: Task, pairs: Sequence[Pair]) -> str:
    """What a failed write of a prediction leaves safe, what the rest needs and how to go on."""
    left = [q for q in pairs if not (out_dir / output_name(task, q)).exists()]
    return (f"{len(pairs) - len(left)} of {len(pairs)} field(s) are in {out_dir}, complete and kept with their records; "
            f"the {len(left)} left need up to {size_text(fields_bytes(task, left))}: free space (or choose another --out), "
            "then rerun the same command: the pairs already written are skipped")


def field_names(task: Task, key: str) -> list[str]:
    """Every name the field of a pair may have in a submission folder: the 2020 one, or those of
    every rule set (a folder predicted under other ``--rules``)."""
    fixed, _, moving = key.partition("<--")
    if task.layout == Layout.L2R2020:
        return [output_name(task, Pair(fixed, moving))]
    return list(dict.fromkeys(rulesets.disp_name(r, fixed, moving) for r in rulesets.RULE_SETS))


def resume_manifest(merged: Path, own: Path, p: Predictor) -> dict:
    """Start from the earlier manifest when it was made under the same configuration."""
    runtimes: dict[str, Any] = {}
    fresh: dict[str, Any] = {"device": str(p.device) if p.device.type == "cpu" else torch.cuda.get_device_name(p.device),
             "checkpoint": p.checkpoint, "config_hash": p.config_hash, "runtimes": runtimes}
    for path in (own, merged):
        if path.exists():
            old = read_manifest(path)
            if old.get("config_hash") == p.config_hash:
                runtimes.update(old.get("runtimes", {}))
                if "memory" in old:
                    fresh.setdefault("memory", old["memory"])
                if "affine" in old:  # pre-alignment outcomes (pipeline.affine.bounds)
                    fresh["affine"] = {**old["affine"], **fresh.get("affine", {})}
                if "network_grid" in old:
                    pairs = fresh.get("network_grid", {}).get("pairs", {})
                    fresh["network_grid"] = {**old["network_grid"], "pairs": {**old["network_grid"].get("pairs", {}), **pairs}}
    return fresh


def merge_rank_manifests(out_dir: Path, world: int) -> None:
    parts = [read_manifest(out_dir / f"runtimes.rank{r}.json") for r in range(world)]
    merged = {**parts[0], "runtimes": {k: v for part in parts for k, v in part["runtimes"].items()}}
    affine = {k: v for part in parts for k, v in part.get("affine", {}).items()}
    if affine:
        merged["affine"] = affine
    grids = [part["network_grid"] for part in parts if "network_grid" in part]
    if grids:
        merged["network_grid"] = {**grids[0], "pairs": {k: v for g in grids for k, v in g.get("pairs", {}).items()}}
    write_manifest(out_dir / "runtimes.json", merged)
