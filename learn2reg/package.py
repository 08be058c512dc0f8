"""``python -m pipeline package --data TASK --submission SUB [--rules R] [--split val|test] --out FILE.zip``:
a submission folder checked against its task, then zipped as the task's organisers ask.

The check lists every problem at once (exit 1, nothing written): each ``split`` pair of the task
present exactly once under a name its rule set's evaluator reads (``learn2reg.rules``; the task
folder's own rule set, :attr:`Task.rules`, unless ``--rules``); no second file for a pair (a short
and a long name, an ``.npz`` beside a ``.nii.gz``); nothing else in the folder except our records
(``runtimes.json``, ``predict_config.json``, and the ``report/``, ``warped/``, ``jacobian/``
folders of ``predict``), which stay out of the zip; every field readable, stored as float, of the
fixed grid's shape in a channel layout the rule set accepts, without NaN/Inf
(``learn2reg.submission.field_file_problems``).

The zip (written atomically, members in name order) as each organiser asks:

==============  ===========================================================================
``lumir24/25``  ``NAME.zip`` holding ``NAME/disp_*.nii.gz``, ``NAME`` the zip's own stem: LUMIR's
                "Validation Submission guidelines" (JHU-MedImage-Reg/LUMIR_L2R and
                LUMIR25_L2R25 ``README.md``: ``folder.zip`` / ``folder`` / ``disp_3455_3454.nii.gz``).
``l2r``,        the fields at the zip's top level. No current instruction gives a layout; their
``remind2reg``  evaluators read ``/input/disp_*`` (the grand-challenge containers mount the
                submission as ``/input``: MDL-UzL/L2R ``evaluation/L2RTest/test.sh``,
                ReMIND2Reg ``evaluation/Dockerfile``), so the top level is what they read unchanged.
2020 layout     ``task_0N/disp_XXXX_YYYY.npz``: one folder per task, as the 2020 submissions.
==============  ===========================================================================
"""

from __future__ import annotations

import argparse
import logging
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from learn2reg import rules as rulesets
from learn2reg.cli import add_overwrite_argument, refuse_existing, run_cli
from learn2reg.contract import disp_filename_2020
from learn2reg.io import DataError, atomic_path, check_output_path, read_nifti_header
from learn2reg.submission import field_file_problems, field_folder
from learn2reg.task import Layout, Pair, Task, load_task

log = logging.getLogger(__name__)
#: what ``predict`` writes beside the fields: accepted in a submission folder, left out of the zip
OUR_FILES = ("runtimes.json", "predict_config.json")
OUR_FOLDERS = ("report", "warped", "jacobian")
EXTENSIONS = (".npz", ".nii.gz")


@dataclass(frozen=True)
class Package:
    """A checked submission: the task (under its rule set), the zip's members ``(file, name in
    the zip)`` in name order, what was left out (our records), how the zip is laid out and why."""

    task: Task
    split: str
    members: tuple[tuple[Path, str], ...]
    left_out: tuple[str, ...]
    layout: str


def _ours(path: Path) -> bool:
    if path.is_dir():
        return path.name in OUR_FOLDERS
    return path.name in OUR_FILES or (path.name.startswith("runtimes.rank") and path.name.endswith(".json"))


def pair_names(task: Task, pair: Pair) -> list[str]:
    """Every file name a field of ``pair`` might carry in a submission folder: the 2020 one, or
    the short and long names with both extensions (whichever rule set wrote them)."""
    if task.layout == Layout.L2R2020:
        return [disp_filename_2020(pair.fixed, pair.moving)]
    stems = (f"disp_{pair.fixed[:4]}_{pair.moving[:4]}", f"disp_{pair.fixed}_{pair.moving}")
    return [stem + ext for stem in stems for ext in EXTENSIONS]


def zip_prefix(task: Task, out: Path) -> tuple[str, str]:
    """The folder the fields go into inside the zip (``""``: its top level) and why (module table)."""
    if task.layout == Layout.L2R2020:
        return f"{task.root.name}/", "one task_0N folder per task, as the 2020 submissions"
    if task.rules in (rulesets.LUMIR24.name, rulesets.LUMIR25.name):
        return f"{out.stem}/", "a folder named as the zip, as LUMIR's validation instructions ask (folder.zip/folder/disp_*.nii.gz)"
    return "", "the fields at the top level, where the organisers' evaluator reads them (/input/disp_*)"


def check_package(data_dir: str | Path, submission: str | Path, out: str | Path, rules: str | None = None,
                  split: str = "val") -> tuple[Package, list[str]]:
    """The zip's plan for ``submission`` and every problem found (empty = ready to zip), each
    naming the file or the pair and what is wrong. ``DataError`` when there is nothing to check
    (no such folder, a task without ``split`` pairs, a 2020 task told another rule set)."""
    submission, out = Path(submission), Path(out)
    task = load_task(data_dir).with_rules(rules)
    if task.layout == Layout.L2R2020 and task.rules != rulesets.L2R.name:
        raise DataError(f"{task.root}: a 2020-layout task is submitted in the 2020 format; --rules {task.rules} is for current layouts")
    if not submission.is_dir():
        raise DataError(f"{submission}: submission folder not found")
    pairs = tuple(dict.fromkeys(task.pairs.get(split, ())))  # a pair listed twice is zipped once
    if not pairs:
        raise DataError(f"{task.root}: the task has no {split} pairs")
    folder = field_folder(submission, task.layout, task.root.name)
    problems = list(task.split_problems(split))
    claimed: set[str] = set()
    members: list[tuple[Path, str]] = []
    prefix, why = zip_prefix(task, out)
    for pair in pairs:
        found = [n for n in pair_names(task, pair) if (folder / n).exists()]
        claimed.update(found)
        wanted = pair_names(task, pair) if task.layout == Layout.L2R2020 else rulesets.disp_candidates(task.rules, pair.fixed, pair.moving)
        accepted = [n for n in wanted if n in found]
        if not accepted:
            text = f"{folder}: missing displacement field for {pair.key}: expected {' or '.join(wanted)} ({task.rules} rules)"
            problems.append(text + (f"; found {', '.join(found)}, which the {task.rules} rules do not accept for this pair" if found else ""))
        elif len(found) > 1:
            problems.append(f"{folder}: {len(found)} files for {pair.key}: {', '.join(found)}; the {task.rules} evaluator reads "
                            f"{accepted[0]}: keep one file per pair")
        else:
            problems += _field_problems(task, pair, folder / accepted[0])
            members.append((folder / accepted[0], prefix + accepted[0]))
    left_out = []
    for path in sorted(folder.iterdir()):
        if path.name in claimed:
            continue
        if _ours(path):
            left_out.append(path.name + ("/" if path.is_dir() else ""))
        else:
            problems.append(f"{path}: not a field of a {split} pair of {task.name} under the {task.rules} rules: "
                            "remove it (the zip holds the fields alone)")
    layout = f"{prefix}disp_*: {why}"
    return Package(task, split, tuple(sorted(members, key=lambda m: m[1])), tuple(left_out), layout), problems


def _field_problems(task: Task, pair: Pair, path: Path) -> list[str]:
    """The problems of one pair's field file, on the fixed image's grid (2020: also its half)."""
    try:
        shape = read_nifti_header(task.case(pair.fixed).image).shape
    except DataError as exc:
        return [f"{pair.key}: {exc}"]
    return field_file_problems(path, task.layout, (*shape, 3), rulesets.get(task.rules))


def write_zip(package: Package, out: str | Path) -> Path:
    """The zip, atomically: ``.nii.gz`` stored as they are (already compressed), ``.npz`` deflated."""
    out = Path(out)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", strict_timestamps=False) as zf:  # a file dated before 1980: stored as 1980
        for path, name in package.members:
            zf.write(path, name, compress_type=zipfile.ZIP_STORED if name.endswith(".gz") else zipfile.ZIP_DEFLATED)
    return out


def package(data_dir: str | Path, submission: str | Path, out: str | Path, rules: str | None = None, split: str = "val",
            overwrite: bool = False) -> Package:
    """Check ``submission`` against the task and write ``out``; ``DataError`` listing every problem
    (nothing written) or refusing ``out`` (not a ``.zip``, inside the submission, existing without
    ``overwrite``)."""
    submission, out = Path(submission), Path(out)
    if not out.name.endswith(".zip") or out.name == ".zip":
        raise DataError(f"{out}: --out must name a .zip file")
    if out.resolve().is_relative_to(submission.resolve()):
        raise DataError(f"{out}: inside the submission folder {submission}; write the zip beside it")
    check_output_path(out, folder=False)
    refuse_existing([out], overwrite, "--out")
    found, problems = check_package(data_dir, submission, out, rules, split)
    if problems:
        raise DataError(f"{submission}: {len(problems)} problem(s); nothing written:\n  " + "\n  ".join(problems))
    write_zip(found, out)
    return found


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="task folder")
    parser.add_argument("--submission", type=Path, required=True, help="the folder of fields (predict --out)")
    parser.add_argument("--out", type=Path, required=True, help="the zip to write (FILE.zip)")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="which pairs of the task")
    parser.add_argument("--rules", choices=rulesets.RULE_SETS, default=None,
                        help="whose file names and layouts to check (default: the task folder's rule set)")
    add_overwrite_argument(parser, "an existing zip")


def run(args: argparse.Namespace) -> int:
    """Check, zip, say what was written and what was left out."""
    found = package(args.data, args.submission, args.out, args.rules, args.split, args.overwrite)
    names = [name for _, name in found.members]
    shown = names[0] if len(names) == 1 else f"{names[0]} ... {names[-1]}"
    print(f"{args.out}: {len(names)} field(s) of {found.task.name} ({found.split} pairs, {found.task.rules} rules): {shown}")
    print(f"layout: {found.layout}")
    if found.left_out:
        print(f"left out (our records): {', '.join(found.left_out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m learn2reg.package", "check a submission folder against its task and write the zip the organisers ask for",
                   build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
