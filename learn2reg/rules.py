"""The organisers' rule sets: how each Learn2Reg evaluator of 2024-2026 reads a submission and its
ground truth, and how it aggregates, as data (one frozen :class:`Rules` per evaluator).

The exact behaviour of each evaluator is written down in ``tests/fixtures/organisers/SPEC.md``
(section numbers below refer to it); the parity fixtures beside it hold their outputs.

=============  ===========================================================================
``l2r``        MDL-UzL/L2R ``evaluation/`` at HEAD (8847509, 2025-02-10): the current Learn2Reg
               evaluator, and what OncoReg was scored with. Ours adds the corrected extras.
``lumir24``    JHU-MedImage-Reg/LUMIR_L2R ``L2R_LUMIR_Eval`` (9b88e63): LUMIR 2024, ``-c1 -c2``.
``lumir25``    JHU-MedImage-Reg/LUMIR25_L2R25 ``LUMIR25_Evalution_GC`` (62d3ae4): LUMIR 2025,
               ``-l1 -s1 -s2 -s3``.
``remind2reg`` ReubenDo/ReMIND2Reg ``evaluation/`` (f1974de): ReMIND2Reg 2024 and 2025.
=============  ===========================================================================

Which rule set a task folder follows: :func:`rules_for` (also :attr:`learn2reg.task.Task.rules`);
a command line's ``--rules`` overrides it.

For a submission writer: :func:`disp_name` is the file name a prediction should write for a pair
under a rule set (accepted by that evaluator as it is), :func:`output_format` adds the array layout
(channel-last ``X x Y x Z x 3`` float32 voxels, which every rule set accepts; LUMIR also accepts
``3 x X x Y x Z``). :func:`disp_candidates` lists every name the evaluator looks for, in its order.

Case ids are ``SSSS_MMMM`` (subject, modality), as ``learn2reg.task`` and the evaluators' path
slices ``[-16:-12]`` / ``[-11:-7]`` give them.

Where we deliberately differ from an organiser (never in a number they report):

* a missing or unreadable file, a wrong shape, a field with NaN/Inf values: a ``DataError`` that
  names the file and, for a field, the name the rule set wants (LUMIR 2024's own message names the
  long name even where it requires the short one); their code raises, or scores NaN fields;
* ``remind2reg`` skips DSC/HD95 (and ``ndv``) methods with a warning without reading label maps
  (theirs reads and warps them, then ignores them); ``l2r`` refuses an ``ndv`` metric up front
  (HEAD fails in its aggregation); ``-o`` naming a folder writes a timestamped file under every rule
  set (only HEAD does);
* not reproduced: LUMIR's ``ndv`` branch overwriting the SDlogJ mask when a config has
  ``masked_evaluation`` and ``ndv`` before ``sdlogj`` (their code then fails on a shape mismatch;
  no shipped config does it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from learn2reg.io import DataError

if TYPE_CHECKING:
    from learn2reg.task import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rules:
    """One evaluator's rules (SPEC section 6, one column)."""

    name: str  # the --rules value and the output JSON's "rules"
    title: str  # who wrote it, where (for logs and the README)
    name_key: str  # config key whose value becomes the JSON "name": "task_name" or "name"
    # file names (SPEC 6 "short"/"long"): "0000-0001" = short allowed for fixed _0000 <- moving _0001
    # only; "same-or-0000-0001" = also for equal modalities; "none" = never
    short_pairs: str
    long_always: bool  # the long name is accepted for every pair (False: only where short is not)
    extensions: tuple[str, ...]  # looked for in this order
    npz_key: str | None  # the array name an .npz must use (None: any single array)
    npz_float32: bool  # an .npz is cast to float32 (L2R HEAD) instead of kept / float64
    channel_first: bool  # a field with shape[0] == 3 is transposed to X x Y x Z x 3
    # point files (SPEC 2.4/2.5): folder suffix between modalities other than equal or 0000 -> 0001:
    # "four-digit" = dest + min + max (4-digit ids) for every dest; "keypoints-int" = only for dest
    # "keypoints", as "keypoints{int}{int}"; "none" = the folder is always dest
    point_suffix: str
    point_fallback: bool  # ours: also look in "dest{int}{int}" (OncoReg's folders) when the first is absent
    tre: str  # "points" (CSV, cubic u at the points, mm) or "centroids" (label volumes, voxels)
    scored: frozenset[str]  # metrics computed
    ignored: frozenset[str]  # metrics silently skipped by the organiser's code (we warn)
    ndv_mask: str | None  # NDV mask image: "moving" (2024), "fixed" (2025), None (no NDV)
    aggregate: str  # metric list: "config" (method names), "third-case", "sorted-union" (SPEC 2.7/2.8)
    high_metrics: frozenset[str]  # metric types whose "30" is the 0.7 quantile
    high_names: frozenset[str]  # method names whose "30" is the 0.7 quantile
    dice_groups: tuple[tuple[str, str], ...]  # (config role, aggregate name) of the per-config DSC rows
    eval_version: str
    roles: tuple[str, ...]  # the command line's config flags, in run order
    extras: bool  # our corrected metrics (SDlogJ_true, HD95_mm, runtime, ...) may be added
    # the organisers' config files a task folder may hold, per flag: the parts of the name
    # "{PREFIX}_VAL_{part}_evaluation_config.json" ("" = "{PREFIX}_VAL_evaluation_config.json")
    # accepted, in order of preference; () = configs are derived from the task (l2r)
    config_files: tuple[tuple[str, tuple[str, ...]], ...] = ()


_LABEL_METRICS = frozenset({"dice", "hd95"})

L2R = Rules(
    name="l2r",
    title="MDL-UzL/L2R evaluation (HEAD 8847509, 2025-02-10; also OncoReg's)",
    name_key="task_name",
    short_pairs="0000-0001",
    long_always=True,
    extensions=(".npz", ".nii.gz"),
    npz_key=None,
    npz_float32=True,
    channel_first=False,
    point_suffix="four-digit",
    point_fallback=True,
    tre="points",
    scored=frozenset({"sdlogj", "dice", "hd95", "tre"}),
    ignored=frozenset(),
    ndv_mask=None,
    aggregate="config",
    high_metrics=frozenset({"sdlogj", "tre"}),
    high_names=frozenset(),
    dice_groups=(),
    eval_version="2.0",
    roles=("c",),
    extras=True,
)
LUMIR24 = Rules(
    name="lumir24",
    title="JHU-MedImage-Reg/LUMIR_L2R L2R_LUMIR_Eval (9b88e63, LUMIR 2024)",
    name_key="name",
    short_pairs="same-or-0000-0001",
    long_always=False,
    extensions=(".nii.gz",),
    npz_key="arr_0",
    npz_float32=False,
    channel_first=True,
    point_suffix="keypoints-int",
    point_fallback=False,
    tre="centroids",
    scored=frozenset({"sdlogj", "ndv", "dice", "hd95", "tre"}),
    ignored=frozenset(),
    ndv_mask="moving",
    aggregate="sorted-union",
    high_metrics=frozenset(),
    high_names=frozenset(),
    dice_groups=(),
    eval_version="2.0",
    roles=("c1", "c2"),
    extras=False,
    config_files=(("c1", ("Landmark", "LUMIR24_Landmark")), ("c2", ("Segmentation", "LUMIR24_Segmentation"))),  # their Docker's order
)
LUMIR25 = replace(  # what changed from 2024 (SPEC 3.2)
    LUMIR24,
    name="lumir25",
    title="JHU-MedImage-Reg/LUMIR25_L2R25 LUMIR25_Evalution_GC (62d3ae4, LUMIR 2025)",
    ndv_mask="fixed",
    high_names=frozenset({"TRE_lm"}),
    dice_groups=(("s1", "ID_dice"), ("s2", "OOD_dice"), ("s3", "MM_dice")),
    eval_version="3.0",
    roles=("l1", "s1", "s2", "s3"),
    config_files=(("l1", ("LUMIR24_Landmark", "Landmark")), ("s1", ("LUMIR24_Segmentation", "Segmentation")),
                  ("s2", ("HighField_Segmentation",)), ("s3", ("MultiModal_Segmentation",))),
)
REMIND2REG = Rules(
    name="remind2reg",
    title="ReubenDo/ReMIND2Reg evaluation (f1974de, ReMIND2Reg 2024/2025)",
    name_key="task_name",
    short_pairs="none",
    long_always=True,
    extensions=(".npz", ".nii.gz"),
    npz_key="arr_0",
    npz_float32=False,
    channel_first=False,
    point_suffix="none",
    point_fallback=False,
    tre="points",
    scored=frozenset({"sdlogj", "tre"}),
    ignored=frozenset({"dice", "hd95", "ndv"}),
    ndv_mask=None,
    aggregate="third-case",
    high_metrics=frozenset(),
    high_names=frozenset(),
    dice_groups=(),
    eval_version="2.0",
    roles=("c",),
    extras=False,
    config_files=(("c", ("",)),),
)
RULES: dict[str, Rules] = {r.name: r for r in (L2R, LUMIR24, LUMIR25, REMIND2REG)}
RULE_SETS = tuple(RULES)  # the rule set names, as a task folder and --rules name them
CHOICES = ("auto", *RULES)
LUMIR_DEFAULT = LUMIR25  # one LUMIR config (-c): the current edition


def get(rules: str | Rules) -> Rules:
    """A rule set by name (or itself); ``DataError`` for an unknown name."""
    if isinstance(rules, Rules):
        return rules
    if rules not in RULES:
        raise DataError(f"unknown rule set {rules!r} (choose from {', '.join(RULES)})")
    return RULES[rules]


# ----------------------------------------------------------------------------- file names


def _modalities(fixed_id: str, moving_id: str) -> tuple[str, str]:
    return fixed_id[-4:], moving_id[-4:]


def short_applies(rules: str | Rules, fixed_id: str, moving_id: str) -> bool:
    """Whether the short name ``disp_{fixS}_{movS}`` is accepted (``lumir*``: required) for the pair."""
    rules = get(rules)
    fm, mm = _modalities(fixed_id, moving_id)
    if rules.short_pairs == "0000-0001":
        return (fm, mm) == ("0000", "0001")
    if rules.short_pairs == "same-or-0000-0001":
        return fm == mm or (fm, mm) == ("0000", "0001")
    return False


def disp_stems(rules: str | Rules, fixed_id: str, moving_id: str) -> list[str]:
    """Accepted file stems (no extension) in the evaluator's lookup order."""
    rules = get(rules)
    short, long = f"disp_{fixed_id[:4]}_{moving_id[:4]}", f"disp_{fixed_id}_{moving_id}"
    if short_applies(rules, fixed_id, moving_id):
        return [short, long] if rules.long_always else [short]
    return [long]


def disp_candidates(rules: str | Rules, fixed_id: str, moving_id: str) -> list[str]:
    """Every accepted file name for the pair, in the evaluator's lookup order (the first that
    exists is used): each stem with each extension (``l2r``: short.npz, short.nii.gz, long...)."""
    rules = get(rules)
    return [stem + ext for stem in disp_stems(rules, fixed_id, moving_id) for ext in rules.extensions]


def disp_name(rules: str | Rules, fixed_id: str, moving_id: str) -> str:
    """The ``.nii.gz`` name a prediction should write for the pair under ``rules``: the long name
    ``disp_{fixS}_{fixM}_{movS}_{movM}.nii.gz`` where the evaluator always accepts it (``l2r``,
    ``remind2reg``), else the one it requires (``lumir*``: the short ``disp_{fixS}_{movS}.nii.gz``
    for equal modalities and ``0000 <- 0001``, the long one otherwise)."""
    rules = get(rules)
    stems = disp_stems(rules, fixed_id, moving_id)
    return (stems[-1] if rules.long_always else stems[0]) + ".nii.gz"


@dataclass(frozen=True)
class OutputFormat:
    """What a prediction writes for one pair: ``name`` in the submission folder, a float32 voxel
    displacement field in the fixed grid, channel-last ``X x Y x Z x 3`` unless ``channel_first``."""

    name: str
    channel_first: bool = False
    dtype: str = "float32"


def output_format(rules: str | Rules, fixed_id: str, moving_id: str) -> OutputFormat:
    """File name and layout for a pair. Channel-last is written for every rule set: all four
    evaluators accept it (``lumir*`` also take ``3 x X x Y x Z``; the others reject it)."""
    return OutputFormat(disp_name(rules, fixed_id, moving_id))


# ----------------------------------------------------------------------------- point files


def point_folders(rules: str | Rules, dest: str, fixed_id: str, moving_id: str) -> list[str]:
    """The folder names replacing ``images`` in the image path for the ``dest`` point files of a
    pair, first = the evaluator's own (SPEC 2.4/2.5); ``[dest]`` (the images' own folder, e.g.
    ``keypointsTr``) between equal modalities or ``0000 -> 0001``. Otherwise ``l2r`` looks in
    ``dest`` + both 4-digit modality ids (``keypoints00000001``) for every ``dest`` and adds
    OncoReg's ``keypoints01``-style folder (ids as integers, the older evaluator's name) as a
    fallback (HEAD itself fails there: SPEC 7.12); LUMIR's evaluators use the integer form for
    ``keypoints`` only; ReMIND2Reg's never (its T2 pairs' landmarks are in ``landmarksTr``)."""
    rules = get(rules)
    fm, mm = _modalities(fixed_id, moving_id)
    if fm == mm or (fm, mm) == ("0000", "0001") or rules.point_suffix == "none":
        return [dest]
    lo, hi = sorted((fm, mm))
    as_int = dest + str(int(lo)) + str(int(hi))
    if rules.point_suffix == "keypoints-int":
        return [as_int] if dest == "keypoints" else [dest]
    return [dest + lo + hi, as_int] if rules.point_fallback else [dest + lo + hi]


def point_extension(rules: Rules) -> str:
    """``.csv`` point lists, or ``.nii.gz`` landmark label volumes (``lumir*``)."""
    return ".nii.gz" if rules.tre == "centroids" else ".csv"


# ----------------------------------------------------------------------------- aggregation


def quantile(rules: Rules, name: str, metric: str) -> float:
    """The quantile behind an aggregate's ``"30"`` (SPEC 7.7): 0.7 where the rule set treats
    larger as worse (``l2r``: metric sdlogj/tre; ``lumir25``: the method named ``TRE_lm``), else 0.3."""
    return 0.7 if metric in rules.high_metrics or name in rules.high_names else 0.3


# ----------------------------------------------------------------------------- selection


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
        return get(told).name
    names = {task.name.lower(), *(p.lower() for p in task.image_prefixes)}
    if any(n.startswith("remind2reg") for n in names):
        return REMIND2REG.name
    if any(n.startswith("lumir") for n in names):
        if not list(task.root.glob("LUMIR25_*")) and list(task.root.glob("LUMIR_VAL_*_evaluation_config.json")):
            return LUMIR24.name
        return LUMIR25.name
    return L2R.name



def select(requested: str, roles: Sequence[str], configs: Sequence[Mapping[str, Any]]) -> tuple[Rules, str]:
    """The rule set for a run and why (for the log).

    ``requested``: ``auto`` or a rule set name (an explicit choice wins). ``roles``: the config
    flags given (``c``; ``c1``/``c2``; ``l1``/``s1``/``s2``/``s3``; none for a derived config);
    ``configs``: their parsed JSON. Auto: LUMIR 2024's flags -> ``lumir24``; LUMIR 2025's ->
    ``lumir25``; a config in LUMIR's format (``name`` without ``task_name``, or an ``ndv`` metric)
    -> ``lumir25``, the current edition (``--rules lumir24`` for 2024); ``task_name`` ReMIND2Reg
    -> ``remind2reg``; anything else -> ``l2r``.
    """
    if requested != "auto":
        return get(requested), f"--rules {requested}"
    if set(roles) & {"c1", "c2"}:
        return LUMIR24, "-c1/-c2 is LUMIR 2024's command line"
    if set(roles) & {"l1", "s1", "s2", "s3"}:
        return LUMIR25, "-l1/-s1/-s2/-s3 is LUMIR 2025's command line"
    for raw in configs:
        methods = raw.get("evaluation_methods")
        if isinstance(methods, list) and any(isinstance(m, dict) and m.get("metric") == "ndv" for m in methods):
            return LUMIR_DEFAULT, f"an 'ndv' metric is LUMIR's; {LUMIR_DEFAULT.name}, the current edition (--rules lumir24 for 2024)"
        if "name" in raw and "task_name" not in raw:
            return LUMIR_DEFAULT, f"'name' without 'task_name' is LUMIR's config; {LUMIR_DEFAULT.name}, the current edition (--rules lumir24 for 2024)"
        if raw.get("task_name") == "ReMIND2Reg":
            return REMIND2REG, "task_name ReMIND2Reg"
    return L2R, "the Learn2Reg evaluator (no LUMIR or ReMIND2Reg marker in the configuration)"


def config_name(rules: Rules, raw: Mapping[str, Any], where: str, default: str) -> str:
    """The JSON ``name`` from a config under ``rules``: its ``name_key``. ``l2r`` falls back to
    ``name`` then ``default`` (the file stem); the organiser rule sets require their key, as the
    organisers' code does, and a missing one is a ``DataError`` saying which key and which rules."""
    value = raw.get(rules.name_key)
    if value is None and rules is L2R:
        value = raw.get("name", default)
    if not isinstance(value, str):
        hint = ""
        if rules.name_key == "name" and "task_name" in raw:
            hint = " (it has 'task_name': an L2R-style config; --rules l2r or remind2reg)"
        elif rules.name_key == "task_name" and "name" in raw:
            hint = " (it has 'name': a LUMIR config; --rules lumir24 or lumir25)"
        raise DataError(f"{where}: the {rules.name} rules read the task name from the config key {rules.name_key!r}, which is missing or not a string{hint}")
    return value
