"""Cases read on demand: nothing read until asked, a memory budget that holds, prefetching threads
that return the very arrays a direct read gives, grids from the headers alone."""

from __future__ import annotations

import numpy as np

from learn2reg.task import load_task
from pipeline.config import PreprocessConfig
from pipeline.data.preprocess import load_prepared
from pipeline.data.stream import CaseStore, prepared_bytes
from tests.pipeline.training.test_train import make_blob_task

IDS = ["0001_0000", "0002_0000", "0003_0000", "0004_0000"]


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("image", "label", "mask", "keypoints", "landmarks"))


def test_cases_are_read_when_asked_and_kept_within_the_budget(tmp_path):
    task = load_task(make_blob_task(tmp_path / "blob", subjects=4))
    cfg = PreprocessConfig()
    one = prepared_bytes(load_prepared(task, IDS[0], cfg))
    store = CaseStore(task, cfg, tmp_path / "cache", IDS, memory_bytes=int(2.5 * one))
    assert store.reads == 0 and len(store) == 4 and list(store) == IDS and "0009_0000" not in store
    first = store[IDS[0]]
    assert store.reads == 1 and store[IDS[0]] is first  # from memory
    for case_id in IDS[1:]:
        store[case_id]
        assert store.in_memory() <= 2.5 * one
    assert store.reads == 4
    store[IDS[0]]  # evicted (least recently used): read again, from the disk cache
    assert store.reads == 5 and same(store[IDS[0]], first)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 4


def test_a_budget_of_nothing_keeps_the_last_case_only(tmp_path):
    task = load_task(make_blob_task(tmp_path / "blob", subjects=4))
    store = CaseStore(task, PreprocessConfig(), None, IDS, memory_bytes=0)
    a = store[IDS[0]]
    assert store[IDS[0]] is a and store.reads == 1
    store[IDS[1]]
    store[IDS[0]]
    assert store.reads == 3


def test_prefetched_cases_are_the_directly_read_ones(tmp_path):
    task = load_task(make_blob_task(tmp_path / "blob", subjects=4))
    cfg = PreprocessConfig(half_resolution=True)
    store = CaseStore(task, cfg, tmp_path / "cache", IDS, workers=2, lookahead=3)
    try:
        store.prefetch(IDS)  # the first one beyond the lookahead is dropped (cancelled or left unused)
        for case_id in IDS:
            case = store[case_id]
            assert same(case, load_prepared(task, case_id, cfg, tmp_path / "cache"))
            assert store.network_shape(case_id) == case.shape == (10, 8, 12)  # from the header alone
        assert store.reads <= 5
        store.prefetch(IDS[:2])  # in memory already: nothing to read
        assert store.reads <= 5
    finally:
        store.close()
