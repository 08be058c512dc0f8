"""Command-line entry: ``python -m pipeline COMMAND [options]``, installed as ``l2r COMMAND``.

Each command lives in its own module exposing ``build_parser(parser)`` and ``run(args) -> int``;
only the chosen command's module is imported (so ``validate``, ``evaluate`` and ``leaderboard``
never load torch). ``evaluate``, ``initial`` and ``leaderboard`` are the ``evaluation`` package's
commands, with the same options as ``python -m evaluation.X``. Exit codes: 0 success, 1 a problem
with the input or the run (message on stderr), 2 usage error. ``-v`` before the command (or
anywhere, for commands without a ``-v`` of their own) turns on debug logging.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from learn2reg.cli import HelpFormatter, execute, package_version, parse

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipeline.demo.job", "run the main job on the embedded demo tasks"),
    "demo-data": ("pipeline.demo.tasks", "write the embedded demo tasks (deterministic from a seed)"),
    "validate": ("pipeline.data.validate", "check a task folder and list every problem"),
    "summary": ("pipeline.data.summary", "print a summary table of task folders"),
    "convert-2020": ("pipeline.data.convert2020", "an unpacked Learn2Reg 2020 archive -> the 2020 task layout (task_0N)"),
    "preprocess": ("pipeline.data.preprocess", "resample, window and normalise a task into the cache"),
    "train": ("pipeline.training.train", "train LapIRN on a task (progressive, resumable, torchrun-ready)"),
    "import-weights": ("pipeline.training.import_weights", "turn the LapIRN authors' published weights into a run folder"),
    "align": ("pipeline.affine.align", "affine pre-alignment (NGF + L-BFGS)"),
    "predict": ("pipeline.prediction.predict", "write challenge-format fields and runtimes for a task's pairs"),
    "package": ("learn2reg.package", "check a submission folder against its task and write the zip its organisers ask for"),
    "evaluate": ("evaluation.evaluate", "score a submission with the official Learn2Reg metrics (the official script's flags)"),
    "initial": ("evaluation.initial", "evaluate the zero field (the leaderboard's Initial row)"),
    "container": ("pipeline.container.build", "a run -> the submission image of an organiser's contract (docker save | gzip)"),
    "register": ("pipeline.prediction.register", "register one image pair with a trained run: field, warped image, report"),
    "report": ("evaluation.pair_reports.stage", "per-pair visual reports (self-contained HTML) of a submission"),
    "leaderboard": ("evaluation.leaderboard.stage", "table and rank scores of several evaluated methods (Markdown/CSV/HTML)"),
}
VERBOSE = ("-v", "--verbose")


class TopHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The command list (epilog) as written, the defaults shown."""


def top_parser(prog: str) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=prog,
        description="Learn2Reg submission pipeline around LapIRN.",
        epilog="commands:\n" + "\n".join(f"  {n:<{max(map(len, COMMANDS))}}  {h}" for n, (_, h) in COMMANDS.items())
        + f"\n\n'{prog} COMMAND --help' shows a command's options and their defaults.",
        formatter_class=TopHelpFormatter,
    )
    top.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    top.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return top


def command_parser(prog: str, command: str) -> argparse.ArgumentParser:
    """The parser of one command (imports its module)."""
    module_name, help_text = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"{prog} {command}", description=help_text, formatter_class=HelpFormatter)
    importlib.import_module(module_name).build_parser(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m pipeline") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = top_parser(prog)
    verbose = False
    while argv and argv[0] in VERBOSE:
        verbose = True
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"{prog} {package_version()}")
        return 0
    command = top.parse_args(argv[:1]).command
    # Before torch loads: OpenMP threads that spin while waiting make a shared 2-core machine
    # up to 12x slower (measured). Passive waiting is not free when the cores are idle: 2-thread
    # steps of many small ops pay 35-45 % for waking the sleeping threads (demo T3 level 3: 146 vs
    # 108 ms), which is why the demo configs train with train.cpu_threads = 1. Set
    # OMP_WAIT_POLICY=ACTIVE on a dedicated machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    module = importlib.import_module(COMMANDS[command][0])
    parser = command_parser(prog, command)
    rest = argv[1:]
    if not any("--verbose" in action.option_strings for action in parser._actions):
        verbose = verbose or any(a in VERBOSE for a in rest)
        rest = [a for a in rest if a not in VERBOSE]
    # A stage whose positionals may come on both sides of its options says so (evaluation.leaderboard.stage).
    args = parse(parser, rest, getattr(module, "INTERMIXED_ARGS", False))
    try:
        return execute(module.run, args, verbose)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def l2r(argv: list[str] | None = None) -> int:
    """The ``l2r`` console script (``[project.scripts]`` in pyproject.toml): ``l2r COMMAND ...``."""
    return main(argv, prog="l2r")
