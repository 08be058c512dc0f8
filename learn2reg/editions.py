"""Which of the organisers' rule sets a task folder follows, and the file names that depend on it.

The Learn2Reg tasks of 2024-2026 are scored by their own organisers' evaluators, which differ in
file names, field layouts and metrics (``tests/fixtures/organisers/SPEC.md``). A rule set names one
of them: ``l2r`` (MDL-UzL/L2R, every other task), ``lumir24``, ``lumir25``, ``remind2reg``; the
tables of what each rule set means live in ``learn2reg.rules``. Here: how to tell a folder's rule
set (:func:`rules_for`, also :attr:`learn2reg.task.Task.rules`) and the point folders that depend on
it (:func:`point_folders`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from learn2reg.io import DataError

if TYPE_CHECKING:
    from learn2reg.task import Task

# The organisers' rule sets (evaluator, submission file names; their tables: ``learn2reg.rules``).
RULE_SETS = ("l2r", "lumir24", "lumir25", "remind2reg")


def rules_for(task: Task, told: str | None = None) -> str:
    """Which organisers' rule set a task folder follows, one of :data:`RULE_SETS`.

    ``told`` (a command-line choice) wins when given. Otherwise, from the folder:

    * LUMIR (name ``LUMIR``/``LUMIR25``..., or images named ``LUMIRMRI_*``): ``lumir24`` when the
      folder holds LUMIR 2024's evaluation configs (``LUMIR_VAL_*_evaluation_config.json``) and
      nothing named ``LUMIR25_*``; else ``lumir25`` (the newest; its json is ``LUMIR25_dataset.json``,
      same format);
    * ReMIND2Reg (name or image prefix ``ReMIND2Reg``): ``remind2reg``;
    * anything else, 2020 layout included: ``l2r`` (the Learn2Reg evaluator; a 2020 folder's
      submission format is :attr:`Task.layout`'s).
    """
    if told is not None:
        if told not in RULE_SETS:
            raise DataError(f"unknown rule set {told!r} (choose from {', '.join(RULE_SETS)})")
        return told
    names = {task.name.lower(), *(p.lower() for p in task.image_prefixes)}
    if any(n.startswith("remind2reg") for n in names):
        return "remind2reg"
    if any(n.startswith("lumir") for n in names):
        if not list(task.root.glob("LUMIR25_*")) and list(task.root.glob("LUMIR_VAL_*_evaluation_config.json")):
            return "lumir24"
        return "lumir25"
    return "l2r"


def point_folders(kind: str, fixed_modality: str, moving_modality: str, rules: str = "l2r") -> tuple[str, ...]:
    """Folder stems (before ``Tr``/``Ts``) that may hold a pair's ``kind`` points *for that pair*,
    in order of preference; empty when the images' own folder (``keypointsTr``) holds them.

    Between equal modalities or ``0000 -> 0001``: none. Otherwise (``ONCO``, ``SPEC.md`` section 2.4):
    the L2R evaluator (``l2r``) looks in ``{kind}{min}{max}`` with 4-digit ids
    (``keypoints00000001``), the data of OncoReg / ThoraxCBCT ship ``keypoints01`` /
    ``keypoints02`` (ids as integers, the older evaluator's name): both are tried, in that order.
    LUMIR's evaluators use the integer form for keypoints only; ReMIND2Reg's never (its T2 pairs'
    landmarks are in ``landmarksTr``)."""
    if fixed_modality == moving_modality or (fixed_modality, moving_modality) == ("0000", "0001") or rules == "remind2reg":
        return ()
    lo, hi = sorted((fixed_modality, moving_modality))
    short = f"{kind}{int(lo)}{int(hi)}"
    if rules in ("lumir24", "lumir25"):
        return (short,) if kind == "keypoints" else ()
    return (f"{kind}{lo}{hi}", short)
