"""What ``evaluate`` and ``initial`` print (evaluation.aggregate), through their command lines
(``python -m pipeline evaluate|initial``): official metrics apart from our corrected ones, each
with its unit or quirk, and one line on why they differ (issue 21, item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.aggregate import DIFFERENCE, summary_lines
from evaluation.initial import write_zero_submission
from learn2reg.contract import disp_filename_l2r
from learn2reg.io import save_nifti
from pipeline.cli import main
from tests.pipeline.training.test_train import SHAPE, make_blob_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_blob_task(tmp_path_factory.mktemp("console") / "task")


def sections(text: str) -> dict[str, list[str]]:
    """Metric lines by the heading above them ("Official metrics ...:" -> ["  LogJacDetStd ...", ...])."""
    out: dict[str, list[str]] = {}
    heading = ""
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            heading = line.split(" (")[0]
        elif line.startswith("  "):
            out.setdefault(heading, []).append(line.strip())
    return out


def test_evaluate_labels_official_and_corrected_metrics(task, tmp_path, capsys):
    sub = tmp_path / "sub"
    u = np.zeros((*SHAPE, 3), np.float32)
    u[..., 0] = 0.3 * np.sin(np.linspace(0, 6, SHAPE[0]))[:, None, None]  # a field with some spread of det J
    save_nifti(sub / disp_filename_l2r("0004_0000", "0005_0000"), u)
    assert main(["evaluate", "-i", str(sub), "-d", str(task), "-o", str(tmp_path / "r.json"), "-j", "1"]) == 0
    out = capsys.readouterr().out
    found = sections(out)
    assert [line.split()[0] for line in found["Official metrics"]] == ["LogJacDetStd", "DSC", "HD95"]
    assert [line.split()[0] for line in found["Corrected metrics"]] == ["SDlogJ_true", "num_foldings_true", "folding_fraction", "HD95_mm"]
    official = {line.split()[0]: line for line in found["Official metrics"]}
    assert "the official +3 quirk" in official["LogJacDetStd"] and "voxels (official spacing 1" in official["HD95"]
    # the two SDlogJ differ by about the factor the +3 gives near det J = 1 (d log(d + 3) / d log d = 1/4)
    sd, true = (float(next(line for line in out.splitlines() if line.strip().startswith(n)).split()[1]) for n in ("LogJacDetStd", "SDlogJ_true"))
    assert 3.5 < true / sd < 4.5
    assert DIFFERENCE in out and out.rstrip().endswith(f"Results saved to: {tmp_path / 'r.json'}")


def test_initial_prints_its_summary_like_evaluate(task, tmp_path, capsys):
    assert main(["initial", "-d", str(task), "-o", str(tmp_path / "Initial.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Initial (zero field) of Blob: 1 pair(s), rules l2r\nOfficial metrics")
    assert "DSC" in out and "Corrected metrics" in out and f"Results saved to: {tmp_path / 'Initial.json'}" in out
    zero = write_zero_submission(task, tmp_path / "zero")
    assert main(["evaluate", "-i", str(zero), "-d", str(task), "-o", str(tmp_path / "e.json"), "-j", "1"]) == 0
    evaluated = capsys.readouterr().out
    assert out.splitlines()[1:-1] == evaluated.splitlines()[1:-1]  # the same numbers, told the same way


def test_runtime_and_unknown_metrics_are_kept_apart():
    agg = {"mean": 1.0, "std": 0.0, "30": 1.0}
    lines = summary_lines({"name": "T", "cases": {}, "aggregates": {"TRE_kp": agg, "custom": agg, "runtime": agg}})
    assert lines[1].startswith("Official metrics") and "TRE_kp" in lines[2] and lines[2].endswith("mm") and "custom" in lines[3]
    assert lines[4].startswith("Runtime") and "runtime" in lines[5] and DIFFERENCE not in lines


def test_the_notes_follow_the_rule_set():
    """Under LUMIR's rules TRE is in voxels and the '30' column is the 0.3 quantile (2024); NDV is named."""
    result = {"name": "LUMIR", "rules": "lumir24", "cases": {"a": {}},
              "aggregates": {"TRE_lm": {"mean": 2.0, "std": 0.1, "30": 1.9},
                             "Non-diffeomorphic Volumes": {"mean": 0.01, "std": 0.0, "30": 0.01}}}
    text = "\n".join(summary_lines(result))
    assert "rules lumir24" in text and "voxels (centroids" in text and "non-diffeomorphic" in text
    assert "0.3 quantile of the per-case values for every metric (LUMIR 2024" in text
    l2r = "\n".join(summary_lines({**result, "rules": "l2r"}))
    assert "TRE_lm" in l2r and "   mm" in l2r and "0.7 for SDlogJ/TRE" in l2r
