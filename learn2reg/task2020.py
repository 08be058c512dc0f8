"""The 2020 layout (the seed paper's year), read into the model of :mod:`learn2reg.task`.

One folder per task: ``images/`` with ``img{SSSS}.nii.gz`` (inter-patient) or ``img{SSSS}_fixed.nii.gz`` +
``img{SSSS}_moving.nii.gz`` (intra-patient), sibling folders ``labels/ masks/ keypoints/ landmarks/``
with the same stems, ``pairs_val.csv`` (header ``fixed,moving``, integer subject ids), optional
``pairs_test.csv`` and ``task.json`` (``name``, ``labels``, ``modality``, ``shape``). Inter-patient
images become cases ``SSSS_0000``; intra-patient fixed/moving roles ``SSSS_0000``/``SSSS_0001``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from learn2reg import dataset
from learn2reg.task import POINT_KINDS, SIBLINGS, Case, Layout, Pair, Task

TASK_JSON = dataset.TASK_JSON_2020
_2020_RE = re.compile(r"^img(\d{4})(?:_(fixed|moving))?\.nii\.gz$")


def _read_pairs_csv(path: Path, problems: list[str]) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if header != ["fixed", "moving"]:
            problems.append(f"{path}: header must be 'fixed,moving', found {','.join(header)!r}")
            return []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                rows.append((int(row[0]), int(row[1])))
            except (ValueError, IndexError):
                problems.append(f"{path}: line {lineno} is not two integer ids: {row}")
    return rows


def load_2020(root: Path) -> Task:
    """A 2020 task folder (``images/``, ``pairs_val.csv``, optional ``task.json``) as a :class:`Task`."""
    problems: list[str] = []
    meta = dataset.read_description(root / TASK_JSON) if (root / TASK_JSON).exists() else {}
    cases: dict[str, Case] = {}
    roles: set[str] = set()
    pair_problems: dict[str, list[str]] = {"val": [], "test": []}
    pair_rows = {split: _read_pairs_csv(root / f"pairs_{split}.csv", pair_problems[split]) for split in pair_problems}
    problems += [p for split in pair_problems for p in pair_problems[split]]
    test_subjects = {f"{i:04d}" for row in pair_rows["test"] for i in row}
    for image in sorted((root / "images").glob("*.nii.gz")):
        match = _2020_RE.match(image.name)
        if not match:
            problems.append(f"{image}: name does not match img{{SSSS}}[_fixed|_moving].nii.gz")
            continue
        role = match[2] or ""
        roles.add(role)
        case_id = f"{match[1]}_{'0001' if role == 'moving' else '0000'}"
        split = "test" if match[1] in test_subjects else "train"
        extra = {}
        for key, kind in SIBLINGS.items():
            name = image.name.replace(".nii.gz", ".csv") if kind in POINT_KINDS else image.name
            candidate = root / kind / name
            # A sibling folder that exists promises a file for every training image.
            expected = (root / kind).is_dir() and split == "train"
            extra[key] = candidate if candidate.exists() or expected else None
        cases[case_id] = Case(case_id, image, split=split, **extra)  # type: ignore[arg-type]  # extra: the Path | None fields
    intra = bool(roles - {""})
    moving_m = "0001" if intra else "0000"
    pairs = {
        split: tuple(Pair(f"{f:04d}_0000", f"{m:04d}_{moving_m}") for f, m in rows) for split, rows in pair_rows.items()
    }
    training = tuple(c for c in sorted(cases) if cases[c].split == "train")
    if intra:
        pairs["train"] = tuple(
            Pair(c, c.replace("_0000", "_0001")) for c in training if c.endswith("_0000") and c.replace("_0000", "_0001") in cases
        )
    return Task(
        name=str(meta.get("name", root.name)),
        root=root,
        layout=Layout.L2R2020,
        shape=dataset.shape3(meta.get("shape")),
        modality={str(k): str(v) for k, v in (meta.get("modality") or {}).items()},
        labels=dataset.labels(meta.get("labels", {})),
        cases=cases,
        training=training,
        pairs=pairs,
        intra_patient=intra,
        problems=tuple(problems),
        pair_problems={split: tuple(found) for split, found in pair_problems.items()},
    )


#: Folder names of the organisers' unpacked 2020 archives (``pipeline.data.convert2020`` reads them).
ARCHIVE_FOLDERS = {"scans": 2, "lungmasks": 2, "keypoints": 2, "img": 3, "label": 3}


def archive_hint(root: Path, depth: int = 3) -> str:
    """For a folder that is no task: if it looks like an unpacked Learn2Reg 2020 archive (one of
    :data:`ARCHIVE_FOLDERS` up to ``depth`` levels down, e.g. ``scans/`` or ``Training/img/``), a
    sentence pointing to ``convert-2020`` (with the task number when the folders tell it), else ""."""
    found: list[Path] = []
    level = [Path(root)]
    for _ in range(depth):
        level = [d for parent in level for d in _entries(parent) if d.is_dir()]
        found += [d for d in level if d.name.lower() in ARCHIVE_FOLDERS]
        if found or not level:
            break
    if not found:
        return ""
    task = ARCHIVE_FOLDERS[found[0].name.lower()]
    if task == 3 and any(p.name.lower().startswith("hippocampus_") for d in found for p in _entries(d)):
        task = 4
    where = ", ".join(str(d.relative_to(root)) + "/" for d in found[:3])
    return (f"; this looks like an unpacked Learn2Reg 2020 archive ({where}): convert it into a task folder first: "
            f"python -m pipeline convert-2020 {root} --task {task} --out data/task_{task:02d}")


def _entries(folder: Path) -> list[Path]:
    """The entries of a folder, sorted; none where it cannot be read."""
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []
