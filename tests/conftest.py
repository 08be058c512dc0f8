"""Shared test settings: one BLAS/torch thread per xdist worker (2 workers on 2 cores); tests
marked ``cuda`` skip where CUDA is absent; the Docker engine of the container tests (``engine``,
one per test process, so that ``tests/test_docker.py`` and ``tests/test_container.py`` share its
images and build cache when they run in the same process)."""

import os
import shutil
from collections.abc import Iterator

import pytest

from tests import docker_engine

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


@pytest.fixture(scope="session")
def engine() -> Iterator[docker_engine.Engine]:
    """A Docker engine: the configured one if it answers, else a private one started (and stopped) here."""
    if not docker_engine.engine_answers(os.environ) and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        pytest.skip("no Docker engine answers and none can be started here (needs root and apt-get)")
    eng = docker_engine.ensure_engine()
    try:
        docker_engine.ensure_compose_plugin(eng.env)
        yield eng
    finally:
        docker_engine.stop_engine(eng)
