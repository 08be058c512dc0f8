"""pipeline.distributed.shutdown: two real gloo ranks (processes) leave the process group together
after a clean end, and a rank whose peer failed is not held at the barrier."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

RANK_CODE = """
import os, sys, time, logging
import torch.distributed as dist
from pipeline.distributed import DistInfo, shutdown
logging.basicConfig(level=logging.WARNING, format="%(message)s")
rank, store, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
info = DistInfo(rank=rank, world_size=2)
if mode == "clean":
    if rank == 1:
        time.sleep(1.0)  # the late rank: rank 0 waits for it before tearing down
    shutdown(info)
    print(f"rank {rank} left at {time.time():.3f}", flush=True)
else:  # rank 1 fails: it leaves at once, rank 0 (clean) must not hang at the barrier
    try:
        if rank == 1:
            raise ValueError("this rank failed")
    finally:
        shutdown(info)
"""


def _run_ranks(tmp_path: Path, mode: str) -> list[tuple[int, str, str]]:
    """Both ranks as processes -> (exit code, stdout, stderr) of each."""
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-c", RANK_CODE, str(r), str(store), mode], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=120) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo over TCP on Linux")
def test_a_clean_end_waits_for_every_rank_before_leaving(tmp_path):
    (rc0, out0, err0), (rc1, out1, err1) = _run_ranks(tmp_path, "clean")
    assert (rc0, rc1) == (0, 0), err0 + err1
    left = {int(line.split()[1]): float(line.split()[-1]) for line in (out0 + out1).splitlines() if line.startswith("rank")}
    assert left[0] >= left[1] - 0.5  # rank 0 left only once the late rank (1 s later) had arrived
    assert "terminate called" not in err0 + err1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo over TCP on Linux")
def test_a_failed_peer_does_not_hold_a_clean_rank(tmp_path):
    start = time.monotonic()
    (rc0, _, err0), (rc1, _, err1) = _run_ranks(tmp_path, "failed")
    assert rc1 != 0 and "this rank failed" in err1
    assert rc0 == 0, err0  # it warned and left
    assert "not every rank reached the end" in err0
    assert time.monotonic() - start < 100
