"""Shared test settings: one BLAS/torch thread per xdist worker (2 workers on 2 cores); tests
marked ``cuda`` skip where CUDA is absent."""

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see pipeline/cli.py

if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``cuda`` tests (the real-GPU twins of CPU stand-ins, ``pytest -m cuda``) need a CUDA device:
    skipped, saying why, where there is none. torch is imported only when such tests were collected."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: torch {torch.__version__} ({build}) sees none; run `pytest -m cuda` on a GPU machine")
    for item in marked:
        item.add_marker(skip)
