"""The leaderboard page as a person sees it: leaderboard.html rendered by a real headless Chromium.

Debian's chromium is installed by the test when missing (root and apt-get, see tests/browser.py);
the test skips only when that is impossible. The screenshot stays in the test's tmp folder.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from evaluation.leaderboard import stage as leaderboard
from evaluation.leaderboard.results import Results, load_results
from tests.browser import Browser, BrowserUnavailable, ensure_chromium
from tests.evaluation.leaderboard.board_data import brain_json, dump, lung_json, oasis_json

#: The demo's four tasks and case counts (task -> builder); LapIRN+IO has no DemoCuRIOUS results, as in the demo.
TASKS = {
    "DemoAbdomenCTCT": lambda m: oasis_json(m, n_cases=3),
    "DemoCuRIOUS": lambda m: lung_json(m, cases=range(1)),
    "DemoHippocampusMR": lambda m: oasis_json(m, n_cases=3),
    "DemoLungCT": lambda m: lung_json(m, cases=range(2)),
}
METHODS = {"Initial": "Initial", "LapIRN": "Bad", "LapIRN+IO": "Good"}  # shown name -> board_data method


def demo_like_results(root: Path) -> Results:
    """Results shaped like the demo's: 3 methods x 4 tasks, folding and runtime everywhere, one task missing."""
    for shown, method in METHODS.items():
        for task, build in TASKS.items():
            if shown == "LapIRN+IO" and task == "DemoCuRIOUS":
                continue
            result = build(method)
            result["name"] = task
            for c, case in enumerate(result["cases"].values()):
                case.setdefault("folding_fraction", {"mean": 0.0 if method == "Initial" else 0.001 * c})
                if method != "Initial":
                    case.setdefault("runtime", {"mean": 0.5 + c})
            dump(root / shown / f"{task}.json", result)
    return load_results([f"{m}={root / m}" for m in ("LapIRN", "LapIRN+IO")], initial=[str(root / "Initial")])


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return ensure_chromium()
    except BrowserUnavailable as exc:
        pytest.skip(f"no headless browser: {exc}")


PAGE_FACTS = """(() => {
  const text = (e) => e.textContent.trim();
  const metricHeaders = [...document.querySelectorAll('thead th')]
    .filter((th) => !th.classList.contains('group') && !th.classList.contains('name'));
  return {
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    wraps: [...document.querySelectorAll('.table-wrap')].map((w) => [w.scrollWidth, w.clientWidth]),
    tables: [...document.querySelectorAll('table')].map((t) => t.className),
    headersWithoutDirection: metricHeaders.filter((th) => !/[↑↓]/.test(text(th))).map(text),
    missing: [...document.querySelectorAll('td.missing')].map(text),
    best: document.querySelectorAll('td.best').length,
    bestWeight: [...document.querySelectorAll('td.best')].map((td) => getComputedStyle(td).fontWeight),
    footnotes: [...document.querySelectorAll('.footnotes li')].map(text),
    images: [...document.images].map((i) => i.complete && i.naturalWidth > 0),
  };
})()"""


@pytest.mark.slow
def test_page_fits_a_laptop_and_shows_the_views(chromium: str, tmp_path: Path) -> None:
    out = tmp_path / "board"
    leaderboard.write_leaderboard(demo_like_results(tmp_path / "results"), out)
    with Browser(chromium, tmp_path / "profile") as page:
        page.open(out / "leaderboard.html", width=1366, height=768)
        shot = page.screenshot(tmp_path / "leaderboard-1366x768.png")
        facts = page.evaluate(PAGE_FACTS)
        urls = page.requested_urls()
        page.resize(1024, 768)  # a smaller laptop: tables may scroll in their wrappers, the page may not
        narrow = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and struct.unpack(">II", png[16:24]) == (1366, 768)
    # No horizontal overflow at 1366 x 768, and no table cut off inside its wrapper either.
    assert facts["innerWidth"] == 1366 and facts["scrollWidth"] <= facts["innerWidth"], facts["scrollWidth"]
    assert all(scroll <= client for scroll, client in facts["wraps"]), facts["wraps"]
    assert narrow[0] <= narrow[1], narrow
    # Table 1, the rank summary and one table per task, with the marks a reader needs.
    assert facts["tables"] == ["board", "ranks"] + ["task"] * 4
    assert facts["headersWithoutDirection"] == []
    assert facts["missing"] == ["missing†"] * 9  # 4 cells in Table 1, 5 values (TRE30's too) in the DemoCuRIOUS table
    assert any("LapIRN+IO has no results for DemoCuRIOUS" in n for n in facts["footnotes"])
    assert any(n.startswith("° n too small to separate methods: SDlogJ, runtime (n = 1 per method)") for n in facts["footnotes"])
    assert facts["best"] > 0 and set(facts["bestWeight"]) == {"700"}
    # Self-contained: the page itself and its data-URI plots, nothing else; every plot decoded.
    assert facts["images"] == [True] * 4
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls


def test_demo_shaped_markdown(tmp_path: Path) -> None:
    """The rank summary of the demo-shaped board: the score of a method missing a task is marked, and
    it still competes for "best" (it is the ranking's verdict, computed with missing = worst)."""
    md = leaderboard.write_leaderboard(demo_like_results(tmp_path))
    summary = md.split("## Rank scores", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in summary.splitlines() if line.startswith("| ")]
    assert rows[0] == "| # | Method | DemoAbdomenCTCT ↑ | DemoCuRIOUS ↑ | DemoHippocampusMR ↑ | DemoLungCT ↑ | mean ↑ |"
    assert rows[1].startswith("| 1 | LapIRN+IO | **0.843** | 0.359† | **0.843** | **0.742** | **0.697**† |")
    assert "- ° n too small to separate methods in: DemoAbdomenCTCT (DSC30); DemoCuRIOUS (TRE30, SDlogJ, runtime);" in summary


TASK_FACTS = """(() => {
  const table = [...document.querySelectorAll('h3')].find((h) => h.textContent === 'BrainDev').nextElementSibling;
  const groups = [...table.querySelectorAll('th.group')].map((th) => th.textContent.trim());
  return {
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    wraps: [...document.querySelectorAll('.table-wrap')].map((w) => [w.scrollWidth, w.clientWidth]),
    groups,
    headers: [...table.querySelectorAll('thead tr:nth-child(2) th')].map((th) => th.textContent.replace(/\\s+/g, ' ').trim()),
    good: [...table.querySelectorAll('tbody tr:first-child td')].map((td) => td.innerText.replace(/\\s+/g, ' ').trim()),
  };
})()"""


@pytest.mark.slow
def test_a_task_with_labels_and_points_shows_every_ranked_metric_within_a_laptop_screen(chromium: str, tmp_path: Path) -> None:
    """Issue 21, item 1, as a reader sees it: the task table of a task ranked on TRE, TRE30, DSC, DSC30,
    HD95, SDlogJ and runtime shows each one's values beside its rank, and still fits 1366 px."""
    files = {m: dump(tmp_path / "results" / m / "BrainDev.json", brain_json(m)) for m in ("Initial", "Good", "Bad")}
    out = tmp_path / "board"
    leaderboard.write_leaderboard(load_results([f"Good={files['Good']}", f"Bad={files['Bad']}"], [str(files["Initial"])]), out)
    with Browser(chromium, tmp_path / "profile") as page:
        page.open(out / "leaderboard.html", width=1366, height=768)
        page.screenshot(tmp_path / "leaderboard-braindev-1366.png", full_page=True)
        facts = page.evaluate(TASK_FACTS)
    assert facts["innerWidth"] == 1366 and facts["scrollWidth"] <= facts["innerWidth"], facts["scrollWidth"]
    assert all(scroll <= client for scroll, client in facts["wraps"]), facts["wraps"]
    assert facts["groups"] == ["TRE_lm (mm)", "DSC", "HD95 (vox)", "SDlogJ", "fold (%)", "runtime (s)"]
    for name in ("TRE30 mean ± std (n) ↓", "TRE30 rank ↑", "DSC30 mean ± std (n) ↑", "DSC30 rank ↑"):
        assert name in facts["headers"], facts["headers"]
    assert facts["good"][:5] == ["Good", "1.19 ± 0.11 · n=4", "1.000", "1.33 ± 0.03 · n=6 items", "1.000"]
    assert "0.833 ± 0.015 · n=4" in facts["good"] and "0.810 ± 0.008 · n=3 items" in facts["good"]
