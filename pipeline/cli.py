"""Command-line entry: ``python -m pipeline COMMAND [options]``.

Each command lives in its own module exposing ``build_parser(parser)`` and ``run(args) -> int``;
only the chosen command's module is imported (so ``validate`` never loads torch). Exit codes:
0 success, 1 a problem with the input or the run (message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from evaluation.io import DataError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipeline.demo.job", "run the main job on the embedded demo tasks"),
    "demo-data": ("pipeline.demo.tasks", "write the embedded demo tasks (deterministic from a seed)"),
    "validate": ("pipeline.data.validate", "check a task folder and list every problem"),
    "summary": ("pipeline.data.summary", "print a summary table of task folders"),
    "convert-2020": ("pipeline.data.convert2020", "an unpacked Learn2Reg 2020 archive -> the 2020 task layout (task_0N)"),
    "preprocess": ("pipeline.data.preprocess", "resample, window and normalise a task into the cache"),
    "train": ("pipeline.training.train", "train LapIRN on a task (progressive, resumable, torchrun-ready)"),
    "align": ("pipeline.affine.align", "affine pre-alignment (NGF + L-BFGS)"),
    "predict": ("pipeline.prediction.predict", "write challenge-format fields and runtimes for a task's pairs"),
    "leaderboard": ("evaluation.leaderboard", "table and rank scores of several evaluated methods (Markdown/CSV/HTML)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Learn2Reg submission pipeline around LapIRN.",
        epilog="commands:\n" + "\n".join(f"  {n:<12} {h}" for n, (_, h) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    verbose = "-v" in argv or "--verbose" in argv
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    ns = top.parse_args(argv[:1])
    module_name, help_text = COMMANDS[ns.command]
    # Before torch loads: OpenMP threads that spin while waiting make a shared 2-core machine
    # up to 12x slower (measured). Passive waiting is not free when the cores are idle: 2-thread
    # steps of many small ops pay 35-45 % for waking the sleeping threads (demo T3 level 3: 146 vs
    # 108 ms), which is why the demo configs train with train.cpu_threads = 1. Set
    # OMP_WAIT_POLICY=ACTIVE on a dedicated machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {ns.command}", description=help_text)
    module.build_parser(parser)
    args = parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(module.run(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
