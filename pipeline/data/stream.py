"""Prepared cases read on demand: training memory that does not grow with the number of images.

LUMIR's 3384 training images take about 93 GB as float32 at 160x224x192, far more than a machine
holds; :class:`CaseStore` keeps only the cases in use. A case is read through the preprocessing
cache (``pipeline.data.preprocess.load_prepared``: preprocessed and written to the cache on first
use, read back from the ``.npz`` afterwards), and the most recently used cases stay in memory up
to a byte budget (an LRU). Optional background threads load the cases that the next training
steps will use (:meth:`CaseStore.prefetch`), so that reading and preprocessing overlap with the
step; they change nothing but the timing: a case is the same arrays whichever thread read it.

Memory: the budget plus the cases being used and the prefetched ones waiting (at most
``2 * lookahead``), whatever the number of cases. ``python -m pipeline preprocess`` fills the
cache beforehand and lists every bad file at once; otherwise a bad image is found when it is
first used.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from learn2reg.io import float3, read_nifti_header
from learn2reg.task import Task
from pipeline.config import PreprocessConfig
from pipeline.data.preprocess import Prepared, load_prepared, network_shape

log = logging.getLogger(__name__)

#: Default byte budget of the cases kept in memory (the ``train --case-memory-gb`` default).
DEFAULT_MEMORY_BYTES = 2 * 2**30


def prepared_bytes(case: Prepared) -> int:
    """Memory of a prepared case's arrays."""
    return sum(a.nbytes for a in (case.image, case.label, case.mask, case.keypoints, case.landmarks) if a is not None)


class CaseStore(Mapping[str, Prepared]):
    """The prepared cases ``ids`` of a task, read on demand (module docstring).

    ``store[case_id]`` returns the case from memory, from a prefetch, or reads it now;
    ``memory_bytes``: budget of the LRU (the last case read always stays, whatever its size);
    ``workers`` > 0: threads for :meth:`prefetch` (0: no prefetching); ``lookahead``: at most this
    many prefetched cases wait unused (older ones are dropped). ``close()`` stops the threads.
    """

    def __init__(self, task: Task, cfg: PreprocessConfig, cache: Path | None, ids: Sequence[str],
                 memory_bytes: int = DEFAULT_MEMORY_BYTES, workers: int = 0, lookahead: int = 8) -> None:
        self.task, self.cfg, self.cache = task, cfg, cache
        self.ids = tuple(sorted(ids))
        self.memory_bytes, self.lookahead = int(memory_bytes), max(int(lookahead), 1)
        self._known = frozenset(self.ids)
        self._lru: OrderedDict[str, Prepared] = OrderedDict()
        self._held = 0
        self._pending: OrderedDict[str, Future[Prepared]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cases") if workers > 0 else None
        self.reads = 0  # cases read from the cache or preprocessed (not served from memory)
        self._grids: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {}

    # ------------------------------------------------------------------ Mapping

    def __getitem__(self, case_id: str) -> Prepared:
        if case_id not in self._known:
            raise KeyError(case_id)
        with self._lock:
            if case_id in self._lru:
                self._lru.move_to_end(case_id)
                return self._lru[case_id]
            future = self._pending.pop(case_id, None)
        case = future.result() if future is not None else self._read(case_id)
        self._keep(case_id, case)
        return case

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._known

    # ------------------------------------------------------------------ reading

    def _read(self, case_id: str) -> Prepared:
        self.reads += 1
        return load_prepared(self.task, case_id, self.cfg, self.cache)

    def _keep(self, case_id: str, case: Prepared) -> None:
        with self._lock:
            if case_id in self._lru:
                return
            self._lru[case_id] = case
            self._held += prepared_bytes(case)
            while self._held > self.memory_bytes and len(self._lru) > 1:
                _, old = self._lru.popitem(last=False)
                self._held -= prepared_bytes(old)

    def prefetch(self, case_ids: Iterable[str]) -> None:
        """Start reading these cases in the background (no-op without workers, or for cases in
        memory or already on their way); at most ``lookahead`` wait unused."""
        if self._pool is None:
            return
        with self._lock:
            for case_id in case_ids:
                if case_id in self._lru or case_id in self._pending or case_id not in self._known:
                    continue
                self._pending[case_id] = self._pool.submit(self._read, case_id)
                while len(self._pending) > self.lookahead:
                    self._pending.popitem(last=False)[1].cancel()  # a guess that was not used

    def in_memory(self) -> int:
        """Bytes of the cases held in the LRU now."""
        return self._held

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    # ------------------------------------------------------------------ without reading voxels

    def network_shape(self, case_id: str) -> tuple[int, int, int]:
        """The case's network grid, from its image header alone."""
        return self.network_grid(case_id)[0]

    def network_grid(self, case_id: str) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """The case's network grid and its spacing (mm per axis), from the image header alone, as
        ``pipeline.data.preprocess.prepare_case`` computes them from the image; ``DataError``
        naming the file when its header cannot be read."""
        if case_id in self._grids:
            return self._grids[case_id]
        path = self.task.case(case_id).image
        geom = read_nifti_header(path)
        image_shape = tuple(geom.shape[:3])
        shape = network_shape(image_shape, self.cfg, geom.spacing)
        spacing = np.asarray(geom.spacing) * (np.asarray(image_shape) - 1) / np.maximum(np.asarray(shape) - 1, 1)
        self._grids[case_id] = (shape, float3(spacing))
        return self._grids[case_id]

    def check_headers(self) -> None:
        """Read every case's header now (cheap: no voxels), so that a missing file or a bad header
        stops training before it starts; a bad voxel block is found when the case is first read."""
        for case_id in self.ids:
            self.network_grid(case_id)
