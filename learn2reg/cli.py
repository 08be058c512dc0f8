"""The shared shape of ``python -m evaluation.X``: parse, set up logging, run, and turn a
``DataError`` into its message on stderr and exit code 1 (argparse exits 2 on usage errors).

Also shared with ``python -m pipeline``: :class:`HelpFormatter` (every ``--help`` shows the
defaults) and :func:`package_version` (``--version``).

In the container (docker-compose.yml), the host folders mounted at ``/data``, ``/runs`` and
``/outputs`` are named in ``L2R_HOST_DATA``, ``L2R_HOST_RUNS`` and ``L2R_HOST_OUTPUTS`` as the user
gave them (``./data`` or ``DATA_DIR``): an error message then names the host path, and every command
ends with one line saying which host folder each container folder is."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from learn2reg.errors import DataError, OutputError
from learn2reg.faults import describe, machine_fault

DISTRIBUTION = "l2r-lapirn"  # [project] name in pyproject.toml
#: container folder -> the variable in which docker-compose.yml names the host folder mounted there
CONTAINER_MOUNTS = {"/data": "L2R_HOST_DATA", "/runs": "L2R_HOST_RUNS", "/outputs": "L2R_HOST_OUTPUTS"}
OVERWRITE_VARIABLE = "L2R_OVERWRITE"  # 1: --overwrite by default (docker-compose.yml: OVERWRITE)


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
    import importlib.metadata  # here: its import costs ~0.05 CPU s, and a checkout never needs it

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str = "outputs that already exist") -> None:
    """``--overwrite``: the one way every command replaces outputs that exist (default: refuse;
    on where ``L2R_OVERWRITE`` is set: :func:`overwrite_by_default`)."""
    parser.add_argument("--overwrite", action="store_true", default=overwrite_by_default(),
                        help=f"replace {what} (default: refuse; on where {OVERWRITE_VARIABLE}=1, as docker compose's OVERWRITE=1 sets)")


def overwrite_by_default(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``L2R_OVERWRITE`` asks every command to replace what exists (``1``, ``true``,
    ``yes``): how ``OVERWRITE=1 docker compose run --rm STAGE`` reaches a stage, whose command
    line compose fixes (extra arguments would replace the whole command)."""
    return environ.get(OVERWRITE_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def overwrite_hint(environ: Mapping[str, str] = os.environ) -> str:
    """How to replace an output that exists: ``--overwrite``, and in a compose stage (the
    container's host folders are known) the variable that sets it there."""
    in_compose = any(environ.get(variable) for variable in CONTAINER_MOUNTS.values())
    return "--overwrite (docker compose: OVERWRITE=1 docker compose run --rm ...)" if in_compose else "--overwrite"


def refuse_existing(paths: Iterable[str | Path], overwrite: bool, option: str = "--out") -> None:
    """Before any work: ``DataError`` naming the ``paths`` that exist (the first three, then a
    count) unless ``overwrite``; the message says how to go on (``--overwrite`` or another ``option``)."""
    present = [Path(p) for p in paths if Path(p).exists()]
    if not present or overwrite:
        return
    named = ", ".join(str(p) for p in present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
    one = len(present) == 1
    raise DataError(f"{named}: already exist{'s' if one else ''}; pass {overwrite_hint()} to replace {'it' if one else 'them'},"
                    f" or choose another {option}")


def host_folders(
    environ: Mapping[str, str] = os.environ, mounted: Callable[[str], bool] = os.path.isdir
) -> dict[str, str]:
    """Container folder -> host folder as the user mounted it, for the folders this container has
    (``mounted``); empty outside the container (no ``L2R_HOST_*`` variables)."""
    return {
        folder: environ[variable]
        for folder, variable in CONTAINER_MOUNTS.items()
        if environ.get(variable) and mounted(folder)
    }


def on_host(text: str, folders: Mapping[str, str]) -> str:
    """``text`` with the container paths under ``folders`` written as host paths
    (``/data/T: no such task`` -> ``./data/T: no such task``); ``/database`` or ``/app/data`` stay."""
    if not folders:
        return text
    pattern = "|".join(re.escape(folder) for folder in sorted(folders, key=len, reverse=True))
    return re.sub(rf"(?<![\w.~/-])({pattern})(?![\w.-])", lambda m: folders[m.group(1)].rstrip("/") or "/", text)


def mount_note(folders: Mapping[str, str]) -> str:
    """The one line that maps the container folders to the host's (``""`` outside the container)."""
    if not folders:
        return ""
    pairs = ", ".join(f"{folder} = {host}" for folder, host in folders.items())
    return f"(container paths: {pairs} on the host)"


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
    parser.add_argument("--version", action=VersionAction)
    code = execute(run, parse(parser, argv, intermixed))
    if argv is None:  # the process is this command (a caller passing argv, a test, goes on)
        end_without_collecting()
    return code


def end_without_collecting() -> None:
    """Skip the garbage collection of the interpreter's exit, for a process whose work is done:
    it visits every object left (numpy's and our modules', the results) to free memory that the
    system takes back anyway: ~15-30 ms of a 0.2 s evaluator run (measured). Files, exit
    handlers and the exit code are untouched."""
    gc.disable()
    gc.freeze()


class VersionAction(argparse.Action):
    """``--version``: print ``prog version`` and exit; the version (:func:`package_version`: a
    TOML parse, ~5-20 ms) is looked up only when asked for, not at every start."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str = "show the version and exit") -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None, intermixed: bool = False) -> argparse.Namespace:
    """Parse; ``intermixed``: positionals may come on both sides of the options."""
    return parser.parse_intermixed_args(argv) if intermixed else parser.parse_args(argv)


def execute(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, verbose: bool = False) -> int:
    """Log at INFO (DEBUG with ``verbose`` or the command's own ``-v``), run, and turn a
    ``DataError`` (the input), an ``OutputError`` (a write the machine refused) or an ``OSError``
    of the machine that escaped (a full disk, a quota, no permission, a read-only file system:
    ``learn2reg.faults``) into its message on stderr and exit code 1: the one policy of every command.
    In the container the message names host paths, and a last line maps the container's folders."""
    verbose = verbose or bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    folders = host_folders()
    try:
        return int(run(args))
    except (DataError, OutputError) as exc:
        print(f"error: {on_host(str(exc), folders)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a full disk, a permission... met outside an atomic write (or wrapped by a library)
        fault = machine_fault(exc)
        if fault is None:
            raise
        print(f"error: {on_host(describe(fault), folders)}", file=sys.stderr)
        return 1
    finally:
        if folders:
            print(mount_note(folders), file=sys.stderr)
