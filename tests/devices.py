"""Devices for tests of GPU-only paths: a CPU stand-in and its real CUDA twin.

Parametrize such a test with ``@pytest.mark.parametrize("device", STAND_IN_AND_CUDA)``: the
``cpu_stand_in`` case runs everywhere and stands in for the GPU path on the CPU (CPU autocast, an
enabled CPU loss scaler: the product itself uses neither on CPU); the ``cuda`` case is marked
``cuda`` and runs the real thing (``pytest -m cuda`` on a GPU machine; skipped where
``torch.cuda.is_available()`` is false, see ``tests/conftest.py``).
"""

import pytest
import torch

from pipeline.model.precision import autocast

STAND_IN_AND_CUDA = [pytest.param("cpu", id="cpu_stand_in"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


def bf16_autocast(device: torch.device) -> torch.autocast:
    """bfloat16 autocast as a GPU run gets it: the product's ``autocast(device, "bf16")`` on CUDA;
    on the CPU, where the product stays float32, CPU autocast stands in (it lowers the same convolutions)."""
    return autocast(device, "bf16") if device.type == "cuda" else torch.autocast("cpu", dtype=torch.bfloat16)
