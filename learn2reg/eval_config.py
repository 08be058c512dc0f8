"""Evaluation configuration: the official ``{TASK}_VAL_evaluation_config.json``, or derived from a task.

Official format (../shared/docs/learn2reg.md section 1): ``task_name``, ``evaluation_methods`` = list of
``{name, metric}`` with metric ``sdlogj``, ``dice``/``hd95`` (+ ``labels``) or ``tre`` (+ ``dest``:
``keypoints`` / ``landmarks``), ``expected_shape`` ``[X, Y, Z, 3]``, ``eval_pairs`` ``[{fixed,
moving}]`` (image paths relative to the data folder), optional ``masked_evaluation`` and
``eval_config_version`` (0.2 or 0.3 in the organisers' files; unknown keys are ignored with a
warning, as the official script ignores them). LUMIR's configs name the task under ``name``
instead of ``task_name`` and add the metric ``ndv``; which key gives the result's name is the
rule set's (``learn2reg.rules``). Ground-truth files are found the official way: the image path
with ``images`` replaced by ``labels`` / ``masks`` / the TRE ``dest`` (and ``.nii.gz`` by ``.csv``
for point lists; LUMIR's landmarks are label volumes and keep ``.nii.gz``); for TRE between
different modalities (other than ``0000 -> 0001``) the ``dest`` folder gets a modality suffix,
per rule set (``learn2reg.rules.point_folders``).

Without a config file, :func:`derive_config` builds the same thing from the task's dataset
(``learn2reg.task.load_task``) as the organiser of a rule set would: ``l2r``: DSC and HD95 over
``Task.labels`` when the pairs have label maps, TRE per point kind (each pair's own point folder,
:meth:`Task.pair_points`), SDlogJ always, masked when fixed masks exist; ``remind2reg``: SDlogJ
and ``TRE_lm``; ``lumir*``: NDV, DSC/HD95 with label 0, ``TRE_lm`` from the landmark volumes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learn2reg import rules as rulesets
from learn2reg.io import DataError, load_nifti, read_json, read_nifti_header
from learn2reg.task import Case, Pair, Task, derived_path, load_task, path_within

log = logging.getLogger(__name__)

METRICS = ("sdlogj", "dice", "hd95", "tre", "ndv")
POINT_DESTS = ("landmarks", "keypoints")
_KNOWN_KEYS = {"task_name", "name", "evaluation_methods", "expected_shape", "eval_pairs", "masked_evaluation", "eval_config_version"}
_ID_RE = re.compile(r"(\d{4})_(\d{4})\.nii\.gz$")
# Names the official configs use for what we derive.
DERIVED_NAMES = {"sdlogj": "LogJacDetStd", "dice": "DSC", "hd95": "HD95", "landmarks": "TRE_lm", "keypoints": "TRE_kp"}


@dataclass(frozen=True)
class Method:
    """One evaluation method: ``metric`` in :data:`METRICS`; ``labels`` for dice/hd95; ``dest`` for tre."""

    name: str
    metric: str
    labels: tuple[int, ...] = ()
    dest: str | None = None


@dataclass(frozen=True)
class EvalPair:
    """A pair to evaluate with every ground-truth path resolved (``None`` = not available)."""

    fixed: str  # case id "SSSS_MMMM"
    moving: str
    fixed_image: Path
    moving_image: Path
    fixed_label: Path | None = None
    moving_label: Path | None = None
    fixed_mask: Path | None = None
    points: tuple[tuple[str, Path, Path], ...] = ()  # (dest, fixed csv, moving csv)

    @property
    def key(self) -> str:
        """The official case key ``SSSS_MMMM<--SSSS_MMMM``."""
        return Pair(self.fixed, self.moving).key

    def point_files(self, dest: str) -> tuple[Path, Path] | None:
        for d, f, m in self.points:
            if d == dest:
                return f, m
        return None


@dataclass(frozen=True)
class EvalConfig:
    """A resolved evaluation configuration."""

    name: str
    methods: tuple[Method, ...]
    expected_shape: tuple[int, int, int, int]
    pairs: tuple[EvalPair, ...]
    masked: bool = False
    require_masks: bool = False  # derived configs: a missing fixed mask is an error, not the official warning

    def has(self, metric: str) -> bool:
        return any(m.metric == metric for m in self.methods)

    def to_official(self, data_dir: str | Path) -> dict[str, Any]:
        """The official JSON form (pairs as ``./...`` image paths relative to ``data_dir``)."""
        root = Path(data_dir).resolve()
        methods = []
        for m in self.methods:
            entry: dict[str, Any] = {"name": m.name, "metric": m.metric}
            if m.metric in ("dice", "hd95"):
                entry["labels"] = list(m.labels)
            if m.metric == "tre":
                entry["dest"] = m.dest
            methods.append(entry)
        pairs = [{"fixed": _rel(p.fixed_image, root), "moving": _rel(p.moving_image, root)} for p in self.pairs]
        return {
            "task_name": self.name,
            "evaluation_methods": methods,
            "expected_shape": list(self.expected_shape),
            "eval_pairs": pairs,
            "masked_evaluation": self.masked,
            "eval_config_version": 0.2,
        }


def build_config(
    task_name: str,
    shape: Sequence[int],
    pairs: Sequence[Mapping[str, str]],
    *,
    label_ids: Sequence[int] = (),
    points: Sequence[str] = (),
    masked: bool = False,
) -> dict[str, Any]:
    """An official-format ``{TASK}_VAL_evaluation_config.json`` (what generators write beside a task):
    SDlogJ, TRE per point kind in ``points`` (``landmarks``, ``keypoints``), DSC and HD95 over
    ``label_ids``; ``pairs`` as ``{"fixed": "./imagesTr/...", "moving": ...}``."""
    methods: list[dict[str, Any]] = [{"name": DERIVED_NAMES["sdlogj"], "metric": "sdlogj"}]
    methods += [{"name": DERIVED_NAMES[dest], "metric": "tre", "dest": dest} for dest in points]
    if label_ids:
        ids = [int(i) for i in label_ids]
        methods += [{"name": DERIVED_NAMES[m], "metric": m, "labels": ids} for m in ("dice", "hd95")]
    return {
        "task_name": task_name,
        "evaluation_methods": methods,
        "expected_shape": [*(int(s) for s in shape), 3],
        "eval_pairs": [dict(p) for p in pairs],
        "eval_config_version": 0.2,
        "masked_evaluation": masked,
    }


def _rel(path: Path, root: Path) -> str:
    for candidate in (path, path.resolve()):  # as written (a symlink in the folder), else where it leads
        if candidate.is_relative_to(root):
            return "./" + candidate.relative_to(root).as_posix()
    return str(path)


def read_config(path: str | Path, data_dir: str | Path, rules: rulesets.Rules = rulesets.L2R) -> EvalConfig:
    """Read an official evaluation config; ``DataError`` naming the file lists every problem."""
    path = Path(path)
    raw = read_json(path)
    return config_from_dict(raw, data_dir, where=str(path), rules=rules)


def config_from_dict(raw: Any, data_dir: str | Path, where: str = "config", rules: rulesets.Rules = rulesets.L2R) -> EvalConfig:
    """Validate an official-format config dict and resolve its ground-truth paths under ``rules``
    (its point-folder rule, and the config key that names the task)."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: must be a JSON object")
    problems: list[str] = []
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        log.warning("%s: ignoring unknown keys %s", where, unknown)
    methods = _methods(raw.get("evaluation_methods"), problems)
    shape = raw.get("expected_shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(s, int) and s > 0 for s in shape) and shape[3] == 3):
        problems.append(f"expected_shape must be [X, Y, Z, 3] of positive integers, got {shape!r}")
    root = Path(data_dir).resolve()
    masked = raw.get("masked_evaluation", False)
    if not isinstance(masked, bool):  # a string "false" would be truthy
        problems.append(f"masked_evaluation must be true or false, got {masked!r}")
    if not isinstance(raw.get("task_name", ""), str):
        problems.append(f"task_name must be a string, got {raw['task_name']!r}")
    pairs = []
    entries = raw.get("eval_pairs")
    if not isinstance(entries, list) or not entries:
        problems.append("eval_pairs must be a non-empty list of {fixed, moving}")
        entries = []
    for i, entry in enumerate(entries):
        pair = _official_pair(entry, root, methods, problems, f"eval_pairs[{i}]", rules)
        if pair is not None:
            pairs.append(pair)
    if problems:
        raise DataError(f"{where}: invalid evaluation config:\n  " + "\n  ".join(problems))
    name = rulesets.config_name(rules, raw, where, Path(where).stem)
    return EvalConfig(name, tuple(methods), tuple(shape), tuple(pairs), masked)  # type: ignore[arg-type]


def _methods(entries: Any, problems: list[str]) -> list[Method]:
    if isinstance(entries, dict):
        problems.append(
            "evaluation_methods is an object ({metric: labels or true}), the organisers' draft format of May 2022 "
            "(eval_config_version 0.1); their files since list {name, metric[, labels | dest]} entries: use the "
            "current {TASK}_VAL_evaluation_config.json from github.com/MDL-UzL/L2R (evaluation/evaluation_configs)"
        )
        return []
    if not isinstance(entries, list) or not entries:
        problems.append("evaluation_methods must be a non-empty list")
        return []
    methods, names = [], set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "name" not in e or e.get("metric") not in METRICS:
            problems.append(f"evaluation_methods[{i}]: needs a name and a metric in {METRICS}, got {e!r}")
            continue
        if e["name"] in names:
            problems.append(f"evaluation_methods[{i}]: method names must be unique ({e['name']!r} repeats)")
        names.add(e["name"])
        labels: tuple[int, ...] = ()
        if e["metric"] in ("dice", "hd95"):
            raw = e.get("labels")
            if not isinstance(raw, list) or not raw or not all(_is_int(v) for v in raw):
                problems.append(f"evaluation_methods[{i}] ({e['name']}): labels must be a non-empty list of integers")
                continue
            labels = tuple(int(v) for v in raw)
        dest = e.get("dest")
        if e["metric"] == "tre" and not (isinstance(dest, str) and dest):
            problems.append(f"evaluation_methods[{i}] ({e['name']}): tre needs 'dest' (keypoints or landmarks)")
            continue
        methods.append(Method(str(e["name"]), e["metric"], labels, dest if e["metric"] == "tre" else None))
    return methods


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _official_pair(
    entry: Any, root: Path, methods: list[Method], problems: list[str], where: str, rules: rulesets.Rules
) -> EvalPair | None:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("fixed", "moving")):
        problems.append(f"{where}: needs 'fixed' and 'moving' image paths")
        return None
    ids = []
    for role in ("fixed", "moving"):
        match = _ID_RE.search(entry[role])
        if not match:
            problems.append(f"{where}: {role} path {entry[role]!r} does not end in _SSSS_MMMM.nii.gz")
            return None
        ids.append(f"{match[1]}_{match[2]}")
    paths = {}
    for key, rel in (
        ("fixed_image", entry["fixed"]),
        ("moving_image", entry["moving"]),
        ("fixed_label", entry["fixed"].replace("images", "labels")),
        ("moving_label", entry["moving"].replace("images", "labels")),
        ("fixed_mask", entry["fixed"].replace("images", "masks")),
    ):
        paths[key] = _inside(root, rel, problems, where)
    points: list[tuple[str, Path, Path]] = []
    for m in methods:
        if m.metric == "tre" and m.dest is not None and m.dest not in [p[0] for p in points]:
            folders = rulesets.point_folders(rules, m.dest, ids[0], ids[1])
            ext = rulesets.point_extension(rules)
            fixed_csv, moving_csv = (_point_path(root, entry[r], folders, ext, problems, where) for r in ("fixed", "moving"))
            if fixed_csv is not None and moving_csv is not None:
                points.append((m.dest, fixed_csv, moving_csv))
    if any(v is None for k, v in paths.items() if k.endswith("image")):
        return None
    return EvalPair(ids[0], ids[1], points=tuple(points), **paths)  # type: ignore[arg-type]


def _inside(root: Path, rel: str, problems: list[str], where: str) -> Path | None:
    """A config path under ``root`` (``learn2reg.task.path_within``), or a problem."""
    path = path_within(root, rel)
    if path is None:
        problems.append(f"{where}: path {rel!r} is outside the data folder {root}")
    return path


def _point_path(root: Path, image_rel: str, folders: list[str], ext: str, problems: list[str], where: str) -> Path | None:
    """Official point-file rule: ``images`` replaced by the folder (``rules.point_folders``: the
    first that exists, else the first), ``.nii.gz`` by ``ext`` (``.csv``; label volumes keep it)."""
    found = [_inside(root, image_rel.replace("images", d).replace(".nii.gz", ext), problems, where) for d in folders]
    candidates = [c for c in found if c is not None]
    for c in candidates:
        if c.exists():
            return c
    return candidates[0] if candidates else None


def derive_config(data_dir: str | Path | Task, split: str = "val", rules: str | rulesets.Rules = rulesets.L2R) -> EvalConfig:
    """Evaluation config from the task's dataset description (either layout), as the organiser of
    ``rules`` would write one.

    ``l2r``: DSC/HD95 over ``Task.labels`` (or the label ids found) when any pair has a label
    map, TRE per point kind when any pair has point files (a pair's own, e.g. OncoReg's
    ``keypoints01Tr``: :meth:`Task.pair_points`), SDlogJ always, masked when any fixed image has
    a mask. ``remind2reg``: SDlogJ (unmasked) and ``TRE_lm`` from the landmark CSVs, as its
    config. ``lumir24``/``lumir25``: NDV always, DSC/HD95 over the labels **including 0** when
    any pair has label maps, ``TRE_lm`` from the landmark volumes (:attr:`Case.landmark_volume`)
    when any image has one: one config over every pair (the organisers split their pairs into a
    segmentation and a landmark config, each with its own ground truth: put those files in the
    folder and they are used instead, see ``evaluation.evaluate.plan``).

    A metric is never dropped for some pairs: the files a pair lacks stay in the config under
    their official names, and the evaluator lists every missing one at once
    (``evaluate.ground_truth_problems``). Pair entries of ``split`` that could not be read raise
    ``DataError`` naming each.
    """
    rules = rulesets.get(rules)
    task = data_dir if isinstance(data_dir, Task) else load_task(data_dir)
    unreadable = task.split_problems(split)
    if unreadable:
        raise DataError(f"{task.root}: {len(unreadable)} {split} pair(s) cannot be read:\n  " + "\n  ".join(unreadable))
    pairs = task.pairs.get(split, ())
    if not pairs:
        raise DataError(f"{task.root}: task {task.name} has no {split} pairs")
    cases = [(task.case(p.fixed), task.case(p.moving)) for p in pairs]
    lumir = rules.tre == "centroids"
    kinds = ("landmarks",) if rules is rulesets.REMIND2REG else POINT_DESTS
    points = {kind: [_pair_points(task, pair, kind, rules, lumir) for pair in pairs] for kind in kinds}
    has = {kind: any(f is not None or m is not None for f, m, _ in found) for kind, found in points.items()}
    has["label"] = rules is not rulesets.REMIND2REG and any(c.label is not None for pair in cases for c in pair)
    has["mask"] = masked = rules is rulesets.L2R and any(f.mask is not None for f, _ in cases)  # fixed masks only
    methods = [Method("Non-diffeomorphic Volumes", "ndv")] if lumir else [Method(DERIVED_NAMES["sdlogj"], "sdlogj")]
    if has["label"]:
        labels = tuple(sorted(task.labels)) or _label_ids(cases)
        labels = (0, *labels) if lumir and 0 not in labels else labels  # LUMIR's DSC counts the background
        methods += [Method(DERIVED_NAMES["dice"], "dice", labels), Method(DERIVED_NAMES["hd95"], "hd95", labels)]
    elif task.labels:
        log.info("%s: the task names labels but no %s pair has a label map: no DSC/HD95", task.root, split)
    methods += [Method(DERIVED_NAMES[dest], "tre", dest=dest) for dest in POINT_DESTS if has.get(dest)]
    eval_pairs = []
    for i, (pair, (fixed, moving)) in enumerate(zip(pairs, cases, strict=True)):
        files = tuple((d, f or official[0], m or official[1]) for d in POINT_DESTS if has.get(d) for f, m, official in [points[d][i]])
        eval_pairs.append(_task_pair(pair, fixed, moving, has, files))
    shape = task.shape or read_nifti_header(eval_pairs[0].fixed_image).shape
    return EvalConfig(task.name, tuple(methods), (*shape, 3), tuple(eval_pairs), masked, require_masks=masked)


def _pair_points(task: Task, pair: Pair, kind: str, rules: rulesets.Rules, volumes: bool) -> tuple[Path | None, Path | None, tuple[Path, Path]]:
    """A pair's ``kind`` point files (``None`` where absent) and their official paths (for a
    missing one): CSVs per :meth:`Task.pair_points`, or LUMIR's landmark volumes (``volumes``)."""
    fixed, moving = task.case(pair.fixed), task.case(pair.moving)
    if volumes:
        found = (fixed.landmark_volume, moving.landmark_volume) if kind == "landmarks" else (None, None)
        return (*found, tuple(derived_path(c.image, "landmarks", points=False) for c in (fixed, moving)))  # type: ignore[return-value]
    folder = rulesets.point_folders(rules, kind, pair.fixed, pair.moving)[0]
    f, m = task.pair_points(pair, kind, rules.name)
    return f, m, (derived_path(fixed.image, folder, points=True), derived_path(moving.image, folder, points=True))


def _label_ids(cases: list[tuple[Case, Case]]) -> tuple[int, ...]:
    """Label ids of the pairs' first label map (a task whose description names no labels)."""
    path = next(c.label for pair in cases for c in pair if c.label is not None)
    assert path is not None  # the caller saw a label map
    values = np.unique(load_nifti(path, dtype=None, copy=False)[0])
    return tuple(int(v) for v in values if v != 0)


def _task_pair(pair: Pair, fixed: Case, moving: Case, has: dict[str, bool], points: tuple[tuple[str, Path, Path], ...]) -> EvalPair:
    """A pair's ground truth: what the cases have, else the official file name where the task
    has that kind (``has``: label, mask); ``points``: (dest, fixed file, moving file)."""

    def gt(case: Case, kind: str, folder: str) -> Path | None:
        path = getattr(case, kind)
        return path if path is not None or not has[kind] else derived_path(case.image, folder)

    return EvalPair(
        pair.fixed,
        pair.moving,
        fixed.image,
        moving.image,
        gt(fixed, "label", "labels"),
        gt(moving, "label", "labels"),
        gt(fixed, "mask", "masks"),
        points,
    )
