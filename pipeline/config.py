"""Typed, frozen run configuration, loaded from JSON; unknown keys are rejected.

A configuration file has up to five sections, each optional (defaults below):

```json
{"preprocess": {...}, "model": {...}, "loss": {...}, "train": {...}, "predict": {...}}
```

Task configurations live in ``configs/`` (the four Learn2Reg 2020 tasks and the four demo
tasks); the resolved configuration is written into every run folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from evaluation.io import DataError, read_json


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become network input. ``window``: CT window in HU (clip, then [0, 1]);
    without it, [min, 99.5th percentile] -> [0, 1] (background 0)."""

    half_resolution: bool = False
    window: tuple[float, float] | None = None
    percentile: float = 99.5


@dataclass(frozen=True)
class ModelConfig:
    """LapIRN: ``levels`` pyramid levels, width ``start_channel`` (C = 4 * start_channel).
    Numerics (see ``pipeline.model.lapirn``): ``align_corners`` of the trilinear upsampling of a
    coarser level's flow (the authors' code: false), ``warp_padding`` of image warps ("border",
    the authors' code, or "zeros")."""

    levels: int = 3
    start_channel: int = 7
    diffeomorphic: bool = False
    range_flow: float = 0.4
    ss_steps: int = 7
    align_corners: bool = True
    warp_padding: str = "border"


@dataclass(frozen=True)
class LossConfig:
    """LapIRN's loss (see ``pipeline.model.losses.level_loss``): similarity pyramid of local NCC
    (windows fixed by the level, eps 1e-5), smoothness lambda / 2^(L-p) in the public code's
    units (``smooth_unit`` 2), Dice on warped labels (> 0 only where the task has training
    labels), anti-folding penalty, similarity inside the fixed mask (``use_mask``)."""

    eps: float = 1e-5
    smooth: float = 1.0
    smooth_unit: float = 2.0
    dice: float = 0.0
    antifold: float = 0.0
    use_mask: bool = False


@dataclass(frozen=True)
class AugmentConfig:
    """The seed paper's affine augmentation (see ``pipeline.training.augment``)."""

    prob: float = 0.1
    rotation_deg: float = 10.0
    translation: float = 0.05  # normalised units (fraction of the half-extent)
    scaling: float = 0.08


@dataclass(frozen=True)
class TrainConfig:
    """Progressive schedule: ``steps_per_level[p]`` steps at level p+1, levels below frozen
    for the first ``freeze_steps`` of each level after the first. Learning rate per level
    (each level starts a fresh Adam): ``lr`` throughout (``lr_schedule`` "constant", the
    authors' code) or a linear warm-up over ``warmup_steps`` then a cosine decay to 0 at the
    level's last step ("cosine"). ``cpu_threads``: with the CLI's passive OpenMP waiting, every
    parallel region wakes its sleeping threads; LapIRN's many small ops make one thread faster
    than two on the demo grids (see ``configs/demo_t4_hippocampus.json``)."""

    steps_per_level: tuple[int, ...] = (30000, 30000, 60000)
    freeze_steps: int = 2000
    lr: float = 1e-4
    lr_schedule: str = "constant"  # "constant" | "cosine"
    warmup_steps: int = 0
    val_every: int = 1000
    checkpoint_every: int = 1000
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    exclude_val_subjects: bool = True
    seed: int = 0
    amp: str = "bf16"  # "bf16" | "fp16" | "none"; autocast is used on GPU only
    deterministic: bool = False
    cpu_threads: int = 0  # torch intra-op threads while training on CPU (0: torch's default)

    def __post_init__(self) -> None:
        if self.cpu_threads < 0:
            raise DataError(f"train.cpu_threads: expected 0 (torch's default) or a positive count, got {self.cpu_threads}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise DataError(f"train.lr_schedule: expected \"constant\" or \"cosine\", got {self.lr_schedule!r}")


@dataclass(frozen=True)
class PredictConfig:
    """Inference: optional affine pre-alignment; ``affine_only`` (task 1 in the paper) skips the
    network; instance optimisation refines each field at test time."""

    affine: str = "none"  # "none" | "rigid" | "affine"
    affine_search_mm: float = 0.0  # exhaustive translation search radius before L-BFGS (0 = off)
    affine_only: bool = False
    instance_opt_steps: int = 0
    instance_opt_lr: float = 0.1
    instance_opt_smooth: float = 4.0  # smoothness weight (loss.smooth_unit units); > training's keeps SDlogJ down
    amp: str = "bf16"


@dataclass(frozen=True)
class RunConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, *sections: str) -> str:
        """Short stable hash of the given sections (all if none), for caches and manifests."""
        d = self.to_dict()
        picked = {k: d[k] for k in (sections or d)}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def _coerce(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and converting lists to tuples."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}  # "_comment" keys are notes
    unknown = sorted(set(raw) - names)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    values = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _coerce(hint, value, f"{where}.{key}")
        elif isinstance(value, list):
            values[key] = tuple(value)
        elif value is not None and hint in (float, int) and not isinstance(value, (int, float)):
            raise DataError(f"{where}.{key}: expected a number, got {value!r}")
        elif value is not None and hint is bool and not isinstance(value, bool):
            raise DataError(f"{where}.{key}: expected true/false, got {value!r}")
        else:
            values[key] = value
    return cls(**values)


def config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    return _coerce(RunConfig, raw, where)


def load_config(path: str | Path) -> RunConfig:
    """Read a JSON configuration; ``DataError`` naming the file for unknown keys or bad types."""
    return config_from_dict(read_json(path), where=str(path))
