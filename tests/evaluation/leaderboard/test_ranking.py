"""Rank scores (evaluation.leaderboard.ranking): known orderings, ties, significance, hard items, geometric mean."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluation.leaderboard import ranking
from evaluation.leaderboard.ranking import RankConfig


def items(**columns: list[float]) -> pd.DataFrame:
    """An ``items x methods`` table from per-method value lists."""
    return pd.DataFrame(columns, dtype=np.float64)


def test_clearly_better_method_gets_one_and_other_point_one() -> None:
    values = items(A=[1.0, 2.0, 3.0, 4.0, 5.0], B=[11.0, 12.0, 13.0, 14.0, 15.0])
    lower = ranking.metric_rank(values, higher_is_better=False)
    assert lower.to_dict() == pytest.approx({"A": 1.0, "B": 0.1})
    # The same numbers where higher is better: the order flips.
    higher = ranking.metric_rank(values, higher_is_better=True)
    assert higher.to_dict() == pytest.approx({"A": 0.1, "B": 1.0})


def test_identical_methods_share_the_average() -> None:
    values = items(A=[1.0, 2.0, 3.0, 4.0], B=[1.0, 2.0, 3.0, 4.0])
    assert ranking.metric_rank(values, False).to_dict() == pytest.approx({"A": 0.55, "B": 0.55})


def test_three_methods_known_order() -> None:
    base = np.arange(20.0)
    values = items(C=list(base + 200), A=list(base), B=list(base + 100))
    counts = ranking.significance_counts(values, higher_is_better=False)
    assert counts.to_dict() == {"A": 0, "B": 1, "C": 2}
    assert ranking.metric_rank(values, False).to_dict() == pytest.approx({"A": 1.0, "B": 0.55, "C": 0.1})


def test_difference_without_significance_is_a_tie() -> None:
    # Two items each, fully separated: rank-sum p = 0.12 > 0.05, so nobody is better.
    values = items(A=[1.0, 2.0], B=[3.0, 4.0])
    assert ranking.significance_counts(values, False).to_dict() == {"A": 0, "B": 0}
    assert ranking.metric_rank(values, False).to_dict() == pytest.approx({"A": 0.55, "B": 0.55})
    # A looser threshold makes the same data significant.
    assert ranking.metric_rank(values, False, p_threshold=0.2).to_dict() == pytest.approx({"A": 1.0, "B": 0.1})


def test_rank_from_counts_averages_ties_over_linspace() -> None:
    counts = pd.Series([0, 2, 4, 3, 4, 0], index=list("abcdef"))
    scale = np.linspace(0.1, 1.0, 6)  # positions: most beaten first
    expected = {
        "c": (scale[0] + scale[1]) / 2, "e": (scale[0] + scale[1]) / 2,
        "d": scale[2], "b": scale[3],
        "a": (scale[4] + scale[5]) / 2, "f": (scale[4] + scale[5]) / 2,
    }  # fmt: skip
    assert ranking.rank_from_counts(counts).to_dict() == pytest.approx(expected)
    assert ranking.rank_from_counts(pd.Series([0], index=["solo"])).to_dict() == {"solo": 1.0}


def test_fill_missing_drops_all_missing_items_and_gives_worst() -> None:
    values = items(A=[1.0, np.nan, np.nan], B=[2.0, 3.0, np.nan])
    lower = ranking.fill_missing(values, higher_is_better=False)
    assert len(lower) == 2  # the last item is missing everywhere
    assert lower.loc[1, "A"] == np.inf and not lower.isna().any().any()
    higher = ranking.fill_missing(values, higher_is_better=True)
    assert higher.loc[1, "A"] == -np.inf


def test_missing_items_rank_worst() -> None:
    # A is better wherever it has a value but misses 15 of 20 items: worst fill makes B better.
    a = [1.0] * 5 + [np.nan] * 15
    values = ranking.fill_missing(items(A=a, B=[2.0] * 20), higher_is_better=False)
    assert ranking.metric_rank(values, False).to_dict() == pytest.approx({"A": 0.1, "B": 1.0})


def test_hard_items_are_the_worst_initial_values() -> None:
    initial = pd.Series([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.5], index=list("abcdefghij"))
    assert set(ranking.hard_items(initial, higher_is_better=False)) == {"c", "g", "e"}  # 3 largest
    assert set(ranking.hard_items(initial, higher_is_better=True)) == {"j", "b", "f"}  # 3 smallest
    assert len(ranking.hard_items(initial.iloc[:2], False)) == 1  # at least one item


def test_geometric_mean_ignores_nan() -> None:
    scores = pd.DataFrame({"x": [0.1, 1.0, np.nan], "y": [1.0, 1.0, np.nan], "z": [np.nan, 0.55, np.nan]})
    gm = ranking.geometric_mean(scores)
    assert gm.iloc[0] == pytest.approx(np.sqrt(0.1))
    assert gm.iloc[1] == pytest.approx(0.55 ** (1 / 3))
    assert np.isnan(gm.iloc[2])


def _tre_task(n_cases: int = 4, n_points: int = 5) -> dict[str, pd.DataFrame]:
    """A TRE task: Initial 10 mm, Good 1 mm, Bad 5 mm (plus a ramp), per-case SDlogJ."""
    ramp = np.linspace(0.0, 0.5, n_cases * n_points)
    idx = pd.MultiIndex.from_product([[f"c{i}" for i in range(n_cases)], [str(p) for p in range(n_points)]])
    tre = pd.DataFrame({"Initial": 10 + ramp, "Good": 1 + ramp, "Bad": 5 + ramp}, index=idx)
    case_ramp = np.linspace(0.0, 0.01, n_cases)
    sdlogj = pd.DataFrame({"Initial": 0.0 + case_ramp, "Good": 0.05 + case_ramp, "Bad": 0.2 + case_ramp})
    return {"TRE": tre, "SDlogJ": sdlogj}


def test_rank_task_scores_and_initial_is_worst_in_sdlogj() -> None:
    table = ranking.rank_task(_tre_task(), ["Initial", "Good", "Bad"])
    assert list(table.columns) == ["TRE", "TRE30", "SDlogJ", ranking.TASK_SCORE]
    # Initial's zero-field SDlogJ (0, the smallest) counts as missing, hence worst.
    assert table["SDlogJ"].to_dict() == pytest.approx({"Initial": 0.1, "Good": 1.0, "Bad": 0.55})
    assert table[ranking.TASK_SCORE].to_dict() == pytest.approx({"Initial": 0.1, "Good": 1.0, "Bad": 0.55})


def test_hard_metric_uses_initial_worst_items() -> None:
    task = _tre_task()
    # Bad beats Good only on the 6 items where Initial is worst (the end of the ramp).
    tre = task["TRE"].copy()
    hard = tre["Initial"].sort_values(ascending=False).index[:6]
    tre.loc[hard, "Bad"] = 0.0
    table = ranking.rank_task({"TRE": tre}, ["Initial", "Good", "Bad"])
    assert table.loc["Bad", "TRE30"] == pytest.approx(1.0)
    assert table.loc["Good", "TRE30"] == pytest.approx(0.55)
    assert table.loc["Good", "TRE"] == pytest.approx(1.0)
    assert table.loc["Good", ranking.TASK_SCORE] == pytest.approx(np.sqrt(1.0 * 0.55))


def test_without_initial_hard_metrics_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    task = _tre_task()
    with caplog.at_level(logging.WARNING, logger="evaluation.leaderboard.ranking"):
        table = ranking.rank_task(task, ["Good", "Bad"], RankConfig())
    assert "TRE30" not in table.columns and "TRE" in table.columns
    assert "TRE30 not ranked" in caplog.text
    assert table["TRE"].to_dict() == pytest.approx({"Good": 1.0, "Bad": 0.1})


def test_rank_scores_tidy_and_overall_mean() -> None:
    tasks = {
        "T1": _tre_task(),
        "T2": {"TRE": _tre_task()["TRE"][["Initial", "Bad", "Good"]].rename(columns={"Bad": "Good", "Good": "Bad"})},
    }
    tidy = ranking.rank_scores(tasks, ["Initial", "Good", "Bad"])
    assert list(tidy.columns) == ["method", "task", "metric", "value"]
    cell = tidy.set_index(["method", "task", "metric"])["value"]
    assert cell[("Good", "T1", ranking.TASK_SCORE)] == pytest.approx(1.0)
    assert cell[("Good", "T2", ranking.TASK_SCORE)] == pytest.approx(0.55)
    assert cell[("Good", ranking.OVERALL_TASK, ranking.OVERALL_METRIC)] == pytest.approx((1.0 + 0.55) / 2)
    assert cell[("Initial", ranking.OVERALL_TASK, ranking.OVERALL_METRIC)] == pytest.approx(0.1)


@pytest.mark.parametrize(("n1", "n2"), [(1, 1), (2, 2), (3, 3), (2, 5), (4, 3), (10, 10)])
def test_min_attainable_p_is_the_rank_sum_p_of_separated_samples(n1: int, n2: int) -> None:
    # Cross-check: scipy's own p for two samples that do not overlap.
    separated = stats.ranksums(np.arange(n1, dtype=float), np.arange(n2, dtype=float) + 100.0).pvalue
    assert ranking.min_attainable_p(n1, n2) == pytest.approx(separated, rel=1e-12)


def test_no_arrangement_beats_the_min_attainable_p() -> None:
    # Every split of the ranks 1..6 into two samples of 3 (and of 2 + 4): none gives a smaller p.
    for n1, n2 in ((3, 3), (2, 4)):
        values = np.arange(n1 + n2, dtype=float)
        smallest = min(
            stats.ranksums(values[list(idx)], np.delete(values, list(idx))).pvalue
            for idx in itertools.combinations(range(n1 + n2), n1)
        )
        assert smallest == pytest.approx(ranking.min_attainable_p(n1, n2), rel=1e-12)


def test_min_attainable_p_known_values() -> None:
    # 1 or 2 items per method can never reach p < 0.05; 3 can, just (0.0495).
    assert ranking.min_attainable_p(1, 1) == pytest.approx(0.3173, abs=1e-4)
    assert ranking.min_attainable_p(2, 2) == pytest.approx(0.1213, abs=1e-4)
    assert ranking.min_attainable_p(3, 3) == pytest.approx(0.0495, abs=1e-4)
    assert ranking.min_attainable_p(0, 5) == 1.0


def test_rank_power_counts_the_items_each_metric_compares() -> None:
    # 2 cases x 5 points: TRE compares 10 items, TRE30 the 3 hardest, SDlogJ 2 cases.
    power = ranking.rank_power({"T": _tre_task(n_cases=2)}, ["Initial", "Good", "Bad"])
    assert list(power.columns) == ["task", "metric", "n_items", "min_p", "separable"]
    rows = power.set_index("metric")
    assert rows["n_items"].to_dict() == {"TRE": 10, "TRE30": 3, "SDlogJ": 2}
    assert rows["separable"].to_dict() == {"TRE": True, "TRE30": True, "SDlogJ": False}
    # What "not separable" means: Good's SDlogJ is lower on both cases, yet nobody is better.
    scores = ranking.rank_task(_tre_task(n_cases=2), ["Good", "Bad"])
    assert scores.loc["Good", "SDlogJ"] == scores.loc["Bad", "SDlogJ"] == pytest.approx(0.55)
