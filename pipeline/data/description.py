"""What ``validate`` reports (:class:`Problem`) and its first check: the task's json
description (``{TASK}_dataset.json`` or the 2020 ``task.json``), key by key, before any file is read
(the rules are :mod:`learn2reg.dataset`'s)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from learn2reg import dataset
from learn2reg.dataset import ERROR, WARNING
from learn2reg.io import DataError


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


def check_description(root: Path) -> list[Problem]:
    """Problems with the task's json description (keys missing or of the wrong kind), by
    :func:`learn2reg.dataset.check_description`."""
    jsons = sorted(root.glob(f"*{dataset.SUFFIX}"))  # several: load_task names them
    path = jsons[0] if len(jsons) == 1 else root / dataset.TASK_JSON_2020
    if not path.exists():
        return []
    try:
        meta = dataset.read_description(path)
    except DataError as exc:
        return [problem_from_text(str(exc), root)]
    found = dataset.check_description(meta, layout_2020=path.name == dataset.TASK_JSON_2020)
    return [Problem(path, message, severity) for severity, message in found]
