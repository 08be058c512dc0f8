"""Training pairs and preprocessed cases of a task, held in memory for the training loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from learn2reg.io import DataError
from learn2reg.task import Task
from pipeline.config import RunConfig
from pipeline.data.preprocess import MAX_TRAINING_LABEL, Prepared, load_prepared
from pipeline.data.split import split_pairs

__all__ = ["TrainingData", "load_training_data", "split_pairs", "tensor"]


@dataclass(frozen=True)
class TrainingData:
    """``train_pairs``/``val_pairs``: (fixed id, moving id); ``num_classes``: one-hot channels
    (max label id + 1; 1 when the task has no labels)."""

    task: Task
    cases: dict[str, Prepared]
    train_pairs: tuple[tuple[str, str], ...]
    val_pairs: tuple[tuple[str, str], ...]
    num_classes: int

    @property
    def val_held_out(self) -> bool:
        """Whether no subject of a validation pair is trained on (checkpoint selection is
        meaningful only then; ``train.exclude_val_subjects`` false trains on them)."""
        trained = {c.split("_")[0] for pair in self.train_pairs for c in pair}
        return not any(c.split("_")[0] in trained for pair in self.val_pairs for c in pair)

    @property
    def network_spacing(self) -> list[float]:
        """The voxel spacing (mm per axis) the network trains at: the median over the cases of
        their network grid's spacing (``pipeline.prediction.scale`` reads it back from
        ``dataset.json`` to run the network at that spacing by default)."""
        return [round(float(v), 6) for v in np.median([p.spacing for p in self.cases.values()], axis=0)]

    def describe(self) -> dict:
        """The dataset description written into the run folder."""
        t = self.task
        return {
            "name": t.name, "root": str(t.root), "layout": t.layout, "shape": t.shape, "labels": t.labels,
            "intra_patient": t.intra_patient, "num_classes": self.num_classes,
            "network_shape": {c: list(p.shape) for c, p in sorted(self.cases.items())},
            "network_spacing_mm": self.network_spacing,
            "train_pairs": [list(p) for p in self.train_pairs], "val_pairs": [list(p) for p in self.val_pairs],
        }


def load_training_data(task: Task, cfg: RunConfig, cache: Path | None) -> TrainingData:
    """Preprocess (through the cache) every case used by a training or validation pair."""
    train, val = split_pairs(task, cfg.train.exclude_val_subjects)
    ids = sorted({c for pair in train + val for c in pair})
    cases = {c: load_prepared(task, c, cfg.preprocess, cache) for c in ids}
    label_max = max((int(p.label.max()) for p in cases.values() if p.label is not None), default=0)
    num_classes = max([label_max, *task.labels]) + 1 if (label_max or task.labels) else 1
    if num_classes - 1 > MAX_TRAINING_LABEL:  # the label maps were checked: a label id of the description
        raise DataError(
            f"{task.root}: the task description names label {num_classes - 1}; training one-hot encodes labels "
            f"0..max, at most {MAX_TRAINING_LABEL} is supported"
        )
    if cfg.loss.dice > 0 and not any(cases[f].label is not None for f, _ in train):
        raise DataError(f"{task.root}: the configuration asks for Dice supervision but the training images have no labels")
    return TrainingData(task, cases, train, val, num_classes)


def tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``X x Y x Z`` array -> ``1 x 1 x X x Y x Z`` tensor on ``device`` (dtype kept)."""
    return torch.from_numpy(np.ascontiguousarray(array))[None, None].to(device)
