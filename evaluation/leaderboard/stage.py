"""Leaderboard of several evaluated methods: the seed paper's Table 1 plus Learn2Reg rank scores.

``python -m evaluation.leaderboard METHOD=PATH... [-o OUT_DIR] [--initial PATH]...``

Input: result JSONs of the evaluator; ``PATH`` is one result JSON or a folder of them (task
rule and checks: :mod:`evaluation.leaderboard.results`). ``METHOD=`` may be left out: the method is then
named after the file or folder. ``--initial PATH`` (one path per flag, repeat it for several
files; ``Initial=PATH`` among the methods works too) forms the method ``Initial`` (the
zero-field result), which always comes first.

Output: Markdown on stdout and, with ``-o``, ``leaderboard.md``, ``leaderboard.csv`` (tidy:
``method, task, metric, value``; see :func:`evaluation.leaderboard.board.tidy`) and a self-contained
``leaderboard.html``: Table 1 with folding, the rank scores, one table per task with the metric
values (mean ± std, n) beside their rank scores; best values highlighted, missing results marked
in every table, a note wherever the sample is too small for the rank test to separate methods.
Exit code 1 with a message naming the file for a missing or invalid result; nothing is written then.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.leaderboard import ranking
from evaluation.leaderboard import render as report
from evaluation.leaderboard.board import Board, make_board, tidy
from evaluation.leaderboard.results import INITIAL, Results, case_values, load_results, parse_spec, task_names
from evaluation.pair_reports import stage as pair_reports
from learn2reg.cli import add_overwrite_argument, refuse_existing, run_cli
from learn2reg.io import atomic_open, check_output_path
from learn2reg.writers import hold_folder

__all__ = ["INITIAL", "Results", "load_results", "write_leaderboard", "main"]
#: Methods may come before and after ``--initial`` (``python -m pipeline`` honours this too).
INTERMIXED_ARGS = True

log = logging.getLogger(__name__)
#: The files ``-o`` writes.
OUTPUTS = ("leaderboard.md", "leaderboard.csv", "leaderboard.html")


def box_plots(results: Results, board: Board) -> dict[str, str]:
    """Per task with an accuracy metric, a box plot of its per-case values (base64 PNG)."""
    plots = {}
    for task in task_names(results):
        acc = board.accuracy.get(task)
        if acc is not None:
            values = {m: case_values(per_task.get(task), acc) for m, per_task in results.items()}
            plots[task] = report.boxplot_png(task, acc, values)
    return plots


def write_leaderboard(
    results: Results, out_dir: str | Path | None = None, config: ranking.RankConfig | None = None,
    reports: Mapping[str, Path] | None = None,
) -> str:
    """Build the board and its report; write them to ``out_dir`` if given.

    Returns the Markdown. Writes ``leaderboard.md``, ``leaderboard.csv`` and
    ``leaderboard.html`` atomically, each only after everything has been rendered.
    """
    board = make_board(results, config or ranking.RankConfig(initial_name=INITIAL))
    markdown = report.render_markdown(board)
    if out_dir is None:
        return markdown
    html = report.render_html(board, box_plots(results, board))
    if reports:  # per-pair visual reports (evaluation.pair_reports.stage), linked in a section of their own
        html = pair_reports.add_report_links(html, pair_reports.report_links_html(reports, Path(out_dir)))
    csv_text = tidy(board).to_csv(index=False)
    out_dir = Path(out_dir)
    for name, text in zip(OUTPUTS, (markdown, csv_text, html), strict=True):
        with atomic_open(out_dir / name) as fh:
            fh.write(text)
    log.info("wrote %s/leaderboard.{md,csv,html}", out_dir)
    return markdown


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of the leaderboard command."""
    parser.add_argument("results", nargs="+", metavar="METHOD=PATH", help="a method's result JSON or folder of them")
    parser.add_argument("-o", "--out", type=Path, default=None, help="write leaderboard.md/.csv/.html here")
    parser.add_argument(
        "--initial", action="append", default=None, metavar="PATH",
        help="zero-field results (method Initial): one JSON or folder per flag; repeat the flag for more",
    )  # fmt: skip
    parser.add_argument(
        "--reports", action="append", default=None, metavar="METHOD=DIR",
        help="link the per-pair reports (DIR/report/ or DIR/*/report/, see `pipeline report`) of a method's submissions;"
        " one per flag, repeat it",
    )  # fmt: skip
    add_overwrite_argument(parser, "leaderboard files already in OUT_DIR")


def read_as_methods(argv: Sequence[str]) -> list[str]:
    """Bare paths right after ``--initial PATH`` (read as methods; ``--initial`` once took several).

    Before ``--initial`` took exactly one path, ``--initial a.json b.json`` made both files
    Initial; now ``b.json`` is a method named ``b``. Returns such arguments, to warn about.
    """
    found, i = [], 0
    while i < len(argv):
        if argv[i] == "--":
            break
        step = 2 if argv[i] == "--initial" else 1 if argv[i].startswith("--initial=") else 0
        if not step:
            i += 1
            continue
        i += step
        while i < len(argv) and not argv[i].startswith("-") and "=" not in argv[i]:
            found.append(argv[i])
            i += 1
    return found


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Print the leaderboard Markdown (and write the files with ``--out``).

    ``argv``: the raw arguments, to warn about the old multi-path ``--initial`` (default: the
    process's, as when ``python -m pipeline leaderboard`` parsed them).
    """
    for arg in read_as_methods(sys.argv[1:] if argv is None else argv):
        log.warning(
            "%s follows --initial and is read as method %r; --initial takes one path (repeat --initial for more)",
            arg, parse_spec(arg)[0],
        )  # fmt: skip
    if args.out is not None:
        check_output_path(args.out, folder=True)
        refuse_existing([args.out / name for name in OUTPUTS], getattr(args, "overwrite", False), "-o")
    results = load_results(args.results, args.initial or [])
    links = dict(parse_spec(spec) for spec in args.reports or [])
    with hold_folder(args.out) if args.out is not None else contextlib.nullcontext():  # one writer per folder
        print(write_leaderboard(results, args.out, reports=links))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m evaluation.leaderboard``."""
    raw = list(sys.argv[1:] if argv is None else argv)
    return run_cli(
        "python -m evaluation.leaderboard", __doc__.splitlines()[0], build_parser, lambda a: run(a, raw), raw,
        intermixed=INTERMIXED_ARGS,
    )  # fmt: skip

