"""Training pairs indexed, never listed: the same pairs in the same order as the list they stand
for, shards as slices, LUMIR's 11.4 million pairs in constant memory, a compact description."""

from __future__ import annotations

import sys

import pytest

from learn2reg.task import load_task
from pipeline.data import split
from pipeline.data.split import TrainingPairs, split_pairs
from tests.pipeline.training.test_train import make_blob_task


def listed(ids: list[str]) -> list[tuple[str, str]]:
    """What the pairs stand for: every ordered pair of distinct ids, fixed outer, moving inner."""
    return [(f, m) for f in ids for m in ids if f != m]


@pytest.mark.parametrize("n", [2, 3, 7])
def test_all_ordered_pairs_are_the_listed_pairs_in_order_and_shards_are_slices(n):
    ids = [f"{s:04d}_0000" for s in range(n)]
    pairs = TrainingPairs.all_ordered(ids)
    assert len(pairs) == n * (n - 1) and list(pairs) == listed(ids)
    assert [pairs[k] for k in range(-len(pairs), len(pairs))] == listed(ids) * 2
    for rank, world in ((0, 1), (0, 2), (1, 2), (2, 3), (5, 8)):
        shard = pairs[rank::world]
        assert isinstance(shard, TrainingPairs) and list(shard) == listed(ids)[rank::world]
    assert pairs.case_ids() == set(ids) == pairs.fixed_ids()


def test_lumir_sized_pairs_take_no_memory_and_index_directly():
    ids = [f"{s:04d}_0000" for s in range(3384)]
    pairs = TrainingPairs.all_ordered(ids)
    assert len(pairs) == 3384 * 3383 == 11_448_072
    assert sys.getsizeof(pairs) < 1000  # the ids tuple is shared, nothing per pair
    k = 5_000_000
    i, j = divmod(k, 3383)
    assert pairs[k] == (ids[i], ids[j + (j >= i)]) and pairs[-1] == (ids[-1], ids[-2])
    assert len(pairs[1::4]) == 11_448_072 // 4 and pairs[1::4][3] == pairs[13]


def test_the_description_lists_the_pairs_up_to_a_size_then_names_the_rule(monkeypatch):
    ids = ["0001_0000", "0002_0000", "0003_0000"]
    assert TrainingPairs.all_ordered(ids).describe() == [list(p) for p in listed(ids)]
    monkeypatch.setattr(split, "MAX_LISTED_PAIRS", 5)
    assert TrainingPairs.all_ordered(ids).describe() == {"all_ordered_pairs_of": ids, "count": 6}
    explicit = TrainingPairs.listed([("0001_0001", "0001_0000"), ("0001_0002", "0001_0000")])
    assert explicit.describe() == [["0001_0001", "0001_0000"], ["0001_0002", "0001_0000"]]
    assert explicit.case_ids() == {"0001_0000", "0001_0001", "0001_0002"} and explicit.fixed_ids() == {"0001_0001", "0001_0002"}


def test_split_pairs_are_the_task_pairs_without_the_validation_subjects(tmp_path):
    task = load_task(make_blob_task(tmp_path / "blob", subjects=6))
    train, val = split_pairs(task, exclude_val_subjects=True)
    expected = [(p.fixed, p.moving) for p in task.training_pairs() if not {p.fixed[:4], p.moving[:4]} & {"0005", "0006"}]
    assert list(train) == expected and len(train) == 12 and val == (("0005_0000", "0006_0000"),)
    every, _ = split_pairs(task, exclude_val_subjects=False)
    assert list(every) == [(p.fixed, p.moving) for p in task.training_pairs()]
