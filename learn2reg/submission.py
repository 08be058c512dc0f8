"""Submissions: finding, validating and loading displacement fields; the runtime manifest.

Two formats (../shared/docs/learn2reg.md section 1; the field contract is ``learn2reg.contract``):

* ``l2r`` (current): ``disp_{fixS}_{fixM}_{movS}_{movM}.nii.gz`` or ``.npz`` (a single array),
  ``X x Y x Z x 3``, voxel units, full resolution. Which names, extensions, ``.npz`` keys and
  layouts are accepted is the rule set's (``learn2reg.rules``): under the default ``l2r`` rules
  (MDL-UzL/L2R) the short name ``disp_{fixS}_{movS}`` is accepted only for ``_0000 -> _0001``
  pairs, ``.npz`` is looked for before ``.nii.gz`` and the short name before the long one;
  ``lumir24``/``lumir25`` want ``.nii.gz`` only, the short name for equal modalities and
  ``0000 -> 0001`` (the long one otherwise) and also accept ``3 x X x Y x Z``; ``remind2reg``
  wants the long name, ``.npz`` (key ``arr_0``) before ``.nii.gz``.
* ``l2r2020``: ``disp_{fixS}_{movS}.npz`` (key ``arr_0``, any other name is refused, as the
  2020 evaluator reads ``["arr_0"]``), **float16**, channels first
  ``3 x X/2 x Y/2 x Z/2`` (upsampled exactly as the 2020 evaluator, ``contract.from_2020``), or
  ``3 x X x Y x Z`` at full resolution (task 4): decided by comparing with the fixed image shape.
  Files sit in the submission folder or in its ``task_NN`` sub-folder.

Runtime manifest (written by the prediction stage next to the fields, ``runtimes.json``)::

    {"device": "cuda:0 NVIDIA ...",      # where the fields were predicted
     "checkpoint": "runs/x/best.pt",     # which weights
     "config_hash": "sha256...",         # hash of the resolved run config
     "runtimes": {"SSSS_MMMM<--SSSS_MMMM": {"total_s": 1.23,     # load + predict + write, seconds
                                             "network_s": 0.41}},  # network forward pass only, seconds
      "memory": {"device": "cpu", "estimate_gb": 2.1, "peak_gb": 1.9, ...},  # optional: estimated and
                                                                            # measured peak memory
     "network_grid": {...},              # optional: the grid the network ran on (rule, per pair)
     "affine": {"SSSS_MMMM<--SSSS_MMMM": {"action": "accepted", "reasons": [], "fov": [...]}}}
                                         # optional: the pre-alignment's outcome per pair (pipeline.affine.bounds)

``network_grid`` (written by ``pipeline.prediction.predict``, see ``pipeline.prediction.scale``):
``rule`` (the run's trained spacing, or the scale given), ``trained_spacing_mm``, and ``pairs``:
per pair the network ``grid``, its ``spacing_mm`` and ``scale`` (image spacing / network spacing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learn2reg import contract
from learn2reg import rules as rulesets
from learn2reg.eval_config import EvalConfig, EvalPair
from learn2reg.io import DataError, load_nifti, read_json, write_json
from learn2reg.task import Layout, Task

MANIFEST_NAME = "runtimes.json"
KEY_2020 = "arr_0"  # the array name of a 2020 .npz (np.savez's default); current .npz: any single name
_TASK_DIR_RE = re.compile(r"^task_\d{2}$")


# ----------------------------------------------------------------------------- manifest

_MANIFEST_KEYS = ("device", "checkpoint", "config_hash", "runtimes")
_OPTIONAL_KEYS = ("memory", "network_grid", "affine")  # objects: memory estimate and peak; the network's grid; pre-alignments


@dataclass(frozen=True)
class CaseRuntime:
    """Seconds spent on one pair: ``total_s`` end to end, ``network_s`` in the network alone;
    ``stages`` holds any other ``*_s`` timings the prediction stage recorded (e.g. ``affine_s``)."""

    total_s: float
    network_s: float
    stages: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """The prediction stage's ``runtimes.json`` (schema in the module docstring)."""

    device: str
    checkpoint: str
    config_hash: str
    runtimes: dict[str, CaseRuntime]
    memory: dict[str, Any] | None = None  # estimated and measured peak memory (pipeline.model.memory_check)
    network_grid: dict[str, Any] | None = None  # the grid the network ran on (pipeline.prediction.scale)
    affine: dict[str, Any] | None = None  # per pair: the pre-alignment's action, reasons, fields of view

    def to_json(self) -> dict[str, Any]:
        runtimes = {k: {"total_s": r.total_s, "network_s": r.network_s, **r.stages} for k, r in self.runtimes.items()}
        out = {"device": self.device, "checkpoint": self.checkpoint, "config_hash": self.config_hash, "runtimes": runtimes}
        extra = {k: v for k, v in (("memory", self.memory), ("network_grid", self.network_grid), ("affine", self.affine)) if v is not None}
        return {**out, **extra}


def manifest_from_json(raw: Any, where: str = "runtime manifest") -> Manifest:
    """Validate the JSON form; ``DataError`` naming ``where`` lists every problem.

    Top level: ``device``, ``checkpoint``, ``config_hash`` (strings) and ``runtimes``, optionally
    ``memory``, ``network_grid`` and ``affine`` (objects); per pair: non-negative finite ``total_s`` and
    ``network_s``, optional other ``*_s`` numbers.
    """
    if not isinstance(raw, dict):
        raise DataError(f"{where}: runtime manifest must be a JSON object")
    allowed = _MANIFEST_KEYS + _OPTIONAL_KEYS
    problems = [f"unknown key {k!r} (allowed: {', '.join(allowed)})" for k in raw if k not in allowed]
    problems += [f"{k!r} must be an object" for k in _OPTIONAL_KEYS if k in raw and not isinstance(raw[k], dict)]
    problems += [f"{k!r} must be a string" for k in _MANIFEST_KEYS[:3] if not isinstance(raw.get(k), str)]
    entries = raw.get("runtimes")
    if not isinstance(entries, dict):
        problems.append("'runtimes' must be an object keyed SSSS_MMMM<--SSSS_MMMM")
        entries = {}
    runtimes: dict[str, CaseRuntime] = {}
    for key, entry in entries.items():
        ok = isinstance(entry, dict) and {"total_s", "network_s"} <= set(entry)
        ok = ok and all(k.endswith("_s") and _seconds(v) for k, v in entry.items())
        if not ok:
            problems.append(f"runtimes[{key!r}] needs non-negative seconds total_s, network_s (other keys *_s), got {entry!r}")
            continue
        stages = {k: float(v) for k, v in entry.items() if k not in ("total_s", "network_s")}
        runtimes[key] = CaseRuntime(float(entry["total_s"]), float(entry["network_s"]), stages)
    if problems:
        raise DataError(f"{where}: invalid runtime manifest:\n  " + "\n  ".join(problems))
    return Manifest(raw["device"], raw["checkpoint"], raw["config_hash"], runtimes, raw.get("memory"), raw.get("network_grid"), raw.get("affine"))


def _seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def write_manifest(path: str | Path, manifest: Manifest | dict[str, Any]) -> Path:
    """Validate and write a manifest atomically to ``path`` (a folder gets ``runtimes.json``);
    accepts a :class:`Manifest` or its JSON form; returns the file written."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not isinstance(manifest, Manifest):
        manifest = manifest_from_json(manifest, str(path))
    write_json(path, manifest.to_json())
    return path


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file (or a folder's ``runtimes.json``) -> :class:`Manifest`."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    return manifest_from_json(read_json(path), str(path))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a manifest -> its JSON form (plain dicts, numbers as floats)."""
    return load_manifest(path).to_json()


# ----------------------------------------------------------------------------- locating fields


def submission_shape(task: Task, fixed_shape: Sequence[int]) -> tuple[int, int, int]:
    """The grid a task's fields are submitted on, fixed by the task, not by a configuration:
    the fixed image grid, except Learn2Reg 2020 tasks 1-3 (folders ``task_01`` .. ``task_03``,
    and any other 2020-layout folder), which take half of it; 2020 task 4 (``task_04``) is full."""
    shape = tuple(int(n) for n in fixed_shape[:3])
    if task.layout != Layout.L2R2020 or task.root.name == "task_04":
        return shape  # type: ignore[return-value]
    if any(n % 2 for n in shape):
        raise DataError(f"{task.root}: the 2020 half-resolution format needs even image sizes, got {shape}")
    return tuple(n // 2 for n in shape)  # type: ignore[return-value]


def l2r_names(pair: EvalPair, rules: rulesets.Rules = rulesets.L2R) -> list[str]:
    """Candidate file names of a current-format field under ``rules``, in their lookup order."""
    return rulesets.disp_candidates(rules, pair.fixed, pair.moving)


def field_folder(disp_dir: Path, fmt: str, task_folder: str | None = None) -> Path:
    """Folder holding the fields: ``disp_dir`` itself, or for 2020 submissions its ``task_NN``
    sub-folder: ``task_folder`` if that exists (e.g. the data folder's name), else the only one."""
    if fmt != Layout.L2R2020 or not disp_dir.is_dir():
        return disp_dir
    if task_folder and (disp_dir / task_folder).is_dir():
        return disp_dir / task_folder
    subs = sorted(p for p in disp_dir.iterdir() if p.is_dir() and _TASK_DIR_RE.match(p.name))
    return subs[0] if len(subs) == 1 else disp_dir


def detect_format(disp_dir: Path) -> str:
    """``l2r2020`` if the submission has ``task_NN`` folders or only 2020-style names, else ``l2r``."""
    if not disp_dir.is_dir():
        return Layout.L2R
    if any(p.is_dir() and _TASK_DIR_RE.match(p.name) for p in disp_dir.iterdir()):
        return Layout.L2R2020
    names = [p.name for p in disp_dir.glob("disp_*")]
    if names and all(re.fullmatch(r"disp_\d{4}_\d{4}\.npz", n) for n in names):
        return _npz_format(disp_dir / names[0])
    return Layout.L2R


def _npz_format(path: Path) -> str:
    try:
        shape, _ = npz_header(path)
    except DataError:
        return Layout.L2R
    return Layout.L2R2020 if len(shape) == 4 and shape[0] == 3 and shape[-1] != 3 else Layout.L2R


def locate_fields(
    folder: Path, pairs: Sequence[EvalPair], fmt: str, rules: rulesets.Rules = rulesets.L2R
) -> tuple[dict[str, Path], list[str]]:
    """Map every pair key to its field file; problems list every missing file at once, naming
    the file(s) the rule set wants and any file of the pair it does not accept (another rule
    set's name or extension)."""
    found: dict[str, Path] = {}
    problems = []
    for pair in pairs:
        names = [contract.disp_filename_2020(pair.fixed, pair.moving)] if fmt == Layout.L2R2020 else l2r_names(pair, rules)
        hit = next((folder / n for n in names if (folder / n).is_file()), None)
        if hit is not None:
            found[pair.key] = hit
            continue
        text = f"{folder}: missing displacement field for {pair.key}: expected {' or '.join(names)}"
        if fmt != Layout.L2R2020:
            text += f" ({rules.name} rules)"
            others = [n for n in _any_rules_names(pair) if n not in names and (folder / n).is_file()]
            if others:
                text += f"; found {', '.join(others)}, which the {rules.name} rules do not accept for this pair"
        problems.append(text)
    return found, problems


def _any_rules_names(pair: EvalPair) -> list[str]:
    """Every name some rule set accepts for the pair, with either extension."""
    stems = dict.fromkeys(s for r in rulesets.RULES.values() for s in rulesets.disp_stems(r, pair.fixed, pair.moving))
    stems.update(dict.fromkeys([f"disp_{pair.fixed[:4]}_{pair.moving[:4]}", f"disp_{pair.fixed}_{pair.moving}"]))
    return [stem + ext for stem in stems for ext in (".npz", ".nii.gz")]


# ----------------------------------------------------------------------------- loading / checking


def npz_header(path: Path, key: str | None = None, owner: str = "2020 fields") -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the single array in an ``.npz`` without reading its data; ``key``
    (e.g. ``arr_0``) is the name that array must have, any name if ``None``."""
    import zipfile  # here: only .npz submissions need it

    try:
        with zipfile.ZipFile(path) as zf:
            members = [n for n in zf.namelist() if n.endswith(".npy")]
            if len(members) != 1:
                raise DataError(f"{path}: .npz must hold exactly one array, found {len(members)}")
            _check_key(path, members[0].removesuffix(".npy"), key, owner)
            with zf.open(members[0]) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
    except DataError:  # a ValueError too: ours, already naming the file
        raise
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DataError(f"{path}: unreadable .npz ({type(exc).__name__}: {exc})") from exc
    return tuple(shape), np.dtype(dtype)


def _check_key(path: Path, found: str, expected: str | None, owner: str = "2020 fields") -> None:
    if expected is not None and found != expected:
        raise DataError(
            f"{path}: the array is named {found!r}; {owner} must be stored under {expected!r} "
            f"(np.savez(path, {expected}=field))"
        )


def _load_npz(path: Path, key: str | None = None, owner: str = "2020 fields") -> np.ndarray:
    """The single array of an ``.npz``; ``key``: the name it must have (any if ``None``)."""
    import zipfile  # here: only .npz submissions need it (np.load imports it too)

    try:
        with np.load(path, allow_pickle=False) as data:
            if len(data.files) != 1:
                raise DataError(f"{path}: .npz must hold exactly one array, found {len(data.files)}")
            _check_key(path, data.files[0], key, owner)
            return data[data.files[0]]
    except DataError:  # a ValueError too: ours, already naming the file
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable .npz ({type(exc).__name__}: {exc})") from exc


def load_field(
    path: Path, fmt: str, expected_shape: tuple[int, ...], rules: rulesets.Rules = rulesets.L2R, keep_float64: bool = False
) -> np.ndarray:
    """Load and validate one submitted field -> contract field ``X x Y x Z x 3`` float32.

    ``expected_shape`` is ``(X, Y, Z, 3)`` (the fixed grid). ``rules``: the ``.npz`` key and
    dtype rule and whether a ``3 x X x Y x Z`` field is transposed (``lumir*``: when
    ``shape[0] == 3``, their test, so an ``X == 3`` channel-last field would be transposed too).
    ``keep_float64``: a float64 field stays float64 (the organisers compute in float64; every
    other stored type is exact in float32), except an ``.npz`` under ``l2r`` (cast to float32,
    as L2R's ``load_disp``). ``DataError`` naming the file for a wrong shape (saying which
    layouts the rule set accepts), a wrong dtype (2020: float16 only), an array under another
    key than the rule set's (2020 and ``remind2reg``/``lumir*``: ``arr_0``), or NaN/Inf values.
    """
    grid = tuple(expected_shape[:3])
    if fmt == Layout.L2R2020:
        disp = _load_npz(path, KEY_2020)
        if disp.dtype != np.float16:
            raise DataError(f"{path}: dtype is {disp.dtype}; 2020 fields must be float16")
        if disp.ndim != 4 or disp.shape[0] != 3:
            raise DataError(f"{path}: shape {_fmt(disp.shape)}; 2020 fields are 3 x X x Y x Z (channels first)")
        half = tuple(2 * n for n in disp.shape[1:])
        if tuple(disp.shape[1:]) != grid and half != grid:
            raise DataError(f"{path}: shape {_fmt(disp.shape)} fits neither 3x{_fmt(grid)} nor half resolution of it")
        _check_finite(path, disp)
        return contract.from_2020(disp, full_resolution=tuple(disp.shape[1:]) == grid)
    if path.name.endswith(".npz"):
        disp = _load_npz(path, rules.npz_key, f"{rules.name} fields")
        if not np.issubdtype(disp.dtype, np.number):
            raise DataError(f"{path}: dtype {disp.dtype} is not numeric")
        wide = keep_float64 and disp.dtype == np.float64 and not rules.npz_float32
    else:
        disp, _ = load_nifti(path, dtype=None, copy=False)  # read-only view: nothing writes into it
        wide = keep_float64 and disp.dtype == np.float64
    disp = _oriented(path, disp if wide else disp.astype(np.float32, copy=False), expected_shape, rules)
    _check_finite(path, disp)
    return disp  # NIfTI data come in Fortran order: the metrics follow the memory layout


def _oriented(path: Path, disp: np.ndarray, expected_shape: tuple[int, ...], rules: rulesets.Rules) -> np.ndarray:
    """``X x Y x Z x 3``: a ``3 x X x Y x Z`` field transposed where the rule set does it (``lumir*``,
    whenever ``shape[0] == 3``, their test); ``DataError`` naming the file for any other shape,
    saying which layouts the rule set accepts."""
    if rules.channel_first and disp.ndim == 4 and disp.shape[0] == 3:
        disp = disp.transpose(1, 2, 3, 0)
    if tuple(disp.shape) != tuple(expected_shape):
        accepted = f"{_fmt(expected_shape)} or 3x{_fmt(expected_shape[:3])}" if rules.channel_first else _fmt(expected_shape)
        cf = disp.ndim == 4 and disp.shape[0] == 3 and tuple(disp.shape[1:]) == tuple(expected_shape[:3])
        extra = f"; the {rules.name} rules do not accept channel-first 3 x X x Y x Z" if cf and not rules.channel_first else ""
        raise DataError(f"{path}: shape {_fmt(disp.shape)}; expected {accepted} (fixed grid x 3){extra}")
    return disp


#: the stored types a field may have: the evaluators read any float (NIfTI: float32 or float64; an
#: ``.npz`` also float16, cast to float64, or to float32 by L2R); predict writes float32
FIELD_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def field_file_problems(path: Path, fmt: str, expected_shape: tuple[int, ...], rules: rulesets.Rules = rulesets.L2R) -> list[str]:
    """Every problem of one submitted field file, each naming it (empty = fine), reading it once:
    unreadable, an ``.npz`` array under another key than the rule set's, a stored type that is not
    a float (:data:`FIELD_DTYPES`; 2020: float16 only), a shape or channel layout the rule set
    does not accept (``expected_shape``: ``(X, Y, Z, 3)``, the fixed grid), NaN/Inf values."""
    if fmt == Layout.L2R2020:
        try:
            load_field(path, fmt, expected_shape, rules)
        except DataError as exc:
            return [str(exc)]
        return []
    try:
        if path.name.endswith(".npz"):
            disp = _load_npz(path, rules.npz_key, f"{rules.name} fields")
        else:
            disp, _ = load_nifti(path, dtype=None, copy=False)
    except DataError as exc:
        return [str(exc)]
    problems = []
    if disp.dtype not in FIELD_DTYPES:
        problems.append(f"{path}: dtype {disp.dtype}; a field is stored as float32 (as predict writes it; float64, and float16 in an .npz, are read too)")
    try:
        _oriented(path, disp, expected_shape, rules)
    except DataError as exc:
        problems.append(str(exc))
    if np.issubdtype(disp.dtype, np.number) and not np.isfinite(disp).all():
        problems.append(f"{path}: {int(disp.size - np.count_nonzero(np.isfinite(disp)))} NaN/Inf values")
    return problems


def _check_finite(path: Path, disp: np.ndarray) -> None:
    if not np.isfinite(disp).all():
        bad = int(disp.size - np.count_nonzero(np.isfinite(disp)))
        raise DataError(f"{path}: {bad} NaN/Inf values")


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def check_submission(
    disp_dir: str | Path,
    config: EvalConfig,
    fmt: str = "auto",
    deep: bool = False,
    task_folder: str | None = None,
    rules: rulesets.Rules = rulesets.L2R,
) -> list[str]:
    """Every problem of a submission, listed at once (empty = fine).

    Always: missing files (all names tried), and for ``.npz`` the shape/dtype from the header.
    ``deep=True`` also loads every field (NIfTI shape, NaN/Inf values). The evaluator does the
    deep checks per case, before any metric of that case.
    """
    disp_dir = Path(disp_dir)
    if not disp_dir.is_dir():
        return [f"{disp_dir}: submission folder not found"]
    fmt = detect_format(disp_dir) if fmt == "auto" else fmt
    found, problems = locate_fields(field_folder(disp_dir, fmt, task_folder), config.pairs, fmt, rules)
    for key, path in found.items():
        try:
            if deep:
                load_field(path, fmt, config.expected_shape, rules)
            elif path.name.endswith(".npz"):
                _check_npz_header(path, fmt, config.expected_shape, rules)
        except DataError as exc:
            problems.append(f"{exc} [{key}]")
    return problems


def _check_npz_header(path: Path, fmt: str, expected_shape: tuple[int, ...], rules: rulesets.Rules = rulesets.L2R) -> None:
    shape, dtype = npz_header(path, *((KEY_2020,) if fmt == Layout.L2R2020 else (rules.npz_key, f"{rules.name} fields")))
    grid = tuple(expected_shape[:3])
    if fmt == Layout.L2R2020:
        if dtype != np.float16:
            raise DataError(f"{path}: dtype is {dtype}; 2020 fields must be float16")
        ok = len(shape) == 4 and shape[0] == 3 and (shape[1:] == grid or tuple(2 * n for n in shape[1:]) == grid)
        if not ok:
            raise DataError(f"{path}: shape {_fmt(shape)} fits neither 3x{_fmt(grid)} nor half resolution of it")
    elif shape != tuple(expected_shape) and not (rules.channel_first and shape == (3, *grid)):
        raise DataError(f"{path}: shape {_fmt(shape)}; expected {_fmt(expected_shape)} (fixed grid x 3)")
