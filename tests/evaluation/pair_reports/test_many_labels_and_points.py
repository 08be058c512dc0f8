"""Per-pair reports of a task with many labels and many landmarks (issue 21, item 2), through the
command line (``python -m pipeline report``) and in a real headless Chromium at 1366 px:
TRE before/after per landmark (the evaluator's numbers), landmarks drawn on the slices, the worst
labels first with the full table folded away, ten distinct contour colours with a legend, and
links between the pairs and back to the index."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from evaluation import metrics
from evaluation.pair_reports.figures import MOVED_COLOUR, TRUTH_COLOUR
from evaluation.pair_reports.page import POINT_SECTIONS, SECTIONS
from evaluation.pair_reports.stage import report_path
from learn2reg.io import read_points
from pipeline.cli import main
from tests.browser import Browser, BrowserUnavailable, ensure_chromium
from tests.evaluation.pair_reports.brain_task import (
    N_LABELS,
    N_POINTS,
    PAIRS,
    SHIFTS,
    make_many_task,
    ramp_field,
    write_ramp_submission,
)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> tuple[Path, Path]:
    """The task and its submission with every report written by ``python -m pipeline report``."""
    root = tmp_path_factory.mktemp("many")
    task, sub = make_many_task(root / "task"), write_ramp_submission(root / "sub")
    assert main(["report", "--data", str(task), "--submission", str(sub)]) == 0
    return task, sub


def colour_pixels(png_b64: str, colour: str) -> int:
    rgb = (imread(io.BytesIO(base64.b64decode(png_b64)), format="png")[..., :3] * 255).round().astype(int)
    return int((rgb == [int(colour[i : i + 2], 16) for i in (1, 3, 5)]).all(axis=-1).sum())


def test_the_numbers_are_the_evaluators_worst_first(reports):
    task, sub = reports
    numbers = json.loads(report_path(sub, "0001_0000", "0002_0000").with_suffix(".json").read_text())
    assert numbers["point_kind"] == "landmarks" and len(numbers["tre"]) == N_POINTS and len(numbers["dice"]) == N_LABELS
    fixed = read_points(task / "landmarksTr" / "Many_0001_0000.csv")
    moving = read_points(task / "landmarksTr" / "Many_0002_0000.csv")
    shift = np.subtract(SHIFTS[2], SHIFTS[1])
    after = metrics.tre(ramp_field(tuple(shift)), fixed, moving, (1.0, 1.0, 1.5))  # type: ignore[arg-type]
    before = metrics.tre(np.zeros((40, 40, 40, 3), np.float32), fixed, moving, (1.0, 1.0, 1.5))
    np.testing.assert_allclose([numbers["tre"][str(i)]["after"] for i in range(N_POINTS)], after, rtol=1e-12)
    np.testing.assert_allclose([numbers["tre"][str(i)]["before"] for i in range(N_POINTS)], before, rtol=1e-12)
    assert numbers["tre_after"] == pytest.approx(after.mean()) and numbers["tre_before"] > numbers["tre_after"]
    page = report_path(sub, "0001_0000", "0002_0000").read_text()
    for section in (*SECTIONS, *POINT_SECTIONS):
        assert f'<section id="{section}">' in page, section
    # the landmarks figure draws both point kinds on the slices
    landmarks = re.search(r'<section id="landmarks">.*?base64,([A-Za-z0-9+/=]+)"', page, re.S)
    assert landmarks and colour_pixels(landmarks.group(1), TRUTH_COLOUR) > 0 and colour_pixels(landmarks.group(1), MOVED_COLOUR) > 0
    # the TRE table: every landmark, largest error after registration first, folded
    tre = page.split('<details id="tre-all">', 1)[1].split("</details>", 1)[0]
    rows = re.findall(r"<tr><td>(\d+)</td><td>[^<]*</td><td>([\d.]+)</td><td>([\d.]+)</td>", tre)
    assert len(rows) == N_POINTS and [float(a) for _, _, a in rows] == sorted((float(a) for _, _, a in rows), reverse=True)
    assert int(rows[0][0]) == int(np.argmax(after))
    # Dice: the ten worst after registration first (those drawn), then all labels folded, by id
    dice = numbers["dice"]
    worst = sorted((v["after"], int(k)) for k, v in dice.items() if v["after"] == v["after"])[:10]
    head = page.split('<section id="dice">', 1)[1].split('<details id="dice-all">', 1)[0]
    assert [int(k) for k in re.findall(r"<tr><td>(\d+)</td>", head)] == [k for _, k in worst]
    folded = page.split('<details id="dice-all">', 1)[1].split("</details>", 1)[0]
    assert [int(k) for k in re.findall(r"<tr><td>(\d+)</td>", folded)] == list(range(1, N_LABELS + 1))
    swatches = re.findall(r'<span class="swatch" style="background:(#[0-9a-f]{6})"></span>', head)
    assert len(swatches) == len(set(swatches)) == 10  # ten colours that differ, one per drawn label


def test_pages_link_each_other_and_the_index(reports):
    _, sub = reports
    names = [report_path(sub, f"{f:04d}_0000", f"{m:04d}_0000").name for f, m in PAIRS]
    pages = [(sub / "report" / n).read_text() for n in names]
    assert 'href="index.html"' in pages[0] and f'href="{names[1]}" rel="next"' in pages[0] and 'rel="prev"' not in pages[0]
    assert f'href="{names[0]}" rel="prev"' in pages[1] and f'href="{names[2]}" rel="next"' in pages[1]
    assert "pair 3 of 3" in pages[2] and 'rel="next"' not in pages[2]
    index = (sub / "report" / "index.html").read_text()
    assert "mean TRE before (mm)" in index and all(f'href="{n}"' in index for n in names)


def test_an_existing_report_is_refused_unless_overwrite(reports, capsys):
    task, sub = reports
    page = report_path(sub, "0001_0000", "0003_0000")
    before = page.stat().st_mtime_ns
    assert main(["report", "--data", str(task), "--submission", str(sub), "--pairs", "0001_0000,0003_0000"]) == 1
    err = capsys.readouterr().err
    assert f"{page}: already exists; pass --overwrite to replace it" in err and page.stat().st_mtime_ns == before


PAGE_FACTS = """(() => {
  const text = (e) => e.textContent.replace(/\\s+/g, ' ').trim();
  return {
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    title: document.title,
    nav: [...document.querySelector('nav.pairs').children].map(text),
    details: [...document.querySelectorAll('details')].map((d) => [d.id, d.open]),
    visibleDiceRows: [...document.querySelectorAll('#dice > table tbody tr')].length,
    summary: Object.fromEntries([...document.querySelectorAll('#summary tr')].map((tr) => [text(tr.cells[0]), text(tr.cells[1])])),
    figures: Object.fromEntries([...document.querySelectorAll('section img')].map((i) => [i.closest('section').id, [i.complete && i.naturalWidth, i.clientWidth]])),
  };
})()"""


@pytest.mark.slow
def test_a_reader_at_1366_px_sees_landmarks_worst_labels_and_can_walk_the_pairs(reports, tmp_path):
    try:
        chromium = ensure_chromium()
    except BrowserUnavailable as exc:
        pytest.skip(f"no headless browser: {exc}")
    _, sub = reports
    first = report_path(sub, "0001_0000", "0002_0000")
    with Browser(chromium, tmp_path / "profile") as page:
        page.open(first, width=1366, height=768)
        top = page.screenshot(tmp_path / "report-1366x768.png")
        page.screenshot(tmp_path / "report-full-page.png", full_page=True)
        facts = page.evaluate(PAGE_FACTS)
        page.evaluate("document.querySelector('#tre-all').open = true; document.querySelector('#tre-all').scrollIntoView()")
        page.screenshot(tmp_path / "report-tre-open.png")
        page.evaluate("document.querySelector('a[rel=next]').click()")
        page.wait_for_event("Page.loadEventFired")
        second = page.evaluate("[document.title, [...document.querySelector('nav.pairs').querySelectorAll('a')].map((a) => a.textContent)]")
        page.evaluate("document.querySelector('nav.pairs a').click()")  # back to the index
        page.wait_for_event("Page.loadEventFired")
        index = page.evaluate("[document.title, document.querySelectorAll('tbody tr').length]")
    assert struct.unpack(">II", top.read_bytes()[16:24]) == (1366, 768)
    assert facts["scrollWidth"] <= facts["innerWidth"] == 1366
    assert facts["nav"] == ["all pairs (index)", "first pair", "pair 1 of 3", "next: 0001_0000<--0003_0000 →"]
    assert facts["details"] == [["dice-all", False], ["tre-all", False]]  # the long tables are folded away
    assert facts["visibleDiceRows"] == 10 + 1  # the ten worst labels and the mean
    assert facts["summary"]["mean TRE before / after (landmarks)"].endswith("mm (120 points)")
    assert facts["summary"]["lowest Dice after"].startswith("0.")
    for section in ("images", "checkerboard", "grid", "jacobian", "labels", "landmarks"):
        assert facts["figures"][section][0] > 0, section  # decoded
    assert facts["figures"]["labels"][1] >= 1000 and facts["figures"]["landmarks"][1] >= 1000  # wide enough to read
    assert second == ["Registration report: 0001_0000<--0003_0000",
                      ["all pairs (index)", "← previous: 0001_0000<--0002_0000", "next: 0001_0000<--0004_0000 →"]]
    assert index == ["Registration reports: Many", 3]
