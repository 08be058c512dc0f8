"""What a prediction runs with: the configuration of a run folder or of a network-free
configuration, with the command line's ``predict`` overrides (``--affine``, ``--instance-opt-*``,
``--set KEY=VALUE``: shared with ``register``), and the model loaded from its checkpoint, with the
hash that the fields' records carry (``pipeline.prediction.predict`` runs the pairs).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from learn2reg import rules as rulesets
from learn2reg.io import DataError, read_json
from learn2reg.task import Task
from pipeline.config import PredictConfig, RunConfig, config_from_dict
from pipeline.model.checkpoint import model_from_checkpoint
from pipeline.model.lapirn import LapIRN
from pipeline.prediction.folder import OPTION_OF, task_rules
from pipeline.prediction.scale import GridPolicy, trained_spacing


@dataclasses.dataclass(frozen=True)
class Predictor:
    """Everything one prediction run needs; ``model`` is ``None`` for network-free configs;
    ``task`` is ``None`` for a single pair (``register``)."""

    task: Task | None
    cfg: RunConfig
    model: LapIRN | None
    device: torch.device
    checkpoint: str
    config_hash: str
    grid_policy: GridPolicy | None = None  # the network's grid (pipeline.prediction.scale); None: affine-only

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def run_config(run_dir: Path | None, overrides: dict) -> RunConfig:
    """The configuration of a run folder (``run_dir/config.json``), else of ``config_file``, with
    the command line's ``predict`` overrides; ``DataError`` naming the file lists every problem."""
    if run_dir is not None:
        source = run_dir / "config.json"
        if not source.is_file():
            raise DataError(f"{run_dir}: not a run folder (no config.json)")
    elif overrides.get("config_file"):
        source = Path(overrides["config_file"])
    else:
        raise DataError("predict needs --run (a training run) or --config (a network-free configuration: predict.network \"none\")")
    raw = read_json(source)
    sets = dict(overrides.get("sets") or ())
    given = {k: v for k, v in overrides.items() if k not in ("config_file", "sets") and v is not None}
    where = str(source)
    if (sets or given) and isinstance(raw, dict) and isinstance(raw.get("predict", {}), dict):
        raw["predict"] = {**raw.get("predict", {}), **sets, **given}
        where += " with " + ", ".join([f"--set {k}={json.dumps(v)}" for k, v in sets.items()]
                                      + [f"--{k.replace('_', '-')} {v}" for k, v in given.items()])
    return config_from_dict(raw, where=where)


#: predict keys that have an option of their own (``--set`` refers to it)
OWN_OPTION = {key.removeprefix("predict."): option for key, option in OPTION_OF.items()}


def predict_setting(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE`` (argparse type): one key of the configuration's ``predict`` section
    (``predict.`` in front is optional) and its value, read as JSON (``3``, ``0.5``, ``true``,
    ``null``), else as a string. An unknown key, or one with an option of its own, is a usage error."""
    key, sep, value = text.partition("=")
    key = key.strip().removeprefix("predict.")
    known = {f.name for f in dataclasses.fields(PredictConfig)}
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. instance_opt_window=3")
    if key in OWN_OPTION:
        raise argparse.ArgumentTypeError(f"{text!r}: predict.{key} has its own option: {OWN_OPTION[key]}")
    if key not in known:
        raise argparse.ArgumentTypeError(f"{text!r}: predict.{key} is not a key of the predict section "
                                         f"(keys: {', '.join(sorted(known - set(OWN_OPTION)))})")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that override the configuration's ``predict`` section (``OPTION_OF``'s, but the
    grid's: ``add_scale_arguments``) and ``--set KEY=VALUE`` (repeatable), shared with ``register``."""
    parser.add_argument("--affine", choices=("none", "rigid", "affine"), default=None, help="override predict.affine")
    parser.add_argument("--instance-opt-steps", type=int, default=None, help="override predict.instance_opt_steps")
    parser.add_argument("--instance-opt-similarity", choices=("mind", "lncc"), default=None,
                        help="override predict.instance_opt_similarity: mind (MIND-SSC, any modality) or lncc (local NCC, mono-modal)")
    parser.add_argument("--set", dest="sets", type=predict_setting, action="append", default=None, metavar="KEY=VALUE",
                        help="override one key of the configuration's predict section (repeatable; the value as JSON), "
                             "e.g. --set instance_opt_window=3 --set instance_opt_presmooth=3; recorded with the outputs")


def load_predictor(cfg: RunConfig, run_dir: Path | None, task: Task | None, device: torch.device, checkpoint: str,
                   scale: str | None = None) -> Predictor:
    """Model of a run folder (``run_dir=None``: a network-free configuration, ``predict.network``
    "none" or ``affine_only``: no checkpoint is read). ``scale``: the network scale the user gave
    (:func:`explicit_scale`); without one the network runs at the spacing the run was trained at
    (``pipeline.prediction.scale``)."""
    ckpt_path = None
    model = None
    stamp = ""
    policy = None
    if cfg.predict.uses_network:
        if checkpoint not in ("best", "last"):
            ckpt_path = Path(checkpoint)
        elif run_dir is None:
            raise DataError("--config: the configuration uses a network (predict.network \"lapirn\"), which needs --run; "
                            "for registration without a network set predict.network to \"none\"")
        else:
            ckpt_path = run_dir / "checkpoints" / f"{checkpoint}.pt"
        model, _ = model_from_checkpoint(ckpt_path, device)
        policy = GridPolicy(trained_spacing(run_dir), scale)
        stamp = hashlib.sha256(ckpt_path.read_bytes()).hexdigest() + policy.stamp()
    names = task_rules(task)  # the file names depend on it: l2r's (and 2020's) keep their earlier hashes
    digest = hashlib.sha256((cfg.digest() + stamp + ("" if names == rulesets.L2R.name else f"rules={names}")).encode()).hexdigest()[:16]
    return Predictor(task, cfg, model, device, str(ckpt_path) if ckpt_path else network_free_name(cfg), digest, policy)


def network_free_name(cfg: RunConfig) -> str:
    """What stands for the checkpoint of a network-free prediction (manifest, records)."""
    return "affine-only" if cfg.predict.instance_opt_steps == 0 else "network-free (instance optimisation)"
