"""``python -m pipeline convert-2020 ARCHIVE_DIR --task N --out data/task_0N``: an unpacked
Learn2Reg 2020 archive -> the 2020 task layout of ``data/README.md``.

The organisers' 2020 archives name their files per task. The names below are those that public
code of 2020 participants reads (see the README section "Recipes for Learn2Reg tasks" for the
sources); each archive may hold them under any top folder (``training/``, ``Training/``,
``Testing/``, ``task_03/Training/`` ...):

* task 2 (lung CT): ``scans/case_NNN_exp.nii.gz`` and ``_insp``, ``lungMasks/case_NNN_exp.nii.gz``
  and ``_insp``, ``keypoints/case_NNN.csv``; fixed = exhale, moving = inhale (the 2020 convention);
  per-scan point files ``keypoints/case_NNN_exp.csv`` / ``_insp``, if an archive has them, go to
  ``keypoints/`` like the images;
* task 3 (abdomen CT): ``img/imgNNNN.nii.gz``, ``label/labelNNNN.nii.gz``;
* task 4 (hippocampus MR): ``img/hippocampus_NNN.nii.gz``, ``label/hippocampus_NNN.nii.gz``;
* every task: ``pairs_val.csv``, ``pairs_test.csv``.

Files are copied unchanged (intensities included: the 2020 lung scans keep their HU + 1024,
which ``preprocess.hu_offset`` "auto" recognises). Task 2's per-case keypoint files hold the
points of both scans of a case; which columns belong to which scan is not documented in the
sources we could check, so they are copied aside into ``keypoints_2020/`` untouched instead of
being guessed into ``keypoints/``. Task 1 (CuRIOUS) is not supported: its archive names could
not be confirmed. The output folder must be named ``task_0N`` (2020 submissions hold one
``task_0N/`` folder per task, and the evaluator finds a 2020 submission's task folder by the data
folder's name); it is written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from learn2reg.io import DataError
from learn2reg.task import load_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """Files named ``pattern`` (groups ``id`` and, for paired tasks, ``role``) in a folder named
    ``folder`` (case-insensitive) go to the sibling folder ``kind`` of the 2020 layout."""

    folder: str
    pattern: re.Pattern[str]
    kind: str  # images | labels | masks | keypoints | keypoints_2020


def _rule(folder: str, pattern: str, kind: str) -> Rule:
    return Rule(folder, re.compile(pattern + r"$", re.IGNORECASE), kind)


RULES: dict[int, tuple[Rule, ...]] = {
    2: (
        _rule("scans", r"case_(?P<id>\d+)_(?P<role>exp|insp)\.nii\.gz", "images"),
        _rule("lungmasks", r"case_(?P<id>\d+)_(?P<role>exp|insp)\.nii\.gz", "masks"),
        _rule("keypoints", r"case_(?P<id>\d+)_(?P<role>exp|insp)\.csv", "keypoints"),
        _rule("keypoints", r"case_(?P<id>\d+)\.csv", "keypoints_2020"),
    ),
    3: (_rule("img", r"img(?P<id>\d+)\.nii\.gz", "images"), _rule("label", r"label(?P<id>\d+)\.nii\.gz", "labels")),
    4: (_rule("img", r"hippocampus_(?P<id>\d+)\.nii\.gz", "images"), _rule("label", r"hippocampus_(?P<id>\d+)\.nii\.gz", "labels")),
}
ROLES = {"exp": "fixed", "insp": "moving"}  # 2020 task 2: fixed = exhale, moving = inhale
PAIR_FILES = ("pairs_val.csv", "pairs_test.csv")
# task.json of the 2020 layout: name, modality, shape (../shared/docs/learn2reg.md), label ids (names not in the archives)
META: dict[int, dict] = {
    2: {"modality": {"0": "CT"}, "shape": [192, 192, 208]},
    3: {"modality": {"0": "CT"}, "shape": [192, 160, 256], "labels": {str(i): f"label {i}" for i in range(1, 14)}},
    4: {"modality": {"0": "MR"}, "shape": [64, 64, 64], "labels": {"1": "label 1", "2": "label 2"}},
}


def plan(archive: Path, task: int) -> tuple[dict[str, Path], list[Path]]:
    """Where every recognised file of ``archive`` goes (relative target -> source) and the files
    left out. ``DataError`` listing every target that two files would claim."""
    claims: dict[str, list[Path]] = defaultdict(list)
    skipped = []
    for path in sorted(p for p in archive.rglob("*") if p.is_file()):
        target = _target(path, task)
        if target is None:
            skipped.append(path)
        else:
            claims[target].append(path)
    clashes = [f"{t}: {', '.join(str(p) for p in sources)}" for t, sources in claims.items() if len(sources) > 1]
    if clashes:
        raise DataError(f"{archive}: {len(clashes)} file(s) of the task layout would come from several archive files:\n  "
                        + "\n  ".join(clashes))
    return {t: sources[0] for t, sources in claims.items()}, skipped


def _target(path: Path, task: int) -> str | None:
    """The 2020-layout path (relative) of one archive file, or ``None`` if no rule names it."""
    if path.name.lower() in PAIR_FILES:
        return path.name.lower()
    for rule in RULES[task]:
        match = rule.pattern.match(path.name)
        if match and path.parent.name.lower() == rule.folder:
            if rule.kind == "keypoints_2020":
                return f"keypoints_2020/{path.name}"
            role = f"_{ROLES[match['role'].lower()]}" if "role" in rule.pattern.groupindex else ""
            suffix = ".csv" if rule.kind == "keypoints" else ".nii.gz"
            return f"{rule.kind}/img{int(match['id']):04d}{role}{suffix}"
    return None


def convert(archive: Path, task: int, out: Path) -> dict[str, int]:
    """Copy the recognised files of ``archive`` into a new 2020 task folder ``out`` (named
    ``task_0N``), written atomically; returns the number of files per sibling folder."""
    archive, out = Path(archive), Path(out)
    if task not in RULES:
        raise DataError(f"task {task}: only the 2020 tasks 2, 3 and 4 can be converted (task 1's archive names are not confirmed)")
    if out.name != f"task_{task:02d}":
        raise DataError(f"{out}: the output folder must be named task_{task:02d} (a 2020 submission holds one task_0N folder "
                        "per task, and the evaluator finds it by the data folder's name)")
    if not archive.is_dir():
        raise DataError(f"{archive}: not a folder (unpack the archive first)")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not empty (nothing was written)")
    files, skipped = plan(archive, task)
    if not any(t.startswith("images/") for t in files):
        raise DataError(f"{archive}: no image of the 2020 task {task} found (expected names: "
                        + ", ".join(f"{r.folder}/{r.pattern.pattern.rstrip('$')}" for r in RULES[task] if r.kind == "images") + ")")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for target, source in sorted(files.items()):
            (tmp / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp / target)
        (tmp / "task.json").write_text(json.dumps({"name": out.name, **META[task]}, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts: dict[str, int] = defaultdict(int)
    for target in files:
        counts[target.split("/")[0] if "/" in target else target] += 1
    _report(archive, out, counts, skipped)
    return dict(counts)


def _report(archive: Path, out: Path, counts: dict[str, int], skipped: list[Path]) -> None:
    log.info("%s -> %s: %s", archive, out, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if "pairs_val.csv" not in counts:
        log.warning("%s: no pairs_val.csv in the archive: put the task's pairs_val.csv (header fixed,moving) into %s", archive, out)
    if counts.get("keypoints_2020"):
        log.warning("%s: %d per-case keypoint file(s) copied unchanged into %s/keypoints_2020/ (their column order per scan "
                    "is not documented in the sources we checked; not used by the pipeline)", archive, counts["keypoints_2020"], out)
    if skipped:
        log.warning("%s: %d file(s) left out (no rule names them), e.g. %s", archive, len(skipped), ", ".join(str(p) for p in skipped[:3]))
    problems = load_task(out).problems
    for problem in problems:
        log.warning("%s", problem)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", type=Path, help="the unpacked 2020 archive (a folder)")
    parser.add_argument("--task", type=int, required=True, choices=sorted(RULES), help="the 2020 task number")
    parser.add_argument("--out", type=Path, required=True, help="the new task folder, named task_0N (e.g. data/task_02)")


def run(args: argparse.Namespace) -> int:
    counts = convert(args.archive, args.task, args.out)
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"next: python -m pipeline validate {args.out}")
    return 0
