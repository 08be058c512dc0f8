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


def test_the_network_free_bench_counts_folds_on_the_written_field(tmp_path):
    """det(I + grad u) of u = (a x, 0, 0) is 1 + a everywhere: a = -1.5 folds every voxel, a = 0.5
    none (log det = log 1.5 everywhere: SDlogJ 0)."""
    import importlib.util

    import numpy as np

    from learn2reg.io import Geometry, save_nifti

    spec = importlib.util.spec_from_file_location("bench_network_free", REPO / "bench" / "bench_network_free.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shape = (6, 5, 4)
    x = np.arange(shape[0], dtype=np.float32)[:, None, None] * np.ones(shape, np.float32)
    for a, folded in ((-1.5, 120), (0.5, 0)):
        u = np.zeros((*shape, 3), np.float32)
        u[..., 0] = a * x
        save_nifti(tmp_path / "disp.nii.gz", u, Geometry.identity(shape))
        sdlogj, count = module.field_stats(tmp_path / "disp.nii.gz")
        assert count == folded and (np.isnan(sdlogj) if a < 0 else sdlogj < 1e-6)
