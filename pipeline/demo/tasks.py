"""``python -m pipeline demo-data``: write the embedded synthetic demo tasks.

Four small Learn2Reg tasks that mirror the seed paper's 2020 tasks, generated procedurally
(no download) and deterministically from a seed (same seed -> identical arrays):

===  ==================  =======  ==========  ==========  ==========================================
key  name                2020     shape       spacing mm  content
===  ==================  =======  ==========  ==========  ==========================================
T1   DemoCuRIOUS         task_01  64x64x64    1 x 1 x 1   MR (fixed) vs US-like (moving), 4 subjects,
                                                          20 landmarks each
T2   DemoLungCT          task_02  64x64x64    1.75^2x2.5  exhale (fixed) vs inhale (moving) CT, 12
                                                          subjects, lung masks, 100 keypoints, 30
                                                          landmarks
T3   DemoAbdomenCTCT     task_03  64x48x80    5 x 5 x 5   inter-patient CT, 20 subjects, 13 organs
T4   DemoHippocampusMR   task_04  48x48x48    1 x 1 x 1   inter-patient MR, 20 subjects, 2 labels
===  ==================  =======  ==========  ==========  ==========================================

The last subjects of each task are held out for the validation pairs (they stay listed in
``training``, as in the official files). Every task folder is written into a temporary
sibling and renamed into place, so a folder is either complete or absent; an existing folder
is replaced only if it was written by this command (it carries ``demo_data.json``).

Two more tasks mirror the layouts of 2024-2026 (:mod:`pipeline.demo.current`): ``LUMIR``
(``DemoLUMIR``, layout ``lumir``) and ``ReMIND`` (``DemoReMIND2Reg``, layout ``remind2reg``, an
ultrasound-like fixed image against ceT1/T2). Each task has its own layout: T1-T4 are written in
``l2r`` (or ``l2r2020`` when asked), LUMIR and ReMIND only in theirs. ``--layout lumir`` alone
writes LUMIR, ``--layout remind2reg`` ReMIND, ``--tasks LUMIR,ReMIND`` both; without either
option the four T tasks are written, as before.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learn2reg import dataset
from learn2reg.eval_config import build_config
from learn2reg.io import (
    DataError,
    Geometry,
    atomic_open,
    check_output_path,
    float3,
    read_json,
    save_nifti,
    write_json,
    write_points,
)
from learn2reg.task import Layout
from learn2reg.writers import hold_folder
from pipeline.demo.current import CURRENT, LAYOUT_TASKS
from pipeline.demo.phantom_abdomen import LABELS as ABDOMEN_LABELS
from pipeline.demo.phantom_abdomen import abdomen_subject
from pipeline.demo.phantom_brain import curious_subject
from pipeline.demo.phantom_hippocampus import LABELS as HIPPOCAMPUS_LABELS
from pipeline.demo.phantom_hippocampus import hippocampus_subject
from pipeline.demo.phantom_lung import lung_subject
from pipeline.demo.phantoms import Grid, PhantomImage, PhantomSubject, make_rng

log = logging.getLogger(__name__)

MARKER = "demo_data.json"
VERSION = 1
MAX_RESIDUAL = 1e-3  # voxels: largest allowed point-correspondence residual


@dataclass(frozen=True)
class DemoTaskSpec:
    """What one demo task contains (sizes, split, metadata) and which generator makes a subject."""

    key: str  # "T1" .. "T4"
    name: str  # current-layout task name
    folder_2020: str  # 2020-layout folder name
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # mm
    subjects: int
    val_subjects: int  # the last ones, held out for the validation pairs
    paired: bool  # intra-patient: images _0000 (fixed) and _0001 (moving) per subject
    modality: dict[str, str]
    labels: dict[int, str]
    masked: bool  # masked evaluation (fixed mask restricts SDlogJ)
    description: str
    make_subject: Callable[[np.random.Generator, Grid], PhantomSubject]

    @property
    def index(self) -> int:
        return int(self.key[1:])


SPECS: tuple[DemoTaskSpec, ...] = (
    DemoTaskSpec(
        key="T1", name="DemoCuRIOUS", folder_2020="task_01", shape=(64, 64, 64), spacing=(1.0, 1.0, 1.0),
        subjects=4, val_subjects=1, paired=True, modality={"0": "MR", "1": "US"}, labels={}, masked=False,
        description="Synthetic brain MR (fixed) and ultrasound-like image (moving) of the same anatomy, landmarks",
        make_subject=curious_subject,
    ),
    DemoTaskSpec(
        key="T2", name="DemoLungCT", folder_2020="task_02", shape=(64, 64, 64), spacing=(1.75, 1.75, 2.5),
        subjects=12, val_subjects=2, paired=True, modality={"0": "CT", "1": "CT"}, labels={}, masked=True,
        description="Synthetic lung CT, exhale (fixed) and inhale (moving), lung masks, keypoints, landmarks",
        make_subject=lung_subject,
    ),
    DemoTaskSpec(
        key="T3", name="DemoAbdomenCTCT", folder_2020="task_03", shape=(64, 48, 80), spacing=(5.0, 5.0, 5.0),
        subjects=20, val_subjects=3, paired=False, modality={"0": "CT"}, labels=ABDOMEN_LABELS, masked=False,
        description="Synthetic abdomen CT, inter-patient, 13 organ labels",
        make_subject=abdomen_subject,
    ),
    DemoTaskSpec(
        key="T4", name="DemoHippocampusMR", folder_2020="task_04", shape=(48, 48, 48), spacing=(1.0, 1.0, 1.0),
        subjects=20, val_subjects=3, paired=False, modality={"0": "MR"}, labels=HIPPOCAMPUS_LABELS, masked=False,
        description="Synthetic hippocampus MR crops, inter-patient, labels head and body/tail",
        make_subject=hippocampus_subject,
    ),
)
SPEC_BY_KEY = {spec.key: spec for spec in SPECS}


@dataclass(frozen=True)
class DemoTask:
    """A generated task in memory: ``subjects[i]`` is subject id ``i + 1``; pairs of case ids."""

    spec: DemoTaskSpec
    seed: int
    subjects: tuple[PhantomSubject, ...]
    val_pairs: tuple[tuple[str, str], ...]  # (fixed case id, moving case id), "SSSS_MMMM"

    @property
    def val_subject_ids(self) -> tuple[int, ...]:
        n = len(self.subjects)
        return tuple(range(n - self.spec.val_subjects + 1, n + 1))


def make_val_pairs(spec: DemoTaskSpec, n_subjects: int) -> tuple[tuple[str, str], ...]:
    """Validation pairs among the held-out (last) subjects: each one's fixed/moving images
    (paired tasks) or a cycle over them (inter-patient: 2 -> both directions)."""
    ids = list(range(n_subjects - spec.val_subjects + 1, n_subjects + 1))
    if spec.paired:
        return tuple((f"{s:04d}_0000", f"{s:04d}_0001") for s in ids)
    if len(ids) == 2:
        return ((f"{ids[0]:04d}_0000", f"{ids[1]:04d}_0000"), (f"{ids[1]:04d}_0000", f"{ids[0]:04d}_0000"))
    return tuple((f"{a:04d}_0000", f"{b:04d}_0000") for a, b in zip(ids, ids[1:] + ids[:1], strict=True))


def generate_task(spec: DemoTaskSpec, seed: int = 0, subjects: int | None = None) -> DemoTask:
    """Generate a task in memory. Subject ``s`` always comes from the stream ``(seed, task, s)``,
    so it is the same whatever ``subjects`` (default ``spec.subjects``) is."""
    n = spec.subjects if subjects is None else int(subjects)
    if n < spec.val_subjects + 1 or (not spec.paired and spec.val_subjects < 2):
        raise ValueError(f"{spec.key}: needs at least {spec.val_subjects + 1} subjects, got {n}")
    grid = Grid(spec.shape, spec.spacing)
    made = []
    for s in range(1, n + 1):
        start = time.perf_counter()
        subject = spec.make_subject(make_rng(seed, spec.index, s), grid)
        if subject.residual > MAX_RESIDUAL:
            raise RuntimeError(f"{spec.name} subject {s}: point correspondence residual {subject.residual:.2e} voxels")
        log.debug("%s subject %d/%d in %.2f s", spec.name, s, n, time.perf_counter() - start)
        made.append(subject)
    return DemoTask(spec=spec, seed=seed, subjects=tuple(made), val_pairs=make_val_pairs(spec, n))


def geometry(spec: DemoTaskSpec) -> Geometry:
    """Axis-aligned LPS grid centred on the origin (the phantoms' mm frame)."""
    origin = float3(-(n - 1) / 2.0 * s for n, s in zip(spec.shape, spec.spacing, strict=True))
    return Geometry(shape=spec.shape, spacing=spec.spacing, direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), origin=origin)


# ------------------------------------------------------------------------------------------ writers


def _stems(task: DemoTask, layout: str) -> Iterator[tuple[str, str, PhantomImage]]:
    """(case id, file stem, image) for every image of the task, in subject order."""
    for s, subject in enumerate(task.subjects, start=1):
        for m, image in enumerate(subject.images):
            case_id = f"{s:04d}_{m:04d}"
            if layout == Layout.L2R:
                stem = f"{task.spec.name}_{case_id}"
            else:
                stem = f"img{s:04d}" + (("_fixed", "_moving")[m] if task.spec.paired else "")
            yield case_id, stem, image


def _write_files(task: DemoTask, root: Path, layout: str) -> dict[str, dict[str, str]]:
    """Write images, labels, masks and points; return case id -> {kind: relative path}."""
    geo = geometry(task.spec)
    suffix = "Tr" if layout == Layout.L2R else ""
    entries: dict[str, dict[str, str]] = {}
    for case_id, stem, img in _stems(task, layout):
        entry = {"image": f"./images{suffix}/{stem}.nii.gz"}
        save_nifti(root / entry["image"], img.image, geo)
        for kind, key, array in (("labels", "label", img.label), ("masks", "mask", img.mask)):
            if array is not None:
                entry[key] = f"./{kind}{suffix}/{stem}.nii.gz"
                save_nifti(root / entry[key], array, geo)
        for kind, points in (("keypoints", img.keypoints), ("landmarks", img.landmarks)):
            if points is not None:
                entry[kind] = f"./{kind}{suffix}/{stem}.csv"
                write_points(root / entry[kind], points)
        entries[case_id] = entry
    return entries


def _dataset_json(task: DemoTask, entries: dict[str, dict[str, str]]) -> dict:
    """The current layout's ``{TASK}_dataset.json`` (official keys, :mod:`learn2reg.dataset`)."""
    spec = task.spec
    paired = None
    if spec.paired:
        train = [s for s in range(1, len(task.subjects) + 1) if s not in set(task.val_subject_ids)]
        paired = [{"fixed": entries[f"{s:04d}_0000"]["image"], "moving": entries[f"{s:04d}_0001"]["image"]} for s in train]
    return dataset.build_description(
        spec.name,
        spec.shape,
        list(entries.values()),
        [{"fixed": entries[f]["image"], "moving": entries[m]["image"]} for f, m in task.val_pairs],
        modality=spec.modality,
        label_names=spec.labels,
        training_paired_images=paired,
        description=f"{spec.description}. Generated by `python -m pipeline demo-data` (seed {task.seed}).",
        reference="synthetic",
        licence="CC0 (synthetic data)",
        release=f"demo-{VERSION}",
    )


def evaluation_config(task: DemoTask, entries: dict[str, dict[str, str]]) -> dict:
    """``{TASK}_VAL_evaluation_config.json`` in the organisers' format."""
    spec = task.spec
    first = entries["0001_0000"]
    return build_config(
        spec.name,
        spec.shape,
        [{"fixed": entries[f]["image"], "moving": entries[m]["image"]} for f, m in task.val_pairs],
        label_ids=sorted(spec.labels),
        points=[dest for dest in ("landmarks", "keypoints") if dest in first],
        masked=spec.masked,
    )


def write_task(task: DemoTask, root: Path, layout: str = Layout.L2R) -> None:
    """Write ``task`` into the (empty or new) folder ``root`` in the given layout."""
    spec = task.spec
    entries = _write_files(task, root, layout)
    if layout == Layout.L2R:
        dataset.write_description(root, _dataset_json(task, entries))
        write_json(root / f"{spec.name}_VAL_evaluation_config.json", evaluation_config(task, entries))
    else:
        rows = ["fixed,moving", *(f"{int(f[:4])},{int(m[:4])}" for f, m in task.val_pairs)]
        with atomic_open(root / "pairs_val.csv") as fh:
            fh.write("\n".join(rows) + "\n")
        labels = {str(k): v for k, v in spec.labels.items()}
        write_json(root / "task.json", {"name": spec.name, "labels": labels, "modality": spec.modality, "shape": list(spec.shape)})
    marker = {"generator": "pipeline.demo.tasks", "version": VERSION, "task": spec.key, "seed": task.seed, "layout": layout,
              "subjects": len(task.subjects), "spacing": list(spec.spacing)}
    write_json(root / MARKER, marker)


def write_current(key: str, made: Any, root: Path) -> None:
    """Write a generated task of the current layouts (``CURRENT[key].generate``'s result) and its marker."""
    current = CURRENT[key]
    extra = current.write(made, root)
    marker = {"generator": "pipeline.demo.current", "version": VERSION, "task": key, "seed": made.seed,
              "layout": current.spec.layout, "spacing": list(current.spec.spacing), **extra}
    write_json(root / MARKER, marker)


@contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``target``; on success it replaces ``target``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old)  # onto the empty directory just made
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _check_replaceable(target: Path) -> None:
    """A task folder may be replaced only if it is absent, empty or written by demo-data."""
    if not target.exists():
        return
    if not target.is_dir():
        raise DataError(f"{target}: exists and is not a folder")
    if any(target.iterdir()) and not (target / MARKER).is_file():
        raise DataError(f"{target}: exists and was not written by demo-data (no {MARKER}); refusing to replace it")
    if (target / MARKER).is_file():
        read_json(target / MARKER)  # a corrupt marker is reported, not silently trusted


LAYOUTS = (Layout.L2R, Layout.L2R2020, *LAYOUT_TASKS)  # the --layout choices
KEYS = {key.upper(): key for key in (*SPEC_BY_KEY, *CURRENT)}  # --tasks, case-insensitive


def parse_tasks(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"T1,T3"`` (or a sequence) -> ``("T1", "T3")``; ``"lumir"`` -> ``("LUMIR",)``;
    ``DataError`` for unknown keys."""
    keys = [k.strip().upper() for k in (text.split(",") if isinstance(text, str) else text) if k.strip()]
    unknown = [k for k in keys if k not in KEYS]
    if unknown or not keys:
        raise DataError(f"--tasks: unknown or empty task list {unknown or text!r} (choose from {','.join(KEYS.values())})")
    return tuple(dict.fromkeys(KEYS[k] for k in keys))


def _resolve(layout: str | None, tasks: str | Sequence[str] | None) -> list[tuple[str, str]]:
    """(task key, layout) for every task to write: ``layout`` None = each task's own layout;
    ``tasks`` None = T1-T4, or the one task of a current layout (``lumir`` -> LUMIR)."""
    if layout is not None and layout not in LAYOUTS:
        raise DataError(f"--layout: unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if tasks is None:
        tasks = (LAYOUT_TASKS[layout],) if layout in LAYOUT_TASKS else tuple(SPEC_BY_KEY)
    resolved = []
    for key in parse_tasks(tasks):
        own = CURRENT[key].spec.layout if key in CURRENT else None
        if own is not None and layout not in (None, own):
            raise DataError(f"--tasks {key}: written in its own layout {own!r} only, not {layout!r}")
        if own is None and layout in LAYOUT_TASKS:
            raise DataError(f"--tasks {key}: layout {layout!r} holds task {LAYOUT_TASKS[layout]} only; {key} is written in "
                            f"{Layout.L2R} or {Layout.L2R2020}")
        resolved.append((key, own or layout or Layout.L2R))
    return resolved


def write_demo(
    out: Path, seed: int = 0, layout: str | None = None, tasks: str | Sequence[str] | None = None, subjects: int | None = None
) -> list[Path]:
    """Generate and write the demo tasks under ``out``; returns the task folders written.

    ``out/<name>`` (layouts ``l2r``, ``lumir``, ``remind2reg``) or ``out/task_0T`` (``l2r2020``);
    ``layout`` and ``tasks`` combine as :func:`_resolve` says. ``subjects`` overrides the number of
    subjects per task (tests; T tasks: at least the held-out count + 1; LUMIR: training images,
    ReMIND: training patients).
    """
    todo = _resolve(layout, tasks)
    if int(seed) < 0:
        raise DataError(f"--seed: must be >= 0, got {seed}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, task_layout in todo:
        current = CURRENT.get(key)
        name = current.spec.name if current is not None else SPEC_BY_KEY[key].name
        target = out / (SPEC_BY_KEY[key].folder_2020 if task_layout == Layout.L2R2020 else name)
        _check_replaceable(target)
        start = time.perf_counter()
        if current is None:
            task = generate_task(SPEC_BY_KEY[key], int(seed), subjects)
            with _staged(target) as tmp:
                write_task(task, tmp, task_layout)
        else:
            made = current.generate(int(seed), subjects)
            with _staged(target) as tmp:
                write_current(key, made, tmp)
        log.info("%s: %s written to %s in %.1f s", key, name, target, time.perf_counter() - start)
        written.append(target)
    return written


# ---------------------------------------------------------------------------------------------- CLI


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder that receives one folder per task")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical data)")
    parser.add_argument("--layout", choices=LAYOUTS, default=None,
                        help="l2r (Learn2Reg 2022 on, default for T1-T4), l2r2020 (T1-T4 in the 2020 layout), "
                             "lumir (the LUMIR task), remind2reg (the ReMIND2Reg task)")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated subset of T1,T2,T3,T4,LUMIR,ReMIND (default: T1-T4, or the task of --layout)")


def run(args: argparse.Namespace) -> int:
    with hold_folder(check_output_path(args.out, folder=True)):  # one writer per folder
        for path in write_demo(args.out, seed=args.seed, layout=args.layout, tasks=args.tasks):
            print(path)
    return 0
