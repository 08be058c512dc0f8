"""The shared shape of ``python -m evaluation.X``: parse, set up logging, run, and turn a
``DataError`` into its message on stderr and exit code 1 (argparse exits 2 on usage errors)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from evaluation.io import DataError


def run_cli(
    prog: str,
    description: str,
    build_parser: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
    intermixed: bool = False,
) -> int:
    """``intermixed``: positionals may come before and after options (``A=x --initial i B=y``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    build_parser(parser)
    args = parser.parse_intermixed_args(argv) if intermixed else parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(run(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
