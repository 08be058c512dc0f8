"""Demo tasks in the layouts of 2024-2026: LUMIR (``--layout lumir``) and ReMIND2Reg (``--layout remind2reg``).

=======  ==============  ==========  ========  =========================================================
key      name            layout      shape     content
=======  ==============  ==========  ========  =========================================================
LUMIR    DemoLUMIR       lumir       40x56x48  inter-subject T1 brain MR in [0, 255] (uint8), 10 training
                                               images (image only), 8 validation images in two chains of
                                               consecutive ids (fixed = moving + 1): 3 segmentation and 3
                                               landmark pairs; labels (6 structures) and landmark volumes
                                               (12 blobs) for the validation images only
ReMIND   DemoReMIND2Reg  remind2reg  64^3      per patient: intra-operative ultrasound ``_0000`` (fixed,
                                               zero outside a cone), ceT1 ``_0001`` and T2 ``_0002``
                                               (moving); 3 training patients (one without T2) and 2
                                               validation patients with landmark CSVs (15 each)
=======  ==============  ==========  ========  =========================================================

Files as the organisers ship them (``../shared/docs/learn2reg-current.md``):

* LUMIR: ``{name}_dataset.json`` with ``training`` (image only) and ``validation`` pairs,
  ``imagesTr/ imagesVal/ labelsVal/ landmarksVal/``, images ``LUMIRMRI_SSSS_0000.nii.gz``, and
  LUMIR-format evaluation configs ``{name}_VAL_Segmentation_evaluation_config.json`` (NDV, DSC and
  HD95 over every label id, 0 included) and ``{name}_VAL_Landmark_evaluation_config.json`` (NDV,
  TRE from the landmark volumes), key ``name``. Rule set ``lumir25`` (:func:`learn2reg.rules.rules_for`).
* ReMIND2Reg: ``{name}_dataset.json`` (modalities ``3D iUS``/``ceT1``/``T2``, image-only
  ``training``, ``training_paired_images``, ``registration_val``), ``imagesTr/``, landmark CSVs
  ``landmarksTr/ReMIND2Reg_PPPP_000{0,1,2}.csv`` (voxel coordinates) for the validation patients,
  and ``{name}_VAL_evaluation_config.json`` (``task_name``, SDlogJ and TRE, pairs ``_0000 <- _0001``
  then ``_0000 <- _0002``). Rule set ``remind2reg``.

The ground truth goes into the task's marker (``demo_data.json``): LUMIR's pairs and landmark
count; per ReMIND2Reg patient the probe-tracking error (rotation, translation, voxel matrix), the
brain shift and the landmark error before registration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learn2reg import dataset
from learn2reg.eval_config import build_config
from learn2reg.io import Geometry, float3, save_nifti, write_json, write_points
from pipeline.demo.phantom_lumir import LABELS as LUMIR_LABELS
from pipeline.demo.phantom_lumir import LumirSubject, Template, lumir_subject, template_brain
from pipeline.demo.phantom_remind import TRE_RANGE, RemindPatient, remind_patient
from pipeline.demo.phantoms import Grid, make_rng

LICENSE = "CC0 (synthetic data)"


@dataclass(frozen=True)
class CurrentSpec:
    """A demo task of the current layouts: its key (``--tasks``), name, layout (``--layout``),
    image prefix, grid and the index of its random streams (T1-T4 use 1-4)."""

    key: str
    name: str
    layout: str
    prefix: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    stream: int
    subjects: int  # default count: LUMIR training images, ReMIND2Reg training patients
    minimum: int  # the smallest count the generator accepts (tests)

    @property
    def geometry(self) -> Geometry:
        """Axis-aligned LPS grid centred on the origin (the phantoms' mm frame)."""
        origin = float3(-(n - 1) / 2.0 * s for n, s in zip(self.shape, self.spacing, strict=True))
        return Geometry(shape=self.shape, spacing=self.spacing, direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), origin=origin)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.spacing)

    def stem(self, case_id: str) -> str:
        return f"{self.prefix}_{case_id}"


LUMIR = CurrentSpec("LUMIR", "DemoLUMIR", "lumir", "LUMIRMRI", (40, 56, 48), (1.0, 1.0, 1.0), 5, subjects=10, minimum=2)
REMIND = CurrentSpec("ReMIND", "DemoReMIND2Reg", "remind2reg", "ReMIND2Reg", (64, 64, 64), (1.0, 1.0, 1.0), 6, subjects=3, minimum=1)
LUMIR_VAL_CHAINS = (("Segmentation", 4), ("Landmark", 4))  # config, images per chain of consecutive ids
LUMIR_LANDMARKS = 12
REMIND_VAL_PATIENTS = 2


# ---------------------------------------------------------------------------------------- LUMIR


@dataclass(frozen=True)
class LumirTask:
    """A generated LUMIR-like task: ``subjects`` keyed by subject id (``int``), training ids
    first; validation pairs ``(fixed id, moving id)`` per evaluation config."""

    seed: int
    template: Template
    subjects: dict[int, LumirSubject]
    training: tuple[int, ...]
    val_chains: dict[str, tuple[tuple[int, int], ...]]

    @property
    def val_pairs(self) -> tuple[tuple[int, int], ...]:
        return tuple(pair for chain in self.val_chains.values() for pair in chain)


def generate_lumir(seed: int = 0, training: int | None = None) -> LumirTask:
    """The template (stream ``(seed, 5, 0)``) and every subject ``s`` (stream ``(seed, 5, s + 1)``):
    ``training`` image-only subjects (default 10), then the validation chains."""
    n = LUMIR.subjects if training is None else int(training)
    if n < LUMIR.minimum:
        raise ValueError(f"LUMIR: needs at least {LUMIR.minimum} training images, got {n}")
    template = template_brain(make_rng(seed, LUMIR.stream, 0), LUMIR.grid, LUMIR_LANDMARKS)
    chains: dict[str, tuple[tuple[int, int], ...]] = {}
    start = n
    for config, count in LUMIR_VAL_CHAINS:
        ids = range(start, start + count)
        chains[config] = tuple((m + 1, m) for m in ids[:-1])  # fixed = moving + 1
        start += count
    subjects = {s: lumir_subject(make_rng(seed, LUMIR.stream, s + 1), LUMIR.grid, template) for s in range(start)}
    return LumirTask(seed=seed, template=template, subjects=subjects, training=tuple(range(n)), val_chains=chains)


def _lumir_path(folder: str, s: int) -> str:
    return f"./{folder}/{LUMIR.stem(f'{s:04d}_0000')}.nii.gz"


def write_lumir(task: LumirTask, root: Path) -> dict[str, Any]:
    """Write the LUMIR-layout folder; returns the marker's task-specific entries."""
    geo = LUMIR.geometry
    val_ids = sorted({s for pair in task.val_pairs for s in pair})
    for s in task.training:
        save_nifti(root / _lumir_path("imagesTr", s), task.subjects[s].image, geo)
    for s in val_ids:
        subject = task.subjects[s]
        for folder, array in (("imagesVal", subject.image), ("labelsVal", subject.label), ("landmarksVal", subject.landmark_volume)):
            save_nifti(root / _lumir_path(folder, s), array, geo)
    pair = {f: {"fixed": _lumir_path("imagesVal", f), "moving": _lumir_path("imagesVal", m)} for f, m in task.val_pairs}
    meta = dataset.build_description(
        LUMIR.name, LUMIR.shape, [{"image": _lumir_path("imagesTr", s)} for s in task.training], list(pair.values()),
        modality={"0": "T1w Brain MRI"}, val_key="validation", release=f"demo-{task.seed}",
        description=f"Synthetic LUMIR-like inter-subject T1w brain MRI in [0, 255]. Generated by `python -m pipeline "
                    f"demo-data --layout lumir` (seed {task.seed}).", license=LICENSE, reference="synthetic",
    )
    dataset.write_description(root, meta)
    labels = [0, *sorted(LUMIR_LABELS)]
    ndv = {"name": "Non-diffeomorphic Volumes", "metric": "ndv"}
    methods = {
        "Segmentation": [ndv, {"name": "DSC", "metric": "dice", "labels": labels}, {"name": "HD95", "metric": "hd95", "labels": labels}],
        "Landmark": [ndv, {"name": "TRE_lm", "metric": "tre", "dest": "landmarks"}],
    }
    for config, chain in task.val_chains.items():
        write_json(root / f"{LUMIR.name}_VAL_{config}_evaluation_config.json", {
            "name": LUMIR.name, "evaluation_methods": methods[config], "expected_shape": [*LUMIR.shape, 3],
            "eval_pairs": [pair[f] for f, _ in chain], "eval_config_version": 0.0, "masked_evaluation": False,
        })
    residual = max(subject.residual for subject in task.subjects.values())
    return {"training": len(task.training), "landmarks": LUMIR_LANDMARKS, "landmark_residual_voxels": residual,
            "val_pairs": {config: [f"{f:04d}_0000<--{m:04d}_0000" for f, m in chain] for config, chain in task.val_chains.items()}}


# ---------------------------------------------------------------------------------- ReMIND2Reg


@dataclass(frozen=True)
class RemindTask:
    """A generated ReMIND2Reg-like task: ``patients`` keyed by patient id, training ones first;
    ``without_t2``: the training patients that have no T2 (as not every real case has both)."""

    seed: int
    patients: dict[int, RemindPatient]
    training: tuple[int, ...]
    validation: tuple[int, ...]
    without_t2: tuple[int, ...]

    def modalities(self, p: int) -> tuple[str, ...]:
        return ("0000", "0001") if p in self.without_t2 else ("0000", "0001", "0002")

    @property
    def val_pairs(self) -> tuple[tuple[str, str], ...]:
        """``(fixed, moving)`` case ids: every patient's ceT1 pair, then every T2 pair (as ReMIND2Reg's config)."""
        return tuple((f"{p:04d}_0000", f"{p:04d}_{m}") for m in ("0001", "0002") for p in self.validation)


def generate_remind(seed: int = 0, training: int | None = None) -> RemindTask:
    """``training`` patients (default 3; every second one from the second on lacks the T2), then
    the validation patients; patient ``p`` comes from the stream ``(seed, 6, p)``."""
    n = REMIND.subjects if training is None else int(training)
    if n < REMIND.minimum:
        raise ValueError(f"ReMIND: needs at least {REMIND.minimum} training patient, got {n}")
    ids = range(n + REMIND_VAL_PATIENTS)
    patients = {p: remind_patient(make_rng(seed, REMIND.stream, p), REMIND.grid) for p in ids}
    return RemindTask(seed=seed, patients=patients, training=tuple(ids[:n]), validation=tuple(ids[n:]),
                      without_t2=tuple(p for p in ids[:n] if p % 2 == 1))


def write_remind(task: RemindTask, root: Path) -> dict[str, Any]:
    """Write the ReMIND2Reg-layout folder; returns the marker's task-specific entries."""
    geo = REMIND.geometry

    def image(case_id: str) -> str:
        return f"./imagesTr/{REMIND.stem(case_id)}.nii.gz"

    training, paired = [], []
    for p, patient in task.patients.items():
        arrays = {"0000": patient.us, "0001": patient.t1, "0002": patient.t2}
        for m in task.modalities(p):
            save_nifti(root / image(f"{p:04d}_{m}"), arrays[m], geo)
            training.append({"image": image(f"{p:04d}_{m}")})
            if p in task.validation:
                write_points(root / "landmarksTr" / f"{REMIND.stem(f'{p:04d}_{m}')}.csv", patient.fixed if m == "0000" else patient.moving)
            elif m != "0000":
                paired.append({"fixed": image(f"{p:04d}_0000"), "moving": image(f"{p:04d}_{m}")})
    val = [{"fixed": image(f), "moving": image(m)} for f, m in task.val_pairs]
    meta = dataset.build_description(
        REMIND.name, REMIND.shape, training, val, modality={"0": "3D iUS", "1": "ceT1", "2": "T2"}, training_paired_images=paired,
        release=f"demo-{task.seed}", description=f"Synthetic ReMIND2Reg-like intra-operative ultrasound (fixed) and pre-operative "
                                                 f"ceT1/T2 MR (moving). Generated by `python -m pipeline demo-data --layout remind2reg` (seed {task.seed}).",
        license=LICENSE, reference="synthetic",
    )
    dataset.write_description(root, meta)
    write_json(root / f"{REMIND.name}_VAL_evaluation_config.json", build_config(REMIND.name, REMIND.shape, val, points=["landmarks"]))
    return {
        "tre_range_mm": list(TRE_RANGE),
        "without_t2": [f"{p:04d}" for p in task.without_t2],
        "patients": {f"{p:04d}": _patient_record(task, p) for p in task.patients},
        "val_pairs": {f"{f}<--{m}": task.patients[int(f[:4])].initial_tre_mm for f, m in task.val_pairs},  # initial TRE, mm
    }


def _patient_record(task: RemindTask, p: int) -> dict[str, Any]:
    """What the marker records of a patient: split, rigid probe-tracking error, brain shift, initial TRE."""
    patient = task.patients[p]
    return {
        "split": "val" if p in task.validation else "train",
        "modalities": list(task.modalities(p)),
        "rotation_deg": list(patient.rotation_deg),
        "translation_mm": list(patient.translation_mm),
        "rigid_voxel_matrix": patient.rigid.tolist(),  # ultrasound voxel (after brain shift) -> MR voxel
        "brain_shift_max_mm": patient.shift_max_mm,
        "landmarks": len(patient.fixed),
        "initial_tre_mm": patient.initial_tre_mm,
    }


# ------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class CurrentDemo:
    """How ``demo-data`` makes one task of the current layouts: generate, then write."""

    spec: CurrentSpec
    generate: Callable[[int, int | None], Any]
    write: Callable[[Any, Path], dict[str, Any]]


CURRENT = {demo.spec.key: demo for demo in (CurrentDemo(LUMIR, generate_lumir, write_lumir), CurrentDemo(REMIND, generate_remind, write_remind))}
LAYOUT_TASKS = {demo.spec.layout: demo.spec.key for demo in CURRENT.values()}  # layout -> its task key
