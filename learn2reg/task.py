"""Learn2Reg task folders, both generations, read into one typed model.

* current layout (2022 on): ``{TASK}_dataset.json`` + ``imagesTr/ labelsTr/ masksTr/
  keypointsTr/ landmarksTr/`` (``imagesTs/`` for test), files ``{TASK}_{SSSS}_{MMMM}.nii.gz``;
* 2020 layout: one folder per task, ``images/`` with ``img{SSSS}.nii.gz`` (inter-patient) or
  ``img{SSSS}_fixed.nii.gz`` + ``img{SSSS}_moving.nii.gz`` (intra-patient), sibling folders
  ``labels/ masks/ keypoints/ landmarks/`` with the same stems, ``pairs_val.csv`` (header
  ``fixed,moving``, integer subject ids), optional ``pairs_test.csv`` and ``task.json``.

Both become a :class:`Task` whose cases are keyed ``SSSS_MMMM`` (2020 inter-patient images
are ``SSSS_0000``; intra-patient fixed/moving roles are ``_0000``/``_0001``). Loading touches
no voxel data: structural problems (paths escaping the folder, unreadable pair lists) are
collected in ``Task.problems`` so that ``validate`` can list every problem at once; those of
registration pairs are also kept per split (``Task.pair_problems``), so that every stage that
works on a split reports the pairs it cannot read instead of skipping them.

Pairs may name images that lie in the task's image folders but are not listed under
``training`` (held-out subjects; the official evaluator reads files by path): such an image
becomes a case with ``listed=False``, usable for prediction and evaluation but never trained on.

The 2024-2026 tasks (../shared/docs/learn2reg-current.md) read into the same model:

* LUMIR / LUMIR25: validation pairs under ``validation`` between images of ``imagesVal/``
  (never listed: cases with ``split="val"``), image-only training, the image prefix
  ``LUMIRMRI`` (not the task name), multi-contrast pairs whose moving image is ``_0001``; the
  landmarks are label *volumes* ``landmarksVal/{stem}.nii.gz`` (blob ids, 0 = background):
  :attr:`Case.landmark_volume`, apart from the CSV :attr:`Case.landmarks`.
* ReMIND2Reg: fixed ultrasound ``_0000``, moving ceT1 ``_0001`` and T2 ``_0002``, no training
  annotations, landmark CSVs for the validation cases only.
* OncoReg / revised ThoraxCBCT: pairs fixed ``_0001``/``_0002`` <- moving ``_0000`` with their
  keypoints in ``keypoints01Tr``/``keypoints02Tr``: one image has different points per pair, so
  points are looked up per pair (:meth:`Task.pair_points`).

Case ids are ``SSSS_MMMM`` from the end of the file name, whatever the prefix. Which
organisers' rule set (evaluator, file names) a folder follows is :attr:`Task.rules`
(:func:`learn2reg.rules.rules_for`; :meth:`Task.with_rules` for a command line's ``--rules``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from pathlib import Path

from learn2reg import dataset
from learn2reg.io import DataError
from learn2reg.rules import point_folders, rules_for


class Layout(StrEnum):
    """The two generations of task folders and of submissions (a ``str``: ``Layout.L2R == "l2r"``)."""

    L2R = "l2r"  # 2022 on: {TASK}_dataset.json, imagesTr/..., disp_{fixed}_{moving}.nii.gz channels last
    L2R2020 = "l2r2020"  # 2020: images/, pairs_val.csv, task_0N/disp_XXXX_YYYY.npz float16 channels first


# Case field -> sibling folder stem ("labelsTr" / "labels", ...).
SIBLINGS = {"label": "labels", "mask": "masks", "keypoints": "keypoints", "landmarks": "landmarks"}
POINT_KINDS = ("keypoints", "landmarks")
# LUMIR's landmarks: label volumes in the landmarks folder, under the image's own name.
VOLUME_KIND = "landmark_volume"
_CASE_RE = re.compile(r"(\d{4})_(\d{4})\.nii\.gz$")


@dataclass(frozen=True)
class Case:
    """One image and what belongs to it. Paths are absolute; ``None`` = not provided."""

    case_id: str  # "SSSS_MMMM"
    image: Path
    label: Path | None = None
    mask: Path | None = None
    keypoints: Path | None = None
    landmarks: Path | None = None  # CSV points (N x 3 voxel coordinates)
    split: str = "train"  # "train" | "val" (an imagesVal/ image) | "test"
    listed: bool = True  # False: named only by a registration pair, not by training/test
    # LUMIR: landmarks as a label volume (blob ids 1..K, 0 = background) on the image's grid,
    # ``landmarksVal/{stem}.nii.gz``; the organisers' TRE compares the blobs' centroids.
    landmark_volume: Path | None = None

    @property
    def subject(self) -> str:
        return self.case_id.split("_")[0]

    @property
    def modality(self) -> str:
        return self.case_id.split("_")[1]


@dataclass(frozen=True)
class Pair:
    """A registration pair: ``fixed`` and ``moving`` are case ids."""

    fixed: str
    moving: str

    @property
    def key(self) -> str:
        """The evaluator's case key, ``SSSS_MMMM<--SSSS_MMMM`` (fixed <-- moving)."""
        return f"{self.fixed}<--{self.moving}"


@dataclass(frozen=True)
class Task:
    """A Learn2Reg task folder, read into one model (no voxel data loaded)."""

    name: str
    root: Path
    layout: Layout
    shape: tuple[int, int, int] | None
    modality: dict[str, str]
    labels: dict[int, str]
    cases: dict[str, Case]
    training: tuple[str, ...]
    pairs: dict[str, tuple[Pair, ...]]  # "train" (intra-patient only), "val", "test"
    intra_patient: bool
    problems: tuple[str, ...] = field(default=())
    pair_problems: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> unreadable pair entries
    pair_keys: dict[str, str] = field(default_factory=dict)  # split -> the json key of its pairs ("validation"...)
    told_rules: str | None = None  # a rule set named on the command line (--rules), else the folder's own

    def split_problems(self, split: str) -> tuple[str, ...]:
        """Pair entries of ``split`` ("val", "test") that could not be read (file, entry, reason)."""
        return self.pair_problems.get(split, ())

    @property
    def entry_problems(self) -> tuple[str, ...]:
        """Problems of the image entries (``training``/``test``, 2020 image names), not of pairs."""
        in_pairs = {p for probs in self.pair_problems.values() for p in probs}
        return tuple(p for p in self.problems if p not in in_pairs)

    def case(self, case_id: str) -> Case:
        try:
            return self.cases[case_id]
        except KeyError:
            raise DataError(f"{self.root}: no case {case_id!r} in task {self.name}") from None

    def training_pairs(self) -> tuple[Pair, ...]:
        """Intra-patient: the task's paired images; inter-patient: all ordered pairs of
        distinct training subjects (both directions)."""
        if self.intra_patient:
            return self.pairs.get("train", ())
        ids = sorted(self.training)
        return tuple(Pair(f, m) for f in ids for m in ids if f != m)

    @cached_property
    def rules(self) -> str:
        """The organisers' rule set this folder follows (:func:`learn2reg.rules.rules_for`), or the
        one it was told (:meth:`with_rules`)."""
        return rules_for(self, self.told_rules)

    def with_rules(self, told: str | None) -> Task:
        """This task under the rule set ``told`` (a ``--rules`` choice; ``None``: its own);
        ``DataError`` for an unknown name."""
        if told is None:
            return self
        rules_for(self, told)  # refuses an unknown name
        return replace(self, told_rules=told)

    @property
    def image_prefixes(self) -> tuple[str, ...]:
        """The file name prefixes of the images (``LUMIRMRI``, ``ReMIND2Reg``...), sorted."""
        found = (_CASE_RE.search(c.image.name) for c in self.cases.values())
        return tuple(sorted({m.string[: m.start()].rstrip("_") for m in found if m is not None}))

    def pair_points(self, pair: Pair, kind: str, rules: str | None = None) -> tuple[Path | None, Path | None]:
        """The point files (``kind``: keypoints | landmarks) of a pair, fixed and moving; ``None``
        for a file that is not there. Between modalities other than equal or ``0000 -> 0001`` a
        folder named after both modalities is looked for first (:func:`point_folders`: OncoReg's
        ``keypoints01Tr``, the L2R evaluator's ``keypoints00000001Tr``); a folder of which one of
        the pair's files exists is returned as it is, so a missing partner is reported, not masked."""
        fixed, moving = self.case(pair.fixed), self.case(pair.moving)
        folders = point_folders(rules or self.rules, kind, pair.fixed, pair.moving)
        for folder in [] if folders == [kind] else folders:  # [kind]: the images' own folder, the cases' files
            f, m = derived_path(fixed.image, folder, points=True), derived_path(moving.image, folder, points=True)
            if f.is_file() or m.is_file():
                return (f if f.is_file() else None), (m if m.is_file() else None)
        return getattr(fixed, kind), getattr(moving, kind)


def load_task(root: str | Path) -> Task:
    """Read a task folder of either layout; ``DataError`` naming the file if it is neither or
    if its description is malformed beyond what ``Task.problems`` can carry."""
    from learn2reg.task2020 import archive_hint, load_2020  # the 2020 reader builds on this module's model

    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: task folder not found")
    json_path = dataset.description_path(root)
    description = json_path or root / dataset.TASK_JSON_2020
    try:
        if json_path is not None:
            return _load_l2r(root, json_path)
        if (root / "pairs_val.csv").exists() or (root / "images").is_dir():
            return load_2020(root)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{description}: malformed task description ({type(exc).__name__}: {exc})") from exc
    hint = archive_hint(root)  # a raw 2020 archive: say how to convert it
    raise DataError(f"{root}: neither a *_dataset.json (current layout) nor images/ + pairs_val.csv (2020 layout){hint}")


def path_within(root: Path, rel: str) -> Path | None:
    """``root / rel`` normalised as written (``..`` collapsed, symlinks kept), or ``None`` when
    ``rel`` is absolute or leaves ``root`` through ``..``. A symlink in the folder is followed when
    the file is read, wherever it points: large datasets are linked rather than copied, and the
    organisers' evaluators follow links too."""
    path = Path(os.path.normpath(root / rel))
    return None if Path(rel).is_absolute() or not path.is_relative_to(root) else path


def _inside(root: Path, rel: str, problems: list[str], where: str) -> Path | None:
    """A json path under ``root`` (:func:`path_within`); a problem is recorded if it is empty,
    absolute or leaves ``root``."""
    if not rel:
        problems.append(f"{where}: missing path")
        return None
    if Path(rel).is_absolute():
        problems.append(f"{where}: absolute path {rel!r} is not allowed (must stay inside {root})")
        return None
    path = path_within(root, rel)
    if path is None:
        problems.append(f"{where}: path {rel!r} escapes the task folder {root}")
    return path


def _case_id(path: Path) -> str:
    match = _CASE_RE.search(path.name)
    if not match:
        raise DataError(f"{path}: file name does not end in _SSSS_MMMM.nii.gz")
    return f"{match[1]}_{match[2]}"


def derived_path(image: Path, kind: str, points: bool | None = None) -> Path:
    """The official naming rule for a sibling file of an image: replace 'images' by ``kind`` in
    the folder name, and ``.nii.gz`` by ``.csv`` for point files (``points``; default: ``kind``
    is one of :data:`POINT_KINDS`). ``points=False`` with ``"landmarks"``: LUMIR's label volume."""
    parent = image.parent.name.replace("images", kind)
    name = image.name
    if kind in POINT_KINDS if points is None else points:
        name = name.replace(".nii.gz", ".csv")
    return image.parent.parent / parent / name


def _siblings(root: Path, image: Path, entry: dict, problems: list[str], where: str) -> dict[str, Path | None]:
    """A case's label, mask, point files and landmark volume: the entry's paths, else the files
    that exist under the official names. A ``landmarks`` path ending in ``.nii.gz`` is a volume."""
    extra: dict[str, Path | None] = {}
    for key, kind in SIBLINGS.items():
        if key in entry:
            path = _inside(root, str(entry[key]), problems, f"{where} ({key})")
            if key == "landmarks" and str(entry[key]).endswith(".nii.gz"):
                extra[VOLUME_KIND] = path
                continue
            extra[key] = path
        else:
            derived = derived_path(image, kind)
            extra[key] = derived if derived.exists() else None
    if VOLUME_KIND not in extra:
        volume = derived_path(image, "landmarks", points=False)
        extra[VOLUME_KIND] = volume if volume.exists() else None
    extra.setdefault("landmarks", None)
    return extra


def _l2r_case(root: Path, entry: dict, split: str, problems: list[str], where: str) -> Case | None:
    image = _inside(root, str(entry.get("image", "")), problems, f"{where} (image)")
    if image is None:
        return None
    extra = _siblings(root, image, entry, problems, where)
    try:
        case_id = _case_id(image)
    except DataError as exc:
        problems.append(str(exc))
        return None
    return Case(case_id, image, split=split, listed=True, **extra)


def _load_l2r(root: Path, json_path: Path) -> Task:
    meta = dataset.read_description(json_path)
    problems: list[str] = []
    cases: dict[str, Case] = {}
    training: list[str] = []
    for split, key in dataset.IMAGE_LISTS:
        for i, entry in enumerate(meta.get(key, []) or []):
            entry = entry if isinstance(entry, dict) else {"image": entry}
            case = _l2r_case(root, entry, split, problems, f"{json_path.name} {key}[{i}]")
            if case is not None:
                cases[case.case_id] = case
                if split == "train":
                    training.append(case.case_id)
    pairs: dict[str, tuple[Pair, ...]] = {}
    pair_problems: dict[str, tuple[str, ...]] = {}
    pair_keys: dict[str, str] = {}
    for split, default in dataset.PAIR_LISTS:
        key = dataset.pair_key(meta, split) or default
        if key in meta:
            pair_keys[split] = key
        found, mine = [], []
        for i, entry in enumerate(meta.get(key, []) or []):
            where = f"{json_path.name} {key}[{i}]"
            if not isinstance(entry, dict):
                mine.append(f"{where}: expected an object with 'fixed' and 'moving', got {entry!r}")
                continue
            found_paths = [_inside(root, str(entry.get(r, "")), mine, f"{where} ({r})") for r in ("fixed", "moving")]
            paths = [path for path in found_paths if path is not None]
            if len(paths) != 2:
                continue
            try:
                ids = [_case_id(path) for path in paths]
            except DataError as exc:
                mine.append(f"{where}: {exc}")
                continue
            for case_id, path in zip(ids, paths, strict=True):
                if case_id not in cases:  # named by the pair only (a held-out subject in imagesTr, LUMIR's imagesVal)
                    cases[case_id] = _unlisted_case(root, case_id, path)
            found.append(Pair(*ids))
        pairs[split] = tuple(found)
        pair_problems[split] = tuple(mine)
        problems += mine
    intra = str(meta.get("pairings", "unpaired")).lower() == "paired"
    if intra:
        pairs["train"] = _paired_training(meta, training)
    return Task(
        name=dataset.task_name(meta, json_path),
        root=root,
        layout=Layout.L2R,
        shape=dataset.shape3(meta.get("tensorImageShape", {}).get("0")),
        modality={str(k): str(v) for k, v in (meta.get("modality") or {}).items()},
        labels=dataset.labels(meta.get("labels", {})),
        cases=cases,
        training=tuple(training),
        pairs=pairs,
        intra_patient=intra,
        problems=tuple(problems),
        pair_problems=pair_problems,
        pair_keys=pair_keys,
    )


def _unlisted_case(root: Path, case_id: str, image: Path) -> Case:
    """A case named only by a registration pair: its siblings by the official naming rule; its
    split from its folder (``imagesTs`` test, ``imagesVal`` val, else train)."""
    extra = _siblings(root, image, {}, [], "")
    folder = image.parent.name
    split = "test" if folder.endswith("Ts") else "val" if folder.endswith("Val") else "train"
    return Case(case_id, image, split=split, listed=False, **extra)


def _paired_training(meta: dict, training: list[str]) -> tuple[Pair, ...]:
    """Intra-patient training pairs: the ``training_paired_images`` entries whose images are both
    training cases (ThoraxCBCT lists each subject's two CBCTs against its CT there), else each
    subject's fixed/moving modality per ``registration_direction`` (default fixed 0000, moving 0001)."""
    ids = set(training)
    listed = meta.get("training_paired_images")
    if isinstance(listed, list) and listed:
        pairs = []
        for entry in listed:
            names = [Path(str(entry.get(r, ""))).name for r in ("fixed", "moving")] if isinstance(entry, dict) else []
            found = [m for m in (_CASE_RE.search(name) for name in names) if m is not None]
            if len(found) == 2:
                pair = Pair(*(f"{m[1]}_{m[2]}" for m in found))
                if pair.fixed in ids and pair.moving in ids:
                    pairs.append(pair)
        return tuple(dict.fromkeys(pairs))
    direction = meta.get("registration_direction") or {}
    fixed_m = f"{int(direction.get('fixed', 0)):04d}"
    moving_m = f"{int(direction.get('moving', 1)):04d}"
    subjects = sorted({c.split("_")[0] for c in training})
    return tuple(
        Pair(f"{s}_{fixed_m}", f"{s}_{moving_m}")
        for s in subjects
        if f"{s}_{fixed_m}" in ids and f"{s}_{moving_m}" in ids
    )
