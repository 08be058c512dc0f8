"""The ``Initial`` row: the zero field, evaluated like any submission.

``python -m evaluation.initial -d TASK_DIR -o OUT.json [--split val|test] [-c CONFIG] [--rules R]``
writes zero fields for every pair of the run's plan (``evaluation.evaluate.plan``: the config's
pairs, or the task's own as ``evaluate -d`` alone sees them: the organisers' configs in the folder,
else derived) into a temporary folder, under the file names of its rule set
(``learn2reg.rules.disp_name``; a 2020 task: its own format) and evaluates them, so a
leaderboard's first row needs nothing but the data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.aggregate import print_summary
from evaluation.evaluate import ConfigSource, evaluate, plan
from learn2reg import rules as rulesets
from learn2reg.cli import add_overwrite_argument, refuse_existing, run_cli
from learn2reg.contract import disp_filename_2020
from learn2reg.io import DataError, check_output_path, read_nifti_header, save_nifti, write_json
from learn2reg.task import Layout, load_task


def write_zero_submission(data_dir: str | Path, out_dir: str | Path, split: str = "val", rules: str | None = None) -> Path:
    """Zero fields (full resolution, the task's file names and format) for every ``split`` pair;
    current-layout names are those of the task's rule set (``rules`` overrides it)."""
    task = load_task(data_dir).with_rules(rules)
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
            save_nifti(out_dir / rulesets.disp_name(task.rules, pair.fixed, pair.moving), np.zeros((*shape, 3), np.float32))
    return out_dir


def evaluate_initial(
    data_dir: str | Path, split: str = "val", config: ConfigSource = None, workers: int | None = None, rules: str = "auto"
) -> dict[str, Any]:
    """The official-schema result of the zero field on the pairs of the run's plan
    (``evaluate``'s: ``config`` a file, LUMIR's several, or ``None`` for the task's own)."""
    run_plan = plan(data_dir, config, rules, split)
    with tempfile.TemporaryDirectory(prefix="l2r-initial-") as tmp:
        if load_task(data_dir).layout == Layout.L2R2020:
            write_zero_submission(data_dir, tmp, split)
        else:
            for _, cfg in run_plan.configs:
                for pair in cfg.pairs:
                    name = rulesets.disp_name(run_plan.rules, pair.fixed, pair.moving)
                    save_nifti(Path(tmp) / name, np.zeros((*cfg.expected_shape[:3], 3), np.float32))
        return evaluate(tmp, data_dir, config, rules=rules, split=split, workers=workers)  # the same choice, logged with its reason


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--data", required=True, type=Path, help="task folder")
    parser.add_argument("-o", "--output", required=True, type=Path, help="result json")
    parser.add_argument("-c", "--config", default=None, help="official evaluation config (default: the organisers' configs in the task folder, else derived)")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="which pairs of the task")
    parser.add_argument("--rules", choices=rulesets.CHOICES, default="auto", help="whose evaluator (as evaluate --rules)")
    add_overwrite_argument(parser, "an existing result json")


def run(args: argparse.Namespace) -> int:
    """Evaluate the zero field, write the json, print its summary as ``evaluate`` does."""
    check_output_path(args.output, folder=False)
    refuse_existing([args.output], args.overwrite, "-o")
    result = evaluate_initial(args.data, args.split, args.config, rules=args.rules)
    write_json(args.output, result)
    print_summary(result, args.output, title="Initial (zero field)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m evaluation.initial", __doc__.splitlines()[0], build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
