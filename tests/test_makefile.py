"""The Makefile refuses, before it makes a venv, a Python other than the one the pins need."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)


def _fake_python(tmp_path: Path, version: str) -> Path:
    path = tmp_path / "python"
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.mark.parametrize("version", ["3.10.13", "3.12.1", "2.7.18"])
def test_another_python_is_refused_with_the_version_found(tmp_path, version):
    python = _fake_python(tmp_path, version)
    result = _make("check-python", f"PYTHON={python}")
    assert result.returncode != 0
    assert f"Python 3.11 is needed, found {version} at PYTHON={python}" in result.stderr


def test_a_missing_python_is_named(tmp_path):
    result = _make("check-python", f"PYTHON={tmp_path / 'nothing'}")
    assert result.returncode != 0 and "Python 3.11 is needed, found none" in result.stderr


def test_a_new_venv_is_not_made_with_another_python(tmp_path):
    venv = tmp_path / "venv"
    result = _make("test", f"PYTHON={_fake_python(tmp_path, '3.10.13')}", f"VENV={venv}")
    assert result.returncode != 0 and "Python 3.11 is needed, found 3.10.13" in result.stderr
    assert "run e.g. make PYTHON=python3.11 test" in result.stderr
    assert not venv.exists()


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the check accepts 3.11 only")
def test_this_python_passes():
    assert _make("check-python", f"PYTHON={sys.executable}").returncode == 0


@pytest.mark.skipif(not (REPO / ".venv" / ".installed").is_file(), reason="needs the repository's .venv (make test makes it)")
def test_compile_writes_byte_code_even_where_python_is_told_not_to(monkeypatch):
    """Where PYTHONDONTWRITEBYTECODE is set, Python compiles every module at every start (~0.05 s
    per evaluator run): `make compile` (a step of demo, test and lint) writes the byte-code once."""
    import importlib.util

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    source = REPO / "evaluation" / "metrics.py"
    cached = Path(importlib.util.cache_from_source(str(source)))
    cached.unlink(missing_ok=True)
    result = _make("compile")
    assert result.returncode == 0, result.stderr
    assert cached.is_file() and cached.stat().st_mtime >= source.stat().st_mtime
