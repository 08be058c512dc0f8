"""``python -m pipeline demo``: the main job on the embedded demo tasks.

Generates the four demo tasks, validates every one (stopping on any problem), and prints
their summary. Later stages (preprocess -> align -> train -> predict -> evaluate ->
leaderboard) extend this same command.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from evaluation.dataset import load_task
from pipeline.demo_data import write_demo
from pipeline.summary import format_summary, summarize
from pipeline.validate import validate_task

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo data (default 0)")
    parser.add_argument("--layout", choices=("l2r", "l2r2020"), default="l2r", help="task folder layout")


def run_demo(out: Path, seed: int = 0, layout: str = "l2r") -> int:
    """Run the demo job into ``out``; returns the exit code (1 if validation found problems)."""
    start = time.perf_counter()
    task_dirs = write_demo(out / "data", seed=seed, layout=layout)
    problems = [str(p) for d in task_dirs for p in validate_task(d)]
    if problems:
        print("\n".join(problems))
        print(f"demo: {len(problems)} problem(s) in the generated data")
        return 1
    print(format_summary([summarize(load_task(d)) for d in task_dirs]))
    print(f"demo: {len(task_dirs)} tasks generated and validated in {time.perf_counter() - start:.1f} s -> {out / 'data'}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_demo(args.out, args.seed, args.layout)
