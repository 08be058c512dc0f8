"""Leaderboard (evaluation.leaderboard.results / board / leaderboard): table means, Initial row, ranks from JSON, outputs, CLI."""

from __future__ import annotations

import argparse
import base64
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.leaderboard import board, ranking
from evaluation.leaderboard import stage as leaderboard
from evaluation.leaderboard.results import Results, load_results
from learn2reg.io import DataError
from tests.evaluation.leaderboard.board_data import dump, key, lung_json, oasis_json, write_specs
from tests.paths import REPO


@pytest.fixture
def specs(tmp_path: Path) -> dict[str, Path]:
    return write_specs(tmp_path)


def load(specs: dict[str, Path]) -> Results:
    return load_results([f"Good={specs['Good']}", f"Bad={specs['Bad']}"], initial=[str(specs["Initial"])])


def test_table_values_are_hand_computed_means(specs: dict[str, Path]) -> None:
    table = board.build_table(load(specs))
    assert list(table.columns) == [
        ("LungCT", "TRE_lm"), ("LungCT", "SDlogJ"), ("LungCT", "folding_fraction"), ("LungCT", "runtime"),
        ("OASIS", "DSC"), ("OASIS", "SDlogJ"), ("OASIS", "runtime"),
    ]  # fmt: skip (no folding column where no method reports it)
    # TRE: base + 0.1 * mean(c = 0..3) + 0.02 * mean(p = 0..4) = base + 0.15 + 0.04
    assert table.loc["Good", ("LungCT", "TRE_lm")] == pytest.approx(1.19)
    assert table.loc["Initial", ("LungCT", "TRE_lm")] == pytest.approx(10.19)
    assert table.loc["Good", ("LungCT", "SDlogJ")] == pytest.approx(0.0515)
    assert table.loc["Good", ("LungCT", "runtime")] == pytest.approx(1.15)
    assert table.loc["Bad", ("LungCT", "folding_fraction")] == pytest.approx(0.02 * 2.5)  # 0.02 (1 + c), c = 0..3
    assert table.loc["Bad", ("LungCT", "runtime")] == pytest.approx(3.15)  # bare-number runtime entries
    # DSC case means: case 0 = mean of labels 0, 1 (label 2 NaN) = 0.81; cases 1..4 = 0.83 .. 0.86.
    assert table.loc["Good", ("OASIS", "DSC")] == pytest.approx((0.81 + 0.83 + 0.84 + 0.85 + 0.86) / 5)
    assert np.isnan(table.loc["Good", ("OASIS", "runtime")])  # no method reports it


def test_initial_first_with_dashes(specs: dict[str, Path]) -> None:
    results = load_results([f"Bad={specs['Bad']}", f"Initial={specs['Initial']}", f"Good={specs['Good']}"])
    assert list(results) == ["Initial", "Bad", "Good"]
    table = board.build_table(results)
    assert table.loc["Initial"].isna().to_dict() == {
        ("LungCT", "TRE_lm"): False, ("LungCT", "SDlogJ"): True, ("LungCT", "folding_fraction"): True,
        ("LungCT", "runtime"): True, ("OASIS", "DSC"): False, ("OASIS", "SDlogJ"): True, ("OASIS", "runtime"): True,
    }  # fmt: skip
    md = leaderboard.write_leaderboard(results)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0] == (
        "| Method | LungCT TRE_lm (mm) ↓ | LungCT SDlogJ ↓ | LungCT fold (%) ↓ | LungCT s ↓ | OASIS DSC ↑ | OASIS SDlogJ ↓ | OASIS s ↓ |"
    )
    assert rows[1] == "| Initial | 10.19 | - | - | - | 0.338 | - | - |"


def test_rank_scores_from_result_files(specs: dict[str, Path]) -> None:
    ranks = board.compute_ranks(load(specs))
    cell = ranks.set_index(["method", "task", "metric"])["value"]
    assert set(ranks.loc[ranks["task"] == "LungCT", "metric"]) == {"TRE", "TRE30", "SDlogJ", "runtime", "score"}
    assert set(ranks.loc[ranks["task"] == "OASIS", "metric"]) == {"DSC", "DSC30", "HD95", "SDlogJ", "score"}
    for task in ("LungCT", "OASIS"):
        assert cell[("Good", task, "score")] == pytest.approx(1.0)
        assert cell[("Bad", task, "score")] == pytest.approx(0.55)
        assert cell[("Initial", task, "score")] == pytest.approx(0.1)
    assert cell[("Bad", "overall", "mean")] == pytest.approx(0.55)


def test_items_align_labels_and_drop_nothing_silently(specs: dict[str, Path]) -> None:
    tables = board.item_tables(load(specs), "OASIS")
    assert set(tables) == {"DSC", "HD95", "SDlogJ"}
    dsc = tables["DSC"]
    assert dsc.shape == (15, 3)  # 5 cases x 3 labels, all methods
    assert dsc.loc[(key(1), "2"), "Good"] == pytest.approx(0.85)
    assert dsc.loc[(key(0), "2")].isna().all()  # undefined for every method: dropped by the ranking
    assert tables["SDlogJ"].shape == (5, 3)


def test_missing_case_gets_worst_value(tmp_path: Path) -> None:
    # "Sparse" is the best wherever it has values but lacks 3 of 4 cases; "Steady" has all.
    sparse = lung_json("Good", cases=range(1))
    steady = lung_json("Bad")
    results = load_results(
        [f"Sparse={dump(tmp_path / 's.json', sparse)}", f"Steady={dump(tmp_path / 'b.json', steady)}"]
    )
    tre = board.item_tables(results, "LungCT")["TRE"]
    assert tre.shape == (20, 2) and int(tre["Sparse"].isna().sum()) == 15
    cell = board.compute_ranks(results).set_index(["method", "task", "metric"])["value"]
    assert cell[("Sparse", "LungCT", "TRE")] == pytest.approx(0.1)
    assert cell[("Steady", "LungCT", "TRE")] == pytest.approx(1.0)
    assert "TRE30" not in set(board.compute_ranks(results)["metric"])  # no Initial
    # The table shows the mean over the cases the method has.
    assert board.build_table(results).loc["Sparse", ("LungCT", "TRE_lm")] == pytest.approx(1.04)


def test_task_rule_and_skipped_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "m"
    unnamed = lung_json("Good")
    del unnamed["name"]
    dump(folder / "HippocampusMR.json", unnamed)  # no name: the file stem
    dump(folder / "x.json", oasis_json("Good"))  # name wins over the stem
    dump(folder / "config.json", {"task_name": "OASIS", "evaluation_methods": []})  # not a result
    with caplog.at_level(logging.WARNING, logger="evaluation.leaderboard.stage"):
        results = load_results([str(folder)])
    assert list(results) == ["m"]
    assert sorted(results["m"]) == ["HippocampusMR", "OASIS"]
    assert "config.json" in caplog.text


def test_duplicate_task_is_an_error(tmp_path: Path) -> None:
    a = dump(tmp_path / "a.json", lung_json("Good"))
    b = dump(tmp_path / "b.json", lung_json("Bad"))
    with pytest.raises(DataError, match=r"b\.json.*LungCT.*a\.json"):
        load_results([f"M={a}", f"M={b}"])


def test_csv_round_trips(specs: dict[str, Path], tmp_path: Path) -> None:
    results = load(specs)
    out = tmp_path / "out"
    leaderboard.write_leaderboard(results, out)
    csv = pd.read_csv(out / "leaderboard.csv")
    assert list(csv.columns) == ["method", "task", "metric", "value"]
    table = board.build_table(results)
    values = csv.loc[~csv["metric"].str.contains(":")]
    back = values.pivot(index="method", columns=["task", "metric"], values="value")
    # added rows: per-task metric means, and the hard items' means beside DSC30/TRE30
    assert set(back.columns) - set(table.columns) == {("OASIS", "HD95"), ("OASIS", "DSC30"), ("LungCT", "TRE30")}
    back = back.reindex(index=table.index, columns=table.columns)
    pd.testing.assert_frame_equal(back, table, check_names=False, rtol=1e-12)
    cell = csv.set_index(["method", "task", "metric"])["value"]
    assert cell[("Good", "OASIS", "HD95")] == pytest.approx(np.mean([2.1, 2.3, 2.4, 2.5, 2.6]))  # case means
    assert cell[("Good", "OASIS", "n:DSC")] == 5 and cell[("Good", "LungCT", "n:runtime")] == 4
    assert cell[("Good", "LungCT", "std:runtime")] == pytest.approx(np.std([1.0, 1.1, 1.2, 1.3]))
    assert ("Initial", "LungCT", "n:runtime") not in cell.index  # none by rule, unlike a missing method
    ranks = csv.loc[csv["metric"].str.startswith(board.RANK_PREFIX)]
    expected = board.compute_ranks(results)
    assert len(ranks) == len(expected)
    assert np.allclose(ranks["value"].to_numpy(), expected["value"].to_numpy())


def test_html_is_self_contained(specs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    md = leaderboard.write_leaderboard(load(specs), out)
    assert (out / "leaderboard.md").read_text() == md
    page = (out / "leaderboard.html").read_text()
    assert page.count("<table ") == 4  # leaderboard, rank summary, one per task
    assert '<td class="name">Initial</td><td>10.19</td><td>-</td><td>-</td><td>-</td>' in page
    assert "<style>" in page and "<link" not in page and "<script" not in page
    assert page.count('<img src="data:image/png;base64,') == 2  # one box plot per task
    b64 = page.split('<img src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n")


def test_cli_writes_outputs(specs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = leaderboard.main(
        [f"Good={specs['Good']}", f"Bad={specs['Bad']}", "-o", str(out), "--initial", str(specs["Initial"])]
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| Initial | 10.19 |" in stdout and "## Rank scores" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.csv", "leaderboard.html", "leaderboard.md"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "results path not found"),
        ("{not json", "invalid JSON"),
        ('{"name": "X", "aggregates": {}}', "no 'cases' object"),
        ('{"name": "X", "cases": {"k": {"DSC": {"mean": "high"}}}}', "cases['k']['DSC'].mean is not a number"),
        ('{"name": "X", "cases": {"k": {"TRE_lm": {"mean": 1, "detailed": [1, "x"]}}}}', "detailed[1] is not a number"),
    ],
)
def test_cli_bad_input_fails_without_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    good = dump(tmp_path / "good.json", lung_json("Good"))
    bad = tmp_path / "broken.json"
    if content is not None:
        bad.write_text(content)
    out = tmp_path / "out"
    rc = leaderboard.main([f"Good={good}", f"Broken={bad}", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and str(bad) in err and message in err
    assert not out.exists()


def test_module_entry_point_and_no_torch(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code = "\n".join(
        [
            "import runpy, sys",
            f"sys.argv = ['leaderboard', 'A={missing}']",
            "try:",
            "    runpy.run_module('evaluation.leaderboard', run_name='__main__')",
            "finally:",
            "    assert 'torch' not in sys.modules and 'pipeline' not in sys.modules, 'imports torch/pipeline'",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"error: {missing}: results path not found" in proc.stderr


def test_rank_config_initial_name_is_respected(specs: dict[str, Path]) -> None:
    config = ranking.RankConfig(initial_name="Nobody")
    notes = board.notes_for(load(specs), config)
    assert any("DSC30/TRE30 are not ranked" in n for n in notes)


def _initial_files(tmp_path: Path) -> tuple[Path, Path]:
    return dump(tmp_path / "init_lung.json", lung_json("Initial")), dump(tmp_path / "init_oasis.json", oasis_json("Initial"))


def test_initial_does_not_swallow_a_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 14 section 5: with nargs="+", "--initial a.json LapIRN=x" took LapIRN=x as a second Initial path.
    lung, _ = _initial_files(tmp_path)
    good = dump(tmp_path / "good.json", lung_json("Good"))
    rc = leaderboard.main(["--initial", str(lung), f"LapIRN={good}", "-o", str(tmp_path / "out")])
    assert rc == 0
    rows = [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[:3] == ["| Method", "| Initial", "| LapIRN"]


def test_initial_repeats_and_mixes_with_methods(tmp_path: Path) -> None:
    lung, oasis = _initial_files(tmp_path)
    good_lung, good_oasis = dump(tmp_path / "gl.json", lung_json("Good")), dump(tmp_path / "go.json", oasis_json("Good"))
    bad = dump(tmp_path / "bad.json", lung_json("Bad"))
    out = tmp_path / "out"
    # Methods before, between and after the flags; the old "Initial=PATH" value form still works.
    argv = [f"Good={good_lung}", "--initial", str(lung), f"Good={good_oasis}", f"--initial=Initial={oasis}", f"Bad={bad}"]
    assert leaderboard.main([*argv, "-o", str(out)]) == 0
    csv = pd.read_csv(out / "leaderboard.csv")
    tasks = csv.loc[csv["metric"].isin(["TRE_lm", "DSC"])].groupby("method")["task"].apply(sorted).to_dict()
    assert tasks == {"Initial": ["LungCT", "OASIS"], "Good": ["LungCT", "OASIS"], "Bad": ["LungCT"]}


def test_old_multi_path_initial_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lung, oasis = _initial_files(tmp_path)
    good = dump(tmp_path / "good.json", lung_json("Good"))
    assert leaderboard.read_as_methods(["--initial", "a.json", "b.json", "M=c", "d"]) == ["b.json"]
    assert leaderboard.read_as_methods(["--initial", "a", "--initial", "b", "M=x"]) == []
    with caplog.at_level(logging.WARNING, logger="evaluation.leaderboard.stage"):
        rc = leaderboard.main(["--initial", str(lung), str(oasis), f"Good={good}"])
    assert rc == 0
    assert f"{oasis} follows --initial and is read as method 'init_oasis'" in caplog.text


def test_initial_needs_a_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = dump(tmp_path / "good.json", lung_json("Good"))
    with pytest.raises(SystemExit) as exc:
        leaderboard.main([f"Good={good}", "--initial"])
    assert exc.value.code == 2 and "--initial: expected one argument" in capsys.readouterr().err


def test_pipeline_command_parses_initial_the_same_way(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline import cli as pipeline_cli  # (the pipeline's dispatcher, not imported by evaluation/)

    lung, oasis = _initial_files(tmp_path)
    good, bad = dump(tmp_path / "good.json", lung_json("Good")), dump(tmp_path / "bad.json", lung_json("Bad"))
    out = tmp_path / "out"
    rc = pipeline_cli.main(["leaderboard", f"Good={good}", "--initial", str(lung), f"Bad={bad}", "-o", str(out)])
    assert rc == 0
    methods = pd.read_csv(out / "leaderboard.csv")["method"].unique().tolist()
    assert methods == ["Initial", "Good", "Bad"]
    with caplog.at_level(logging.WARNING, logger="evaluation.leaderboard.stage"):
        leaderboard.run(argparse.Namespace(results=[f"Good={good}", str(oasis)], initial=[str(lung)], out=None, reports=None), ["--initial", str(lung), str(oasis)])
    assert "init_oasis.json follows --initial" in caplog.text
