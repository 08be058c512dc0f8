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


def test_the_container_benchmark_renders_a_results_file_without_running_anything(tmp_path):
    entry = {
        "image_bytes": 1.76e9, "file_bytes": 5.7e8, "build_export_s": 70.0, "load_s": 15.0, "entry_startup_s": 6.5,
        "container_overhead_s": 3.2, "pairs": 6, "pair_mean_s": 1.6, "pair_median_s": 1.55, "pair_max_s": 1.8, "peak_rss_gib": 0.57, "uid": 4242,
        "source": "imported", "scores": {"DSC": 0.81, "TRE_lm": 1.37}, "initial": {"DSC": 0.65, "TRE_lm": 2.02},
    }  # fmt: skip
    source = tmp_path / "in.json"
    source.write_text(json.dumps({"machine": "cpu", "cpus": 2, "load": [1, 1, 1], "contracts": {"lumir": entry, "oncoreg": {**entry, "train_wall_s": 34.0}}}))
    cmd = [sys.executable, str(REPO / "bench" / "bench_containers.py"), "--from", str(source), "--out", str(tmp_path / "out")]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, timeout=120)
    table = (tmp_path / "out" / "containers_cpu.md").read_text()
    assert "| lumir | DemoLUMIR, 6 pairs 40x56x48, imported LapIRN diff weights (--data check run) | 1.76 | 570 | 70 | 15 | 6.5 | 3.2 | 1.55 (1.60, 1.80) | 0.57 | 4242 | DSC 0.81 (0.65), TRE_lm 1.37 (2.02) |" in table
    assert "OncoReg's `./train.sh` (in the image, 36 steps): 34 s wall." in table
    assert json.loads((tmp_path / "out" / "containers_cpu.json").read_text())["contracts"]["lumir"] == entry


def test_the_timing_case_builder_makes_task_sized_cases_the_evaluator_scores(tmp_path):
    """``make_cases.py --timing --shape --pairs --labels`` (the task-size bench's cases): the grid,
    pair count and label list asked for, label maps holding only those ids, and every rule set's
    config scored by our evaluator with one value per pair and label."""
    import numpy as np

    from evaluation.evaluate import evaluate
    from learn2reg.io import load_nifti

    script = REPO / "tests" / "fixtures" / "organisers" / "make_cases.py"
    cmd = [sys.executable, str(script), "--timing", str(tmp_path), "--shape", "24", "28", "20", "--pairs", "3", "--labels", "5"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, timeout=300)
    case = tmp_path / "lumir24"
    l2r = json.loads((case / "l2r_style_evaluation_config.json").read_text())
    assert l2r["expected_shape"] == [24, 28, 20, 3] and len(l2r["eval_pairs"]) == 3
    assert [m["labels"] for m in l2r["evaluation_methods"] if "labels" in m] == [[1, 2, 3, 4, 5]] * 2
    assert [len(json.loads((case / f"seg_part{k}_evaluation_config.json").read_text())["eval_pairs"]) for k in (1, 2, 3)] == [1, 1, 1]
    for path in sorted((case / "labelsVal").glob("*.nii.gz")):
        labels, _ = load_nifti(path, dtype=None)
        assert labels.shape == (24, 28, 20) and set(np.unique(labels).tolist()) <= {0, 1, 2, 3, 4, 5}
    result = evaluate(case / "disp" / "smooth_full", case, case / "l2r_style_evaluation_config.json", rules="l2r", workers=1)
    assert len(result["cases"]) == 3
    for values in result["cases"].values():
        assert len(values["HD95"]["detailed"]) == len(values["DSC"]["detailed"]) == 5  # one per label
        assert np.isfinite(values["HD95"]["detailed"]).all() and 0 < values["DSC"]["mean"] <= 1


def test_brain_task_labels_sampled_linearly_follow_the_interpolated_majority(monkeypatch):
    """``make_brain_task.sample_subject``: on the atlas grid both samplings give the atlas; at
    (0.6, 0.6, 0.6) between a corner voxel of label 2 at (1, 1, 1) and seven of label 1, nearest
    picks the corner (2), linear the label whose interpolated indicator is largest (1: 0.784 vs 0.216)."""
    import dataclasses
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("make_brain_task", REPO / "bench" / "make_brain_task.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_brain_task", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    labels = np.ones((4, 4, 4), dtype=np.uint8)
    labels[1, 1, 1] = 2
    ones, eye = np.ones((4, 4, 4), np.float32), np.eye(4)
    fields = {f.name: None for f in dataclasses.fields(module.Reference)}
    ref = module.Reference(**{**fields, "grid": eye, "image_src": ones, "mask_src": ones, "image_aff": eye, "labels_src": labels, "labels_aff": eye})
    on_grid = np.indices((4, 4, 4), dtype=np.float64)
    for how in ("nearest", "linear"):
        assert (module.sample_subject(ref, on_grid, how)[2] == labels).all()
    point = np.full((3, 1, 1, 1), 0.6)
    assert module.sample_subject(ref, point, "nearest")[2].item() == 2
    assert module.sample_subject(ref, point, "linear")[2].item() == 1
