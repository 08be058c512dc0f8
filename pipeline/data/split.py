"""Which pairs training uses: the task's training pairs without those that touch a subject of a
validation pair (``train.exclude_val_subjects``, default true), and the validation pairs.

Shared by the training stage and ``summary`` (no torch here), so that both count the same pairs.
An inter-patient task trains on all ordered pairs of its training images: LUMIR's 3384 images
make 11.4 million, so they are never listed: :class:`TrainingPairs` computes pair ``k`` from
its index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

from learn2reg.io import DataError
from learn2reg.task import Task

#: ``describe()`` lists the pairs up to this many (a run folder's dataset.json), else names the rule.
MAX_LISTED_PAIRS = 100_000


class TrainingPairs(Sequence[tuple[str, str]]):
    """Training pairs ``(fixed id, moving id)``, indexed without materialising them.

    Either all ordered pairs of distinct ``ids`` (both directions), in the order of ``[(f, m) for
    f in ids for m in ids if f != m]``: pair ``k`` is ``ids[k // (n - 1)]`` with the
    ``k % (n - 1)``-th of the others, or an explicit list (intra-patient tasks). ``positions``
    selects some of them: a slice is a view (a torchrun rank's shard ``pairs[rank::world]``), O(1)
    in memory whatever the number of pairs.
    """

    __slots__ = ("_ids", "_listed", "_positions")

    def __init__(self, ids: Sequence[str] = (), listed: Sequence[tuple[str, str]] | None = None,
                 positions: range | None = None) -> None:
        self._ids = tuple(ids)
        self._listed = None if listed is None else tuple((str(f), str(m)) for f, m in listed)
        n = len(self._ids)
        total = len(self._listed) if self._listed is not None else n * (n - 1)
        self._positions = range(total) if positions is None else positions

    @classmethod
    def all_ordered(cls, ids: Sequence[str]) -> TrainingPairs:
        return cls(ids=ids)

    @classmethod
    def listed(cls, pairs: Sequence[tuple[str, str]]) -> TrainingPairs:
        return cls(listed=pairs)

    def __len__(self) -> int:
        return len(self._positions)

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...

    @overload
    def __getitem__(self, index: slice) -> TrainingPairs: ...

    def __getitem__(self, index: int | slice) -> tuple[str, str] | TrainingPairs:
        if isinstance(index, slice):
            return TrainingPairs(self._ids, self._listed, self._positions[index])
        return self._pair(self._positions[index])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return (self._pair(k) for k in self._positions)

    def __repr__(self) -> str:
        kind = f"listed {len(self._listed)}" if self._listed is not None else f"all ordered of {len(self._ids)} ids"
        return f"TrainingPairs({kind}, {len(self)} selected)"

    def _pair(self, k: int) -> tuple[str, str]:
        if self._listed is not None:
            return self._listed[k]
        i, j = divmod(k, len(self._ids) - 1)
        return self._ids[i], self._ids[j + (j >= i)]

    @property
    def _whole(self) -> bool:
        """All ordered pairs of the ids, unselected (their case ids are the ids themselves)."""
        return self._listed is None and self._positions == range(len(self._ids) * (len(self._ids) - 1))

    def case_ids(self) -> frozenset[str]:
        """Every case id of the selected pairs."""
        if self._whole:
            return frozenset(self._ids) if len(self._ids) > 1 else frozenset()
        return frozenset(c for pair in self for c in pair)

    def fixed_ids(self) -> frozenset[str]:
        """The case ids that are fixed in some selected pair."""
        return self.case_ids() if self._whole else frozenset(f for f, _ in self)

    def describe(self) -> list[list[str]] | dict[str, Any]:
        """For a run folder's ``dataset.json`` (and the resume check): the pairs as lists of
        ``[fixed, moving]`` up to :data:`MAX_LISTED_PAIRS`; above, all ordered pairs are
        described by their ids (``{"all_ordered_pairs_of": ids, "count": n}``)."""
        if len(self) <= MAX_LISTED_PAIRS or not self._whole:
            return [list(pair) for pair in self]
        return {"all_ordered_pairs_of": list(self._ids), "count": len(self)}


def held_out_subjects(task: Task) -> set[str]:
    """Subject ids (``SSSS``) of the validation pairs."""
    return {c.split("_")[0] for p in task.pairs.get("val", ()) for c in (p.fixed, p.moving)}


def split_pairs(task: Task, exclude_val_subjects: bool) -> tuple[TrainingPairs, tuple[tuple[str, str], ...]]:
    """All training pairs of the task (minus those touching validation subjects) and the val
    pairs. Inter-patient: all ordered pairs of the remaining training images, never listed
    (the order of ``Task.training_pairs``); intra-patient: the task's paired images."""
    val = tuple((p.fixed, p.moving) for p in task.pairs.get("val", ()))
    held_out = held_out_subjects(task) if exclude_val_subjects else set()
    if task.intra_patient:
        train = TrainingPairs.listed([
            (p.fixed, p.moving) for p in task.training_pairs()
            if p.fixed.split("_")[0] not in held_out and p.moving.split("_")[0] not in held_out
        ])  # fmt: skip
    else:
        train = TrainingPairs.all_ordered([c for c in sorted(task.training) if c.split("_")[0] not in held_out])
    if not train:
        raise DataError(f"{task.root}: no training pairs left (held-out validation subjects: {sorted(held_out)})")
    return train, val
