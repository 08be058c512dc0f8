"""What the leaderboard's tables say (evaluation.leaderboard.board + tables + report's Markdown): gaps marked in every
table, values beside ranks, direction marks, best values, folding, and "n too small" notes."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from evaluation.leaderboard import board as bd
from evaluation.leaderboard import render as report
from evaluation.leaderboard import stage as leaderboard
from evaluation.leaderboard import tables
from evaluation.leaderboard.results import Results, load_results
from tests.evaluation.leaderboard.board_data import brain_json, dump, lung_json, oasis_json, write_specs


def md_tables(markdown: str) -> dict[str, list[list[str]]]:
    """Markdown tables by the heading above them: rows of stripped cells, header first (no --- line)."""
    out: dict[str, list[list[str]]] = {}
    heading = ""
    for line in markdown.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
        elif line.startswith("| ") and not line.startswith("|---"):
            out.setdefault(heading, []).append([c.strip() for c in line.strip("|").split(" | ")])
    return out


def column(table: list[list[str]], header: str) -> dict[str, str]:
    """Method -> cell of one column (the method column is the one headed "Method")."""
    head = table[0]
    return {row[head.index("Method")]: row[head.index(header)] for row in table[1:]}


def footnotes(markdown: str, heading: str) -> list[str]:
    """The "- " lines that follow the table under ``heading``."""
    section = markdown.split(f"# {heading}\n", 1)[1].split("\n#", 1)[0]
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


@pytest.fixture
def specs(tmp_path: Path) -> dict[str, Path]:
    return write_specs(tmp_path)


def results_without_bad_lung(specs: dict[str, Path], tmp_path: Path) -> Results:
    """Good and Initial on both tasks; Bad only on OASIS."""
    bad = dump(tmp_path / "bad_oasis.json", oasis_json("Bad"))
    return load_results([f"Good={specs['Good']}", f"Bad={bad}"], initial=[str(specs["Initial"])])


def test_missing_task_is_flagged_in_every_table(specs: dict[str, Path], tmp_path: Path) -> None:
    md = leaderboard.write_leaderboard(results_without_bad_lung(specs, tmp_path))
    found = md_tables(md)
    main, summary, lung = found["Leaderboard"], found["Rank scores (geometric mean per task; mean over tasks)"], found["LungCT"]
    # Table 1: every LungCT cell of Bad says "missing", with the footnote naming method and task.
    for header in ("LungCT TRE_lm (mm) ↓", "LungCT SDlogJ ↓", "LungCT fold (%) ↓", "LungCT s ↓"):
        assert column(main, header)["Bad"] == "missing†"
    assert column(main, "OASIS DSC ↑")["Bad"] == "0.638"  # present results are not marked
    assert "† Bad has no results for LungCT; its rank scores there count every item as worst." in footnotes(md, "Leaderboard")
    # Rank summary: the task score and the mean are marked as computed with missing = worst.
    # LungCT: TRE and TRE30 0.1; SDlogJ and runtime tie with Initial (missing by rule) at (0.1 + 0.55) / 2.
    score = math.sqrt(0.1 * 0.325)
    assert column(summary, "LungCT ↑")["Bad"] == f"{score:.3f}†" and column(summary, "mean ↑")["Bad"].endswith("†")
    assert column(summary, "OASIS ↑")["Bad"] == "0.550"
    assert any(n.startswith("† Computed with missing = worst: Bad has no results for LungCT") for n in footnotes(md, "Rank scores (geometric mean per task; mean over tasks)"))
    # The task table: values missing, each rank score marked, the footnote repeated under it.
    assert column(lung, "TRE_lm (mm) mean ± std (n) ↓")["Bad"] == "missing†"
    assert column(lung, "TRE_lm (mm) rank ↑")["Bad"] == "0.100†" and column(lung, "score ↑")["Bad"] == f"{score:.3f}†"
    assert column(lung, "SDlogJ rank ↑")["Bad"] == "0.325†" and column(lung, "SDlogJ rank ↑")["Initial"] == "0.325"
    assert column(lung, "TRE_lm (mm) rank ↑")["Initial"] == "0.550"
    assert any(n.startswith("† Bad has no results for LungCT") for n in footnotes(md, "LungCT"))
    assert not any("†" in cell for row in found["OASIS"] for cell in row)


def test_incomplete_and_metric_gaps_are_flagged(tmp_path: Path) -> None:
    sparse = lung_json("Good", cases=range(1))  # 1 of the 4 cases
    no_runtime = lung_json("Good")
    for case in no_runtime["cases"].values():
        del case["runtime"]
    results = load_results(
        [f"Sparse={dump(tmp_path / 's.json', sparse)}", f"Steady={dump(tmp_path / 'b.json', lung_json('Bad'))}",
         f"NoClock={dump(tmp_path / 'n.json', no_runtime)}"]
    )  # fmt: skip
    gaps = bd.find_gaps(results)
    assert [(g.method, g.metric, g.have, g.total) for g in gaps] == [("Sparse", None, 1, 4), ("NoClock", "runtime", 0, 4)]
    md = leaderboard.write_leaderboard(results)
    main = md_tables(md)["Leaderboard"]
    assert column(main, "LungCT TRE_lm (mm) ↓")["Sparse"] == "**1.04**‡"  # the mean over its one case, marked
    assert column(main, "LungCT s ↓")["NoClock"] == "missing†"
    assert column(main, "LungCT TRE_lm (mm) ↓")["NoClock"] == "1.19"
    notes = footnotes(md, "Leaderboard")
    assert "‡ Sparse has 1 of 4 LungCT cases: means over those, 3 missing; the rank scores count them as worst." in notes
    assert "† NoClock has no runtime values on LungCT; ranked as worst." in notes
    lung = md_tables(md)["LungCT"]
    assert column(lung, "TRE_lm (mm) mean ± std (n) ↓")["Sparse"] == "**1.04 ± 0.00**‡ (n=1)"
    assert column(lung, "runtime (s) rank ↑")["NoClock"].endswith("†") and "†" not in column(lung, "TRE_lm (mm) rank ↑")["NoClock"]


def test_task_tables_show_values_beside_ranks(specs: dict[str, Path]) -> None:
    md = leaderboard.write_leaderboard(load_results([f"Good={specs['Good']}", f"Bad={specs['Bad']}"], [str(specs["Initial"])]))
    oasis = md_tables(md)["OASIS"]
    assert oasis[0] == [
        "Method", "DSC mean ± std (n) ↑", "DSC rank ↑", "DSC30 mean ± std (n) ↑", "DSC30 rank ↑", "HD95 (vox) mean ± std (n) ↓",
        "HD95 (vox) rank ↑",
        "SDlogJ mean ± std (n) ↓", "SDlogJ rank ↑", "score ↑",
    ]  # fmt: skip (no runtime: no method reports it on OASIS)
    # Good's DSC case means 0.81, 0.83 .. 0.86: mean 0.838, population std 0.0172.
    good = dict(zip(oasis[0], oasis[[r[0] for r in oasis].index("Good")], strict=True))
    assert good["DSC mean ± std (n) ↑"] == "**0.838 ± 0.017** (n=5)"
    assert good["HD95 (vox) mean ± std (n) ↓"] == "**2.38 ± 0.17** (n=5)"
    assert good["DSC rank ↑"] == "**1.000**" and good["score ↑"] == "**1.000**"
    assert column(oasis, "SDlogJ mean ± std (n) ↓")["Initial"] == "-"  # the zero field has none
    assert [r[0] for r in oasis[1:]] == ["Good", "Bad", "Initial"]  # rank order


def test_every_metric_header_has_a_direction(specs: dict[str, Path]) -> None:
    md = leaderboard.write_leaderboard(load_results([f"Good={specs['Good']}", f"Bad={specs['Bad']}"], [str(specs["Initial"])]))
    for heading, rows in md_tables(md).items():
        for header in rows[0]:
            if header not in ("Method", "#"):
                assert header.rstrip("°").endswith(("↑", "↓")), (heading, header)
    main = md_tables(md)["Leaderboard"][0]
    assert {h.split()[-1] for h in main[1:] if "DSC" in h} == {"↑"}
    assert {h.split()[-1] for h in main[1:] if "DSC" not in h} == {"↓"}


def test_best_values_are_highlighted_ties_included(specs: dict[str, Path], tmp_path: Path) -> None:
    twin = dump(tmp_path / "twin.json", lung_json("Good"))  # Good's lung results under another name
    results = load_results([f"Good={specs['Good']}", f"Bad={specs['Bad']}", f"Twin={twin}"], [str(specs["Initial"])])
    md = leaderboard.write_leaderboard(results)
    main = md_tables(md)["Leaderboard"]
    assert column(main, "LungCT TRE_lm (mm) ↓") == {"Initial": "10.19", "Good": "**1.19**", "Bad": "5.19", "Twin": "**1.19**"}
    # The zero field has SDlogJ 0 in its file but none in the table, so it is never "best" there.
    assert column(main, "LungCT SDlogJ ↓") == {"Initial": "-", "Good": "**0.052**", "Bad": "0.202", "Twin": "**0.052**"}
    assert column(main, "OASIS DSC ↑")["Good"] == "**0.838**" and column(main, "OASIS DSC ↑")["Twin"] == "missing†"
    # Best among the ones shown at equal precision: HTML marks the same cells with class "best".
    board = bd.make_board(results)
    cells = tables.main_table(board).rows
    assert [row[0].text for row in cells if row[1].best] == ["Good", "Twin"]
    assert report.html_table(tables.main_table(board), "board").count('<td class="best">1.19</td>') == 2


def test_best_flags_use_the_shown_precision() -> None:
    text = lambda v: tables.fmt(v, 2)  # noqa: E731
    assert tables.best_flags([1.001, 1.004, 1.2, None, math.nan], False, text) == [True, True, False, False, False]
    assert tables.best_flags([0.5, 0.7, 0.7], True, text) == [False, True, True]
    assert tables.best_flags([None, math.inf], False, text) == [False, False]


def test_folding_is_shown_in_percent(specs: dict[str, Path]) -> None:
    md = leaderboard.write_leaderboard(load_results([f"Good={specs['Good']}", f"Bad={specs['Bad']}"], [str(specs["Initial"])]))
    main = md_tables(md)["Leaderboard"]
    # folding_fraction 0.0001 (1 + c) and 0.02 (1 + c), c = 0..3: means 0.025 % and 5 %.
    assert column(main, "LungCT fold (%) ↓") == {"Initial": "-", "Good": "**0.025**", "Bad": "5.000"}
    lung = md_tables(md)["LungCT"]
    assert column(lung, "fold (%) mean ± std (n) ↓")["Bad"] == "5.000 ± 2.236 (n=4)"
    assert "fold (%): voxels with det(I + grad u) <= 0" in md
    assert tables.fmt_metric("folding_fraction", 2e-7) == "<0.001" and tables.fmt_metric("folding_fraction", 0.0) == "0.000"


def test_too_small_samples_get_a_note(tmp_path: Path) -> None:
    # Two cases: SDlogJ and runtime compare 2 values per method (smallest p 0.121); TRE has 10 points.
    files = {m: dump(tmp_path / f"{m}.json", lung_json(m, cases=range(2))) for m in ("Initial", "Good", "Bad")}
    results = load_results([f"Good={files['Good']}", f"Bad={files['Bad']}"], [str(files["Initial"])])
    board = bd.make_board(results)
    power = board.power.set_index("metric")
    assert power.loc["SDlogJ", "n_items"] == 2 and not power.loc["SDlogJ", "separable"]
    assert power.loc["TRE", "n_items"] == 10 and power.loc["TRE", "separable"]
    md = report.render_markdown(board)
    lung = md_tables(md)["LungCT"]
    assert "SDlogJ rank ↑°" in lung[0] and "runtime (s) rank ↑°" in lung[0] and "TRE_lm (mm) rank ↑" in lung[0]
    note = next(n for n in footnotes(md, "LungCT") if n.startswith("°"))
    assert "n too small to separate methods: SDlogJ, runtime (n = 2 per method)" in note and "0.121 ≥ 0.05" in note
    # Good's SDlogJ is lower on both cases, yet it ties with Bad: the note is what says why.
    assert column(lung, "SDlogJ rank ↑°")["Good"] == column(lung, "SDlogJ rank ↑°")["Bad"]
    assert "° n too small to separate methods in: LungCT (SDlogJ, runtime)" in md
    # Four cases are enough (smallest p 0.021): no note.
    full = {m: dump(tmp_path / f"{m}4.json", lung_json(m)) for m in ("Initial", "Good", "Bad")}
    md4 = leaderboard.write_leaderboard(load_results([f"Good={full['Good']}", f"Bad={full['Bad']}"], [str(full["Initial"])]))
    assert "n too small" not in md4 and "°" not in md4


#: Rank metric -> the metric whose values it ranks (their rows in the CSV), for a task with labels and landmarks.
VALUES_OF = {"TRE": "TRE_lm", "TRE30": "TRE30", "DSC": "DSC", "DSC30": "DSC30", "HD95": "HD95", "SDlogJ": "SDlogJ", "runtime": "runtime"}
#: The values' column in the task table (Markdown header).
VALUE_HEADER = {
    "TRE_lm": "TRE_lm (mm) mean ± std (n) ↓", "TRE30": "TRE30 mean ± std (n) ↓", "DSC": "DSC mean ± std (n) ↑",
    "DSC30": "DSC30 mean ± std (n) ↑", "HD95": "HD95 (vox) mean ± std (n) ↓", "SDlogJ": "SDlogJ mean ± std (n) ↓",
    "runtime": "runtime (s) mean ± std (n) ↓",
}  # fmt: skip


def test_every_ranked_metric_of_a_task_with_labels_and_points_is_shown_with_its_values(tmp_path: Path) -> None:
    """Issue 21, item 1: DSC was missing wherever TRE was the accuracy metric, though the score
    ranks both. Through the command line: every rank metric's values (mean ± std, n) are in
    leaderboard.md, .html and .csv, and the task score is the geometric mean of the rank columns shown."""
    files = {m: dump(tmp_path / "results" / m / "BrainDev.json", brain_json(m)) for m in ("Initial", "Good", "Bad")}
    out = tmp_path / "board"
    argv = [f"Good={files['Good']}", f"Bad={files['Bad']}", "--initial", str(files["Initial"]), "-o", str(out)]
    assert leaderboard.main(argv) == 0
    csv = pd.read_csv(out / "leaderboard.csv")
    cell = csv.set_index(["method", "task", "metric"])["value"]
    ranked = set(csv.loc[csv["metric"].str.startswith(bd.RANK_PREFIX), "metric"].str.removeprefix(bd.RANK_PREFIX))
    assert ranked - {"score", "mean"} == set(VALUES_OF)  # (the task score and the mean over tasks)
    md = (out / "leaderboard.md").read_text()
    found = md_tables(md)
    assert "BrainDev DSC ↑" in found["Leaderboard"][0] and "BrainDev TRE_lm (mm) ↓" in found["Leaderboard"][0]
    table = found["BrainDev"]
    page = (out / "leaderboard.html").read_text()
    task_html = page.split("<h3>BrainDev</h3>", 1)[1].split("</table>", 1)[0]
    for metric in VALUES_OF.values():
        shown = column(table, VALUE_HEADER[metric])
        for method in ("Initial", "Good", "Bad"):
            if method == "Initial" and metric in ("SDlogJ", "runtime"):
                assert shown[method] == "-" and (method, "BrainDev", metric) not in cell.index  # the zero field has none
                continue
            mean, std, n = (cell[(method, "BrainDev", prefix + metric)] for prefix in ("", bd.STD_PREFIX, bd.N_PREFIX))
            value, spread = tables.fmt_metric(metric, mean), tables.fmt_metric(metric, std)
            unit = " items" if metric in ("TRE30", "DSC30") else ""
            assert shown[method].replace("**", "") == f"{value} ± {spread} (n={int(n)}{unit})", (metric, method)
            small = f"±\u00a0{spread} · n={int(n)}{unit.replace(' ', chr(0xA0))}"
            assert f'>{value}<span class="n">{small}</span></td>' in task_html, (metric, method)
    rank_columns = [i for i, h in enumerate(table[0]) if h.rstrip("°").endswith("rank ↑")]
    assert len(rank_columns) == len(VALUES_OF)
    for row in table[1:]:
        ranks = [float(row[i].strip("*")) for i in rank_columns]
        score = float(row[table[0].index("score ↑")].strip("*"))
        assert score == pytest.approx(math.prod(ranks) ** (1 / len(ranks)), abs=5e-4), row[0]
