"""``{TASK}_dataset.json``: the one module that reads, checks and writes a task's description.

The keys (../shared/docs/learn2reg.md section 1): ``name``, ``tensorImageShape {"0": [X, Y, Z]}``, ``modality
{"0": ...}``, ``labels {"0": {id: name}}``, ``pairings`` (``paired`` | ``unpaired``),
``registration_direction {fixed, moving}``, the image lists ``training`` / ``test`` (objects with an
``image`` path and optional ``label``/``mask``/``keypoints``/``landmarks`` paths, or bare paths), the
pair lists ``registration_val`` / ``registration_test`` (objects with ``fixed`` and ``moving``
paths), ``training_paired_images``. Paths are relative to the task folder.

The files of the 2024-2026 tasks (../shared/docs/learn2reg-current.md) use the same keys, with these
differences, all accepted here:

* LUMIR / LUMIR25 list the validation pairs under ``validation`` (no ``registration_val``, no
  ``test``/``registration_test``), ``training`` entries hold only an ``image``, ``labels`` is ``{}``,
  counts are ``numTraining`` / ``numValidation``; ``provided_data {"0": ["image"]}``, ``license``.
* ReMIND2Reg: three modalities (``{"0": "3D iUS", "1": "ceT1", "2": "T2"}``), image-only training.
* OncoReg / revised ThoraxCBCT: ``training_paired_images``, ``registration_val``,
  ``registration_test``; point folders ``keypoints01Tr``/``keypoints02Tr`` (found by
  :meth:`learn2reg.task.Task.pair_points`, not named in the json).

A description lists its validation pairs under exactly one of :data:`VAL_KEYS`.

:func:`check_description` lists every problem of a description (``(severity, message)``) before any
file is read; :func:`build_description` + :func:`write_description` are how every generator in
this project (demo tasks, benchmarks) writes one; :mod:`learn2reg.task` reads the folder it describes.
The 2020 layout's ``task.json`` (``name``, ``labels``, ``modality``, ``shape``) is checked here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from learn2reg.io import DataError, read_json, write_json

SUFFIX = "_dataset.json"
TASK_JSON_2020 = "task.json"
ERROR = "error"
WARNING = "warning"
# split -> key of the image lists and of the pair lists
IMAGE_LISTS = (("train", "training"), ("test", "test"))
PAIR_LISTS = (("val", "registration_val"), ("test", "registration_test"))
# The keys a validation pair list may have: the L2R files' and LUMIR's.
VAL_KEYS = ("registration_val", "validation")
# Count keys and the list each counts (a mismatch is a warning).
COUNT_KEYS = (
    ("numTraining", "training"), ("numTest", "test"), ("numValidation", "validation"),
    ("numRegistration_val", "registration_val"), ("numRegistration_test", "registration_test"),
    ("numPairedTraining", "training_paired_images"),
)

Finding = tuple[str, str]  # (severity, message)


def description_path(root: Path) -> Path | None:
    """The task folder's ``*_dataset.json``; ``None`` when there is none; ``DataError`` when several."""
    found = sorted(Path(root).glob(f"*{SUFFIX}"))
    if len(found) > 1:
        raise DataError(f"{root}: several *{SUFFIX} files: {[p.name for p in found]}")
    return found[0] if found else None


def read_description(path: Path) -> dict[str, Any]:
    """The json object of a description; ``DataError`` naming the file when it is not one."""
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise DataError(f"{path}: top level must be a JSON object")
    return meta


def pair_key(meta: Mapping[str, Any], split: str) -> str | None:
    """The key holding the pairs of ``split`` ("val", "test") in ``meta``; ``None`` when there is none.
    Validation pairs: ``registration_val`` (L2R) or ``validation`` (LUMIR), whichever is present
    (:func:`check_description` refuses a file with both)."""
    keys = VAL_KEYS if split == "val" else (dict(PAIR_LISTS)[split],)
    return next((k for k in keys if k in meta), None)


def task_name(meta: Mapping[str, Any], path: Path) -> str:
    """``name``, else the file name without ``_dataset.json``."""
    return str(meta.get("name", path.name.removesuffix(SUFFIX)))


def labels(raw: object) -> dict[int, str]:
    """``labels`` is ``{"0": {id: name}}`` in current files; flat ``{id: name}`` also accepted. 0 (background) is dropped."""
    if isinstance(raw, dict) and "0" in raw and isinstance(raw["0"], dict):
        raw = raw["0"]
    if not isinstance(raw, dict):
        return {}
    return {int(k): str(v) for k, v in raw.items() if int(k) != 0}


def shape3(value: Any) -> tuple[int, int, int] | None:
    """``[X, Y, Z]`` as a tuple of ints (``tensorImageShape["0"]`` or ``shape``); ``None`` when absent,
    or not three positive numbers (:func:`check_description` reports that); ``ValueError``/``TypeError``
    for values that are not numbers at all (the task loader names the file: malformed)."""
    if not value:
        return None
    numbers = [int(v) for v in value]
    if len(numbers) != 3 or min(numbers) <= 0:
        return None
    return numbers[0], numbers[1], numbers[2]


# ---------------------------------------------------------------- checking


def _is_int(value: object) -> bool:
    """An int, or a string of one (json object keys); not a bool."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())


def _check_shape_value(value: object, key: str) -> list[str]:
    """``[X, Y, Z]`` positive integers (``{"0": [X, Y, Z]}`` for tensorImageShape)."""
    if key == "tensorImageShape":
        if not isinstance(value, dict) or "0" not in value:
            return [f"'{key}' must be an object {{\"0\": [X, Y, Z]}}, found {value!r}"]
        value = value["0"]
    ok = isinstance(value, list) and len(value) == 3 and all(_is_int(v) and int(v) > 0 for v in value)
    return [] if ok else [f"'{key}' must be three positive integers, found {value!r}"]


def _check_labels_value(value: object) -> list[str]:
    inner = value.get("0") if isinstance(value, dict) and isinstance(value.get("0"), dict) else value
    if not isinstance(inner, dict) or not all(_is_int(k) and isinstance(v, str) for k, v in inner.items()):
        return [f"'labels' must map integer label ids to names ({{\"0\": {{\"1\": \"name\"}}}}), found {value!r}"]
    return []


def _check_entries(meta: Mapping[str, Any], key: str, fields: tuple[str, ...], required: bool) -> list[str]:
    """A list of objects whose ``fields`` are path strings (``training``, ``registration_val``...)."""
    entries = meta.get(key)
    if entries is None:
        return [f"required key '{key}' is missing"] if required else []
    if not isinstance(entries, list) or (required and not entries):
        return [f"'{key}' must be a non-empty list, found {entries!r}"[:200]]
    found = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str) and fields == ("image",):
            continue
        if not isinstance(entry, dict):
            found.append(f"{key}[{i}] must be an object, found {entry!r}")
            continue
        missing = [f for f in fields if not isinstance(entry.get(f), str) or not entry.get(f)]
        if missing:
            found.append(f"{key}[{i}] has no path for {', '.join(missing)}")
        bad = [k for k, v in entry.items() if k not in fields and not isinstance(v, str)]
        if bad:
            found.append(f"{key}[{i}] has non-string paths for {', '.join(bad)}")
    return found


def _check_common(meta: Mapping[str, Any], shape_key: str) -> list[Finding]:
    """The keys both layouts' json share."""
    found: list[Finding] = []
    if shape_key not in meta:
        found.append((WARNING, f"no '{shape_key}': image shapes are not checked against a task shape"))
    else:
        found += [(ERROR, m) for m in _check_shape_value(meta[shape_key], shape_key)]
    if "labels" in meta:
        found += [(ERROR, m) for m in _check_labels_value(meta["labels"])]
    if not isinstance(meta.get("modality", {}), dict):
        found.append((ERROR, f"'modality' must be an object {{\"0\": \"CT\"}}, found {meta['modality']!r}"))
    if not isinstance(meta.get("name", ""), str):
        found.append((ERROR, f"'name' must be a string, found {meta['name']!r}"))
    return found


def check_description(meta: Mapping[str, Any], layout_2020: bool = False) -> list[Finding]:
    """Every problem of a ``{TASK}_dataset.json`` (or, with ``layout_2020``, a 2020 ``task.json``)."""
    if layout_2020:
        return _check_common(meta, "shape")
    found = _check_common(meta, "tensorImageShape")
    if "name" not in meta:
        found.append((WARNING, "no 'name' (the file name is used)"))
    if meta.get("pairings", "unpaired") not in ("paired", "unpaired"):
        found.append((ERROR, f"'pairings' must be 'paired' or 'unpaired', found {meta['pairings']!r}"))
    direction = meta.get("registration_direction", {})
    if not isinstance(direction, dict) or not all(_is_int(direction.get(k, 0)) for k in ("fixed", "moving")):
        found.append((ERROR, f"'registration_direction' must be {{\"fixed\": int, \"moving\": int}}, found {direction!r}"))
    val_keys = [k for k in VAL_KEYS if k in meta]
    if not val_keys:
        found.append((ERROR, "required key 'registration_val' (or 'validation', as LUMIR names it) is missing"))
    elif len(val_keys) > 1:
        found.append((ERROR, "both 'registration_val' and 'validation' list validation pairs: keep one of them"))
    for key, fields, required in (
        ("training", ("image",), True),
        ("test", ("image",), False),
        *((k, ("fixed", "moving"), True) for k in val_keys),
        ("registration_test", ("fixed", "moving"), False),
        ("training_paired_images", ("fixed", "moving"), False),
    ):
        found += [(ERROR, m) for m in _check_entries(meta, key, fields, required)]
    found += _check_counts(meta)
    return found


def _check_counts(meta: Mapping[str, Any]) -> list[Finding]:
    """``numTraining``, ``numValidation``... against the lists they count (warnings)."""
    found: list[Finding] = []
    for count_key, list_key in COUNT_KEYS:
        count, entries = meta.get(count_key), meta.get(list_key)
        if count is None or not isinstance(entries, list):
            continue
        if not _is_int(count) or int(count) != len(entries):
            found.append((WARNING, f"'{count_key}' is {count!r} but '{list_key}' has {len(entries)} entries"))
    return found


# ---------------------------------------------------------------- writing


def _modality(image: str) -> str:
    """The modality key of an image path: ``..._SSSS_0001.nii.gz`` -> ``"1"``."""
    match = re.search(r"_(\d{4})\.nii\.gz$", image)
    return str(int(match[1])) if match else "0"


def build_description(
    name: str,
    shape: Sequence[int],
    training: Sequence[Mapping[str, str]],
    registration_val: Sequence[Mapping[str, str]],
    *,
    modality: Mapping[str, str] | None = None,
    label_names: Mapping[int, str] | None = None,
    test: Sequence[Mapping[str, str]] = (),
    registration_test: Sequence[Mapping[str, str]] = (),
    training_paired_images: Sequence[Mapping[str, str]] | None = None,
    val_key: str = "registration_val",
    **about: Any,
) -> dict[str, Any]:
    """A complete description with the official keys and counts. ``training`` entries are
    ``{"image": "./imagesTr/...", "label": ...}``; pairs ``{"fixed": path, "moving": path}``.
    ``training_paired_images`` (intra-patient tasks: ReMIND2Reg, OncoReg, ThoraxCBCT) sets
    ``pairings: paired`` and the direction fixed 0 / moving 1. ``about``: free keys such as
    ``description``, ``reference``, ``licence`` / ``license``, ``release``.

    ``val_key``: ``"registration_val"`` (the L2R files: also ``test``, ``registration_test`` and
    their counts) or ``"validation"`` (LUMIR's file: the pairs under ``validation`` with
    ``numValidation``, no test lists)."""
    if val_key not in VAL_KEYS:
        raise ValueError(f"val_key must be one of {VAL_KEYS}, got {val_key!r}")
    if val_key == "validation" and (test or registration_test):
        raise ValueError("a LUMIR-style description ('validation') has no test lists")
    modality = dict(modality or {"0": "MR"})
    provided = {m: sorted({k for e in training if _modality(e["image"]) == m for k in e}) for m in modality}
    meta: dict[str, Any] = {
        "name": name,
        **about,
        "pairings": "paired" if training_paired_images is not None else "unpaired",
        "provided_data": provided,
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": [int(s) for s in shape]},
        "modality": modality,
        "labels": {"0": {str(k): v for k, v in label_names.items()}} if label_names else {},
        "numTraining": len(training),
    }
    if val_key == "validation":
        meta.update(training=[dict(e) for e in training], numValidation=len(registration_val),
                    validation=[dict(p) for p in registration_val])
    else:
        meta.update(
            numTest=len(test),
            training=[dict(e) for e in training],
            test=[dict(e) for e in test],
            numRegistration_val=len(registration_val),
            registration_val=[dict(p) for p in registration_val],
            numRegistration_test=len(registration_test),
            registration_test=[dict(p) for p in registration_test],
        )
    if training_paired_images is not None:
        meta["registration_direction"] = {"fixed": 0, "moving": 1}
        meta["numPairedTraining"] = len(training_paired_images)
        meta["training_paired_images"] = [dict(p) for p in training_paired_images]
    return meta


def write_description(root: Path, meta: Mapping[str, Any]) -> Path:
    """Write ``root/{name}_dataset.json`` atomically after checking it; ``DataError`` listing every
    error instead of writing a description that ``validate`` would refuse."""
    errors = [message for severity, message in check_description(meta) if severity == ERROR]
    path = Path(root) / f"{meta['name']}{SUFFIX}"
    if errors:
        raise DataError(f"{path}: not written: " + "; ".join(errors))
    write_json(path, meta)
    return path
