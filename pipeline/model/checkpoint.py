"""Checkpoints: written atomically, loaded with ``weights_only=True``, refused when foreign.

A checkpoint is a dict of tensors and plain Python values only:
``{"format": FORMAT, "version": 1, "model_config": {...}, "run_config": {...}, "model": state_dict,
"optimizer": state_dict | None, "state": {"level", "step", "global_step", "best_metric", ...},
"rng": {"torch": ByteTensor, "generator": ByteTensor}}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from learn2reg.io import DataError, atomic_path
from pipeline.model.lapirn import LapIRN, LapIRNConfig

FORMAT = "l2r-lapirn-checkpoint"
VERSION = 1
log = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus format tags) to ``path`` atomically: a crash mid-write leaves the
    previous checkpoint intact."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a Python file: a full disk surfaces as ENOSPC
        torch.save({"format": FORMAT, "version": VERSION, **payload}, fh)
    log.debug("checkpoint written: %s", path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one of our checkpoints safely (``weights_only=True``).

    Raises ``DataError`` naming the file when it is missing, not a torch file, unsafe to load
    (a pickle with arbitrary objects), or not written by this project.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise DataError(f"{path}: not a loadable checkpoint of this project ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} (missing or wrong 'format' tag); refusing to use it")
    if ckpt.get("version") != VERSION:
        raise DataError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (expected {VERSION})")
    for key in ("model_config", "model", "state"):
        if key not in ckpt:
            raise DataError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


def load_state(model: torch.nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """``model.load_state_dict(ckpt["model"])``; ``DataError`` naming the file when the weights
    belong to another network (missing, unexpected or differently shaped tensors)."""
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: the weights do not fit this LapIRN ({str(exc).splitlines()[0][:300]})") from exc


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[LapIRN, dict[str, Any]]:
    """The LapIRN a checkpoint describes (its stored constructor config), with its weights, in
    eval mode on ``device``, and the checkpoint itself. ``DataError`` naming the file for a
    foreign or malformed ``model_config`` or weights of another network."""
    ckpt = load_checkpoint(path, map_location=device)
    try:
        config = LapIRNConfig.from_dict(ckpt["model_config"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: model_config is not a LapIRN configuration ({exc})") from exc
    model = LapIRN(config).to(device).eval()
    load_state(model, ckpt, path)
    return model, ckpt
