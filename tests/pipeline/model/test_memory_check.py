"""The memory check's decision (``pipeline.model.memory_check``) with given free-memory numbers:
refuse / warn / fit, the skip option, the message, free memory read from /proc and cgroups, the record."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from learn2reg.io import DataError
from pipeline.model import memory_check
from pipeline.model.memory_check import GB, Need, check, format_bytes, verdict

CPU = torch.device("cpu")


@pytest.mark.parametrize("work, free, expected", [
    (9.0, 10.0, "warn"),     # above 80 % of what is free
    (8.0, 10.0, "fits"),     # exactly 80 %: fits
    (10.0, 10.0, "warn"),    # all of it: still not refused
    (10.01, 10.0, "refuse"),
    (2e12, 21e9, "refuse"),
    (0.0, 0.0, "fits"),
])
def test_verdict_refuses_above_what_is_free_and_warns_above_80_percent(work, free, expected):
    assert verdict(work, free) == expected


def need(work_gb: float) -> Need:
    return Need(CPU, int(work_gb * GB), int(0.5 * GB), "the network grid 2351x2351x2351 (input scale 50)")


def test_a_need_that_cannot_fit_is_refused_with_the_estimate_what_is_free_and_the_options():
    with pytest.raises(DataError) as err:
        check("predict", [need(1900.0)], ["a smaller --input-scale / --target-spacing", "--device cuda"], free=[int(21.3 * GB)])
    assert str(err.value) == (
        "predict: the network grid 2351x2351x2351 (input scale 50) needs about 1.9 TB on cpu, 21.3 GB is free: use a "
        "smaller --input-scale / --target-spacing or --device cuda; --skip-memory-check runs it anyway")


def test_skip_runs_anyway_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        result = check("train", [need(30.0)], ["preprocess.half_resolution"], skip=True, free=[20 * GB])
    assert result.verdicts == ("refuse",) and result.skipped
    assert "--skip-memory-check: running anyway" in caplog.text
    assert result.record()["checked"] is False


def test_close_warns_and_fitting_is_quiet(caplog):
    with caplog.at_level(logging.WARNING):
        assert check("train", [need(9.0)], [], free=[10 * GB]).verdicts == ("warn",)
    assert "may not fit" in caplog.text and "over 80%" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert check("train", [need(1.0)], [], free=[10 * GB]).verdicts == ("fits",)
    assert caplog.text == ""


def test_every_device_is_checked_the_host_too():
    device, host = need(1.0), Need(CPU, 50 * GB, 0, "the arrays of a pair on the grid 500x500x500")
    with pytest.raises(DataError, match="the arrays of a pair .* needs about 50.0 GB"):
        check("predict", [device, host], ["--device cpu"], free=[10 * GB, 10 * GB])


def test_the_record_puts_the_measured_peak_beside_the_estimate():
    result = check("predict", [need(0.25), Need(CPU, GB, GB // 2, "host")], [], free=[10 * GB, 10 * GB])
    record = result.record()
    assert record["device"] == "cpu" and record["estimate_gb"] == 0.75 and record["work_estimate_gb"] == 0.25
    assert record["free_gb"] == 10.0 and record["verdict"] == "fits" and record["checked"] is True
    assert 0.05 < record["peak_gb"] < 100  # this process's ru_maxrss
    assert record["host"]["estimate_gb"] == 1.5
    assert check("predict", [], [], free=[]).record() == {}


@pytest.mark.parametrize("n, text", [(1.9 * 2**40, "1.9 TB"), (21.3 * 2**30, "21.3 GB"), (512 * 2**20, "512 MB"),
                                     (0.97 * 2**30, "1.0 GB"), (3 * 2**50, "3.0 PB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_free_memory_is_memavailable_lowered_to_a_cgroup_limit(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683772 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n")
    monkeypatch.setattr(memory_check, "cgroup_free", lambda: None)
    assert memory_check.system_free(meminfo) == 20000000 * 1024
    monkeypatch.setattr(memory_check, "cgroup_free", lambda: 4 * GB)
    assert memory_check.system_free(meminfo) == 4 * GB


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_cgroup_limits_v2_v1_and_none(tmp_path):
    v2 = _cgroup(tmp_path / "v2", {"memory.max": "8589934592\n", "memory.current": "2147483648\n",
                                   "memory.stat": "anon 1\ninactive_file 1073741824\n"})
    assert memory_check.cgroup_free(v2, tmp_path / "none") == 7 * GB  # 8 - 2 + 1 reclaimable
    v1 = _cgroup(tmp_path / "v1", {"memory.limit_in_bytes": str(4 * GB), "memory.usage_in_bytes": str(GB),
                                   "memory.stat": "total_inactive_file 0\n"})
    assert memory_check.cgroup_free(tmp_path / "none", v1) == 3 * GB
    unlimited = _cgroup(tmp_path / "max", {"memory.max": "max\n", "memory.current": "1\n"})
    assert memory_check.cgroup_free(unlimited, _cgroup(tmp_path / "v1max", {
        "memory.limit_in_bytes": "9223372036854771712", "memory.usage_in_bytes": "1"})) is None


def test_this_machine_reports_free_memory_and_a_peak():
    assert memory_check.free_bytes(CPU) > 0 and memory_check.measured_peak(CPU) > 0
    assert 0 < memory_check.in_use(CPU) <= memory_check.measured_peak(CPU) * 1.01
