"""Shared test settings: one BLAS/torch thread per xdist worker (2 workers on 2 cores)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see pipeline/cli.py

if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
