"""Leaderboard links to the per-pair reports (evaluation.pair_reports.stage, ``leaderboard --reports``)."""

from __future__ import annotations

import json
import re

from evaluation.leaderboard import stage as leaderboard
from evaluation.pair_reports.stage import add_report_links, main, report_links_html
from tests.evaluation.pair_reports.test_reports import KEY, make_task, translation, write_submission


def test_the_leaderboard_links_the_report_index(tmp_path):
    task = make_task(tmp_path / "task")
    subs = tmp_path / "submissions" / "LapIRN"
    write_submission(subs / "task", translation((1.0, 0, 0)))
    assert main(["--data", str(task), "--submission", str(subs / "task")]) == 0
    out = tmp_path / "leaderboard"
    links = report_links_html({"LapIRN": subs}, out)
    assert '<section id="pair-reports">' in links and 'href="../submissions/LapIRN/task/report/index.html">Tiny<' in links
    assert add_report_links("<html><body>x</body></html>", links) == f"<html><body>x{links}</body></html>"
    assert report_links_html({"Other": tmp_path / "nothing"}, out) == ""
    result = {"name": "Tiny", "cases": {KEY: {"DSC": {"mean": 0.9, "detailed": [0.9]}}}, "aggregates": {}}
    (tmp_path / "res.json").write_text(json.dumps(result))
    assert leaderboard.main([f"LapIRN={tmp_path / 'res.json'}", "-o", str(out), "--reports", f"LapIRN={subs}"]) == 0
    page = (out / "leaderboard.html").read_text()
    href = re.search(r'<section id="pair-reports">.*?href="([^"]+)"', page, re.S).group(1)
    assert (out / href).resolve() == (subs / "task" / "report" / "index.html").resolve()
