"""The ``Initial`` row: the zero field, evaluated like any submission.

``python -m evaluation.initial -d TASK_DIR -o OUT.json [--split val|test]`` writes zero fields
for every pair into a temporary folder (in the task's own format) and evaluates them, so a
leaderboard's first row needs nothing but the data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.console import print_summary
from evaluation.evaluate import evaluate
from learn2reg.cli import add_overwrite_argument, refuse_existing, run_cli
from learn2reg.contract import disp_filename_2020, disp_filename_l2r
from learn2reg.io import DataError, check_output_path, read_nifti_header, save_nifti, write_json
from learn2reg.task import Layout, load_task


def write_zero_submission(data_dir: str | Path, out_dir: str | Path, split: str = "val") -> Path:
    """Zero fields (full resolution, the task's file names and format) for every ``split`` pair."""
    task = load_task(data_dir)
    pairs = task.pairs.get(split, ())
    if not pairs:
        raise DataError(f"{task.root}: the task has no {split} pairs")
    out_dir = Path(out_dir)
    for pair in pairs:
        shape = read_nifti_header(task.case(pair.fixed).image).shape
        if task.layout == Layout.L2R2020:
            out_dir.mkdir(parents=True, exist_ok=True)
            np.savez(out_dir / disp_filename_2020(pair.fixed, pair.moving), arr_0=np.zeros((3, *shape), np.float16))
        else:
            save_nifti(out_dir / disp_filename_l2r(pair.fixed, pair.moving), np.zeros((*shape, 3), np.float32))
    return out_dir


def evaluate_initial(data_dir: str | Path, split: str = "val", config: str | Path | None = None, workers: int | None = None) -> dict[str, Any]:
    """The official-schema result of the zero field on ``split`` pairs."""
    with tempfile.TemporaryDirectory(prefix="l2r-initial-") as tmp:
        write_zero_submission(data_dir, tmp, split)
        return evaluate(tmp, data_dir, config, split=split, workers=workers)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--data", required=True, type=Path, help="task folder")
    parser.add_argument("-o", "--output", required=True, type=Path, help="result json")
    parser.add_argument("-c", "--config", default=None, help="official evaluation config (default: derived)")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="which pairs of the task")
    add_overwrite_argument(parser, "an existing result json")


def run(args: argparse.Namespace) -> int:
    """Evaluate the zero field, write the json, print its summary as ``evaluate`` does."""
    check_output_path(args.output, folder=False)
    refuse_existing([args.output], args.overwrite, "-o")
    result = evaluate_initial(args.data, args.split, args.config)
    write_json(args.output, result)
    print_summary(result, args.output, title="Initial (zero field)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m evaluation.initial", __doc__.splitlines()[0], build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
