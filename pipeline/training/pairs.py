"""Training pairs and prepared cases of a task, for the training loop.

Nothing here grows with the number of images: the pairs are indexed, not listed
(``pipeline.data.split.TrainingPairs``: LUMIR's 11.4 million ordered pairs), and the cases are
read on demand through the preprocessing cache, a few kept in memory
(``pipeline.data.stream.CaseStore``). Cases with label maps are prepared once at the start (their
labels give the number of one-hot classes and are checked before the run writes anything), then
dropped from memory; image-only cases are prepared on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from learn2reg.io import DataError
from learn2reg.task import Task
from pipeline.config import RunConfig
from pipeline.data.preprocess import MAX_TRAINING_LABEL, Prepared, load_prepared
from pipeline.data.split import TrainingPairs, split_pairs
from pipeline.data.stream import DEFAULT_MEMORY_BYTES, CaseStore

__all__ = ["TrainingData", "TrainingPairs", "load_training_data", "split_pairs", "tensor"]


@dataclass(frozen=True)
class TrainingData:
    """``train_pairs``/``val_pairs``: (fixed id, moving id); ``cases``: every case of those pairs
    by id (read on demand: a :class:`CaseStore`); ``num_classes``: one-hot channels (max label id
    + 1; 1 when the task has no labels)."""

    task: Task
    cases: Mapping[str, Prepared]
    train_pairs: TrainingPairs
    val_pairs: tuple[tuple[str, str], ...]
    num_classes: int

    @property
    def val_held_out(self) -> bool:
        """Whether no subject of a validation pair is trained on (checkpoint selection is
        meaningful only then; ``train.exclude_val_subjects`` false trains on them)."""
        trained = {c.split("_")[0] for c in self.train_pairs.case_ids()}
        return not any(c.split("_")[0] in trained for pair in self.val_pairs for c in pair)

    @property
    def network_spacing(self) -> list[float]:
        """The voxel spacing (mm per axis) the network trains at: the median over the cases of
        their network grid's spacing (``pipeline.prediction.scale`` reads it back from
        ``dataset.json`` to run the network at that spacing by default)."""
        if isinstance(self.cases, CaseStore):  # from the headers: no voxel data read
            spacings = [self.cases.network_grid(c)[1] for c in self.cases]
        else:
            spacings = [p.spacing for p in self.cases.values()]
        return [round(float(v), 6) for v in np.median(spacings, axis=0)]

    def describe(self) -> dict:
        """The dataset description written into the run folder (no voxel data read)."""
        t = self.task
        shape = self.cases.network_shape if isinstance(self.cases, CaseStore) else (lambda c: self.cases[c].shape)
        return {
            "name": t.name, "root": str(t.root), "layout": t.layout, "shape": t.shape, "labels": t.labels,
            "intra_patient": t.intra_patient, "num_classes": self.num_classes,
            "network_shape": {c: list(shape(c)) for c in sorted(self.cases)},
            "network_spacing_mm": self.network_spacing,
            "train_pairs": self.train_pairs.describe(), "val_pairs": [list(p) for p in self.val_pairs],
        }

    def close(self) -> None:
        """Stop the store's background readers (if any)."""
        if isinstance(self.cases, CaseStore):
            self.cases.close()


def load_training_data(task: Task, cfg: RunConfig, cache: Path | None, workers: int = 0,
                       memory_bytes: int = DEFAULT_MEMORY_BYTES) -> TrainingData:
    """The pairs and a :class:`CaseStore` of their cases (``workers`` prefetching threads, LRU of
    ``memory_bytes``); the cases with label maps are prepared (through the cache) and checked now."""
    train, val = split_pairs(task, cfg.train.exclude_val_subjects)
    ids = sorted(train.case_ids() | {c for pair in val for c in pair})
    store = CaseStore(task, cfg.preprocess, cache, ids, memory_bytes=memory_bytes, workers=workers, lookahead=4 * max(workers, 1))
    store.check_headers()
    labelled = [c for c in ids if task.case(c).label is not None]
    label_max = 0
    for case_id in labelled:  # one at a time: memory stays that of one case
        label = load_prepared(task, case_id, cfg.preprocess, cache).label
        label_max = max(label_max, int(label.max()) if label is not None and label.size else 0)
    num_classes = max([label_max, *task.labels]) + 1 if (label_max or task.labels) else 1
    if num_classes - 1 > MAX_TRAINING_LABEL:  # the label maps were checked: a label id of the description
        raise DataError(
            f"{task.root}: the task description names label {num_classes - 1}; training one-hot encodes labels "
            f"0..max, at most {MAX_TRAINING_LABEL} is supported"
        )
    if cfg.loss.dice > 0 and not any(task.case(f).label is not None for f in train.fixed_ids()):
        raise DataError(f"{task.root}: the configuration asks for Dice supervision but the training images have no labels")
    return TrainingData(task, store, train, val, num_classes)


def tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``X x Y x Z`` array -> ``1 x 1 x X x Y x Z`` tensor on ``device`` (dtype kept)."""
    return torch.from_numpy(np.ascontiguousarray(array))[None, None].to(device)
