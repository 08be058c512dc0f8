"""What ``validate`` reports (:class:`Problem`) and its first check: the task's json
description (``{TASK}_dataset.json`` or the 2020 ``task.json``), key by key, before any file is read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluation.io import DataError, read_json

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding: the file it is about and what is wrong with it."""

    path: Path
    message: str
    severity: str = ERROR  # ERROR | WARNING

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == WARNING else ""
        return f"{self.path}: {prefix}{self.message}"


def problem_from_text(text: str, root: Path) -> Problem:
    """A ``"PATH: message"`` string (DataError, Task.problems) as a Problem.

    ``Task.problems`` of the current layout start with the json file name followed by the
    entry (``"X_dataset.json training[3]: ..."``); those are attributed to the json file.
    """
    head, sep, message = text.partition(": ")
    if sep and Path(head).is_absolute():
        return Problem(Path(head), message)
    first, _, rest = head.partition(" ")
    if sep and first and (root / first).is_file():
        return Problem(root / first, f"{rest}: {message}" if rest else message)
    return Problem(root, text)


# ---------------------------------------------------------------- the dataset description


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


def _check_entries(meta: dict, key: str, fields: tuple[str, ...], required: bool) -> list[str]:
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


def _check_common(meta: dict, shape_key: str) -> list[tuple[str, str]]:
    """(severity, message) for the keys both layouts' json share."""
    found: list[tuple[str, str]] = []
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


def _check_l2r_json(meta: dict) -> list[tuple[str, str]]:
    """(severity, message) for the keys of a ``{TASK}_dataset.json``."""
    found = _check_common(meta, "tensorImageShape")
    if "name" not in meta:
        found.append((WARNING, "no 'name' (the file name is used)"))
    if meta.get("pairings", "unpaired") not in ("paired", "unpaired"):
        found.append((ERROR, f"'pairings' must be 'paired' or 'unpaired', found {meta['pairings']!r}"))
    direction = meta.get("registration_direction", {})
    if not isinstance(direction, dict) or not all(_is_int(direction.get(k, 0)) for k in ("fixed", "moving")):
        found.append((ERROR, f"'registration_direction' must be {{\"fixed\": int, \"moving\": int}}, found {direction!r}"))
    for key, fields, required in (
        ("training", ("image",), True),
        ("test", ("image",), False),
        ("registration_val", ("fixed", "moving"), True),
        ("registration_test", ("fixed", "moving"), False),
    ):
        found += [(ERROR, m) for m in _check_entries(meta, key, fields, required)]
    return found


def check_description(root: Path) -> list[Problem]:
    """Problems with the task's json description (keys missing or of the wrong kind)."""
    jsons = sorted(root.glob("*_dataset.json"))
    path = jsons[0] if len(jsons) == 1 else root / "task.json"
    if not path.exists():
        return []
    try:
        meta = read_json(path)
    except DataError as exc:
        return [problem_from_text(str(exc), root)]
    if not isinstance(meta, dict):
        return [Problem(path, "top level must be a JSON object")]
    found = _check_l2r_json(meta) if path.name.endswith("_dataset.json") else _check_common(meta, "shape")
    return [Problem(path, message, severity) for severity, message in found]
