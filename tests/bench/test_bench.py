"""The evaluator benchmark keeps working: its quick mode runs ours and the reference formulas on the
same small case and both give the same official numbers (a cross-check of two implementations)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.paths import REPO


def test_quick_evaluator_benchmark_reports_equal_metrics_and_memory(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "bench_evaluate.py"), "--quick", "--pairs", "2", "--repeats", "1", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, timeout=300)
    results = json.loads((tmp_path / "evaluate_cpu.json").read_text())
    reference = results["reference"]["first_case"]
    assert set(reference) == {"LogJacDetStd", "num_foldings", "DSC", "HD95", "TRE_kp"}
    for run in results["ours"]:
        assert run["cases"] == 2 and run["s_per_case_median"] > 0
        assert 0 < run["peak_mb_main"] <= run["peak_mb_total"]
        for metric, value in reference.items():
            assert abs(run["first_case"][metric] - value) <= 1e-6 * max(abs(value), 1.0), (run["format"], metric)
    assert {(r["format"], r["workers"]) for r in results["ours"]} == {("nii", 1), ("nii", 2), ("npz", 1), ("npz", 2)}
    assert "| ours | nii | 2 |" in (tmp_path / "evaluate_cpu.md").read_text()
