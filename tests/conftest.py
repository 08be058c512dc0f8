"""Shared test settings: one BLAS/torch thread per xdist worker (2 workers on 2 cores); tests
marked ``cuda`` skip where CUDA is absent; the Docker engine of the container tests (``engine``,
one per test process, so that ``tests/test_docker.py`` and ``tests/test_container.py`` share its
images and build cache when they run in the same process), and the scheduling that makes them do so
under ``make test`` (``--dist loadfile``): both files are one work unit, handed out first."""

import os
import shutil
from collections.abc import Iterator

import pytest

from tests import docker_engine

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see pipeline/cli.py

if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


DOCKER_FILES = ("tests/test_docker.py", "tests/test_container.py")
DOCKER_UNIT = "tests/test_docker.py+tests/test_container.py"


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile`` with the two engine-backed files as one work unit, the first one handed out:
    one worker starts one engine (and builds the images once) while the other works through the
    rest of the suite; the longest unit starting last would set the suite's wall time. Other
    ``--dist`` modes keep xdist's own scheduler."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class DockerFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return DOCKER_UNIT if scope in DOCKER_FILES else scope

        def _assign_work_unit(self, node: object) -> None:
            if DOCKER_UNIT in self.workqueue:
                self.workqueue.move_to_end(DOCKER_UNIT, last=False)
            super()._assign_work_unit(node)  # type: ignore[arg-type]  # xdist's WorkerController, untyped here

    return DockerFirst(config, log)  # type: ignore[arg-type]  # xdist's Producer


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
