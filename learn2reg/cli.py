"""The shared shape of ``python -m evaluation.X``: parse, set up logging, run, and turn a
``DataError`` into its message on stderr and exit code 1 (argparse exits 2 on usage errors).

Also shared with ``python -m pipeline``: :class:`HelpFormatter` (every ``--help`` shows the
defaults) and :func:`package_version` (``--version``)."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from learn2reg.errors import DataError, OutputError
from learn2reg.faults import describe, machine_fault

DISTRIBUTION = "l2r-lapirn"  # [project] name in pyproject.toml


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` ends each option with ``(default: VALUE)``, except where there is no default
    (``None``) or the help text already says what the default means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "(default" in text:
            return text
        if isinstance(action.default, list | tuple) and not action.default:
            return text + " (default: none)"
        return super()._get_help_string(action) or text


def package_version() -> str:
    """The version in ``pyproject.toml`` of the source tree this code runs from (a checkout, the
    container's ``/app``), else the installed distribution's, else ``"unknown"``."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib  # Python >= 3.11

            project = tomllib.loads(pyproject.read_text()).get("project", {})
            if project.get("name") == DISTRIBUTION and "version" in project:
                return str(project["version"])
        except (ImportError, ValueError):  # Python 3.10, or a file that is not TOML
            pass
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_cli(
    prog: str,
    description: str,
    build_parser: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
    intermixed: bool = False,
) -> int:
    """``intermixed``: positionals may come before and after options (``A=x --initial i B=y``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    build_parser(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return execute(run, parse(parser, argv, intermixed))


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None, intermixed: bool = False) -> argparse.Namespace:
    """Parse; ``intermixed``: positionals may come on both sides of the options."""
    return parser.parse_intermixed_args(argv) if intermixed else parser.parse_args(argv)


def execute(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, verbose: bool = False) -> int:
    """Log at INFO (DEBUG with ``verbose`` or the command's own ``-v``), run, and turn a
    ``DataError`` (the input), an ``OutputError`` (a write the machine refused) or an ``OSError``
    of the machine that escaped (a full disk, a quota, no permission, a read-only file system:
    ``learn2reg.faults``) into its message on stderr and exit code 1: the one policy of every command."""
    verbose = verbose or bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(run(args))
    except (DataError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a full disk, a permission... met outside an atomic write (or wrapped by a library)
        fault = machine_fault(exc)
        if fault is None:
            raise
        print(f"error: {describe(fault)}", file=sys.stderr)
        return 1
