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

from evaluation.io import DataError, atomic_path

FORMAT = "l2r-lapirn-checkpoint"
VERSION = 1
log = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus format tags) to ``path`` atomically: a crash mid-write leaves the
    previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
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
