"""Preprocessing: optional half resolution, CT windowing, [0, 1] normalisation, disk cache.

Network grids are corner-aligned with the original grids (``evaluation.contract``): at half
resolution an ``N``-voxel axis becomes ``(N + 1) // 2`` voxels, images are resampled linearly,
labels and masks by nearest neighbour, points scaled with ``scale_points``. Prediction may run
the network on another scale of that grid (:func:`prediction_shape`, ``predict.input_scale`` or
``predict.target_spacing``). Padding to the network's multiple happens inside the model (pad
and crop back), never here.

``python -m pipeline preprocess --data TASK_DIR --config CFG.json [--cache DIR]`` fills the
cache for every case of a task; training and prediction read through the same cache, so a
repeated run skips the work.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.contract import resize_image, scale_points
from evaluation.dataset import Case, Task, load_task
from evaluation.io import DataError, Geometry, atomic_path, load_nifti, read_points
from evaluation.progress import progress
from evaluation.segmentation import check_label_map, check_mask, label_dtype, max_label
from pipeline.config import PreprocessConfig, RunConfig, load_config

log = logging.getLogger(__name__)
# 2: label maps and masks are checked (earlier caches may hold labels cast without a check)
CACHE_VERSION = 2
# Largest label id training accepts: the Dice loss one-hot encodes 0..max label per voxel.
MAX_TRAINING_LABEL = 1000


@dataclass(frozen=True)
class Prepared:
    """One case on the network grid. ``image`` float32 in [0, 1]; labels the smallest unsigned
    dtype that holds them (uint8, or uint16 above 255), masks uint8 0/1;
    points ``N x 3`` voxel coordinates on the network grid; ``spacing`` in mm of that grid."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    mask: np.ndarray | None
    keypoints: np.ndarray | None
    landmarks: np.ndarray | None
    spacing: tuple[float, float, float]
    original_shape: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)


def network_shape(shape: tuple[int, ...], cfg: PreprocessConfig) -> tuple[int, int, int]:
    """The network grid for an image grid: the same, or ``(N + 1) // 2`` per axis."""
    return tuple((n + 1) // 2 if cfg.half_resolution else n for n in shape[:3])


def scaled_shape(shape: Sequence[int], scale: float | Sequence[float]) -> tuple[int, int, int]:
    """The corner-aligned grid ``scale`` times as fine as ``shape`` (per axis, or one number for
    all): ``floor((n - 1) * s + 0.5) + 1`` voxels. It spans the same extent (first and last voxel
    centres unchanged, ``evaluation.contract``), so its spacing is ``spacing * (n - 1) / (m - 1)``:
    exactly ``spacing / s`` when ``(n - 1) * s`` is whole (any integer ``s``: an 80-voxel 2 mm
    axis at ``s = 2`` becomes 159 voxels of 1 mm), else the nearest grid. ``s = 1`` keeps the
    grid. ``ValueError`` when an axis of two or more voxels would shrink to one.
    """
    scales = [float(scale)] * 3 if isinstance(scale, (int, float)) else [float(s) for s in scale]
    if len(scales) != 3 or not all(s > 0 and math.isfinite(s) for s in scales):
        raise ValueError(f"scale must be one or three finite numbers > 0, got {scale!r}")
    out = tuple(math.floor((n - 1) * s + 0.5) + 1 for n, s in zip(shape[:3], scales, strict=True))
    if any(m < 2 <= n for n, m in zip(shape[:3], out, strict=True)):
        raise ValueError(f"scale {scale!r} shrinks the grid {tuple(shape[:3])} to {out}: an axis would be a single voxel")
    return out


def prediction_shape(shape: Sequence[int], spacing: Sequence[float], cfg: RunConfig) -> tuple[int, int, int]:
    """The grid the network runs on at prediction for an image of ``shape`` and ``spacing`` (mm).

    ``predict.target_spacing`` set: the image grid scaled per axis by ``spacing / target_spacing``
    (absolute: it replaces ``preprocess.half_resolution``). Otherwise the preprocessing grid
    (:func:`network_shape`, composing with ``half_resolution``) scaled by ``predict.input_scale``;
    the default 1 is the training grid. Either way corner-aligned with the image grid, so the
    field returns to it through ``evaluation.contract.field_on_grid``.
    """
    if cfg.predict.target_spacing is not None:
        return scaled_shape(shape, [s / cfg.predict.target_spacing for s in spacing])
    return scaled_shape(network_shape(shape, cfg.preprocess), cfg.predict.input_scale)


def normalise(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Intensities to [0, 1] with background 0: clip to ``cfg.window`` (CT, HU) or to
    [min, percentile] (MR/US), then scale linearly."""
    image = image.astype(np.float32, copy=False)
    if cfg.window is not None:
        lo, hi = (float(v) for v in cfg.window)
    else:
        lo, hi = float(image.min()), float(np.percentile(image, cfg.percentile))
    if not hi > lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def network_image(image: np.ndarray, cfg: PreprocessConfig, shape: Sequence[int] | None = None) -> np.ndarray:
    """An image (``X x Y x Z``, scanner units) as network input: normalised to [0, 1], on the
    network grid (:func:`network_shape`, or the corner-aligned grid ``shape``, e.g. from
    :func:`prediction_shape`: resampled linearly in one step)."""
    img = normalise(image, cfg)
    shape = network_shape(image.shape, cfg) if shape is None else tuple(int(n) for n in shape)
    if shape != image.shape:
        img = np.clip(resize_image(img, shape, order=1), 0.0, 1.0)
    return img.astype(np.float32)


def load_image(path: Path) -> tuple[np.ndarray, Geometry]:
    """A registration input: a 3-D NIfTI without NaN/Inf (``DataError`` naming the file)."""
    image, geom = load_nifti(path)
    if image.ndim != 3:
        raise DataError(f"{path}: expected a 3-D image, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise DataError(f"{path}: contains NaN or Inf voxels")
    return image, geom


def load_segmentation(path: Path, kind: str, image_shape: tuple[int, ...]) -> np.ndarray:
    """A label map (``kind="label"``) or mask (``"mask"``) of an image, checked like ``validate``
    checks it (``evaluation.segmentation``): labels non-negative integers up to
    ``MAX_TRAINING_LABEL`` (stored as the smallest unsigned dtype that holds them), masks exactly
    {0, 1} (uint8), the image's shape. ``DataError`` naming the file otherwise."""
    arr, _ = load_nifti(path, dtype=None)
    if arr.shape != tuple(image_shape):
        raise DataError(f"{path}: shape {arr.shape} differs from its image {tuple(image_shape)}")
    if kind == "mask":
        check_mask(path, arr)
        return arr.astype(np.uint8)
    check_label_map(path, arr)
    top = max_label(arr)
    if top > MAX_TRAINING_LABEL:
        raise DataError(
            f"{path}: label {top} is too large: training one-hot encodes labels 0..max ({top + 1} channels per "
            f"voxel); at most {MAX_TRAINING_LABEL} is supported (renumber the labels)"
        )
    return arr.astype(label_dtype(top))


def prepare_case(case: Case, cfg: PreprocessConfig) -> Prepared:
    """Load and preprocess one case (raises ``DataError`` naming a bad file)."""
    image, geom = load_image(case.image)
    shape = network_shape(image.shape, cfg)
    resample = shape != image.shape

    def segmentation(path: Path | None, kind: str) -> np.ndarray | None:
        if path is None:
            return None
        arr = load_segmentation(path, kind, image.shape)
        return resize_image(arr, shape, order=0) if resample else arr

    def points(path: Path | None) -> np.ndarray | None:
        if path is None:
            return None
        pts = read_points(path)
        return scale_points(pts, image.shape, shape) if resample else pts

    spacing = np.asarray(geom.spacing) * (np.asarray(image.shape) - 1) / np.maximum(np.asarray(shape) - 1, 1)
    return Prepared(
        case_id=case.case_id,
        image=network_image(image, cfg),
        label=segmentation(case.label, "label"),
        mask=segmentation(case.mask, "mask"),
        keypoints=points(case.keypoints),
        landmarks=points(case.landmarks),
        spacing=tuple(float(s) for s in spacing),
        original_shape=tuple(int(n) for n in image.shape),
    )


def _cache_file(cache_dir: Path, task: Task, case: Case, cfg: PreprocessConfig) -> Path:
    """Cache path keyed by the preprocessing config and the source files' sizes and mtimes."""
    stamp = [str(CACHE_VERSION), repr(cfg)]
    for p in (case.image, case.label, case.mask, case.keypoints, case.landmarks):
        if p is not None and p.exists():
            st = p.stat()
            stamp.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256("|".join(stamp).encode()).hexdigest()[:16]
    return cache_dir / task.name / f"{case.case_id}_{key}.npz"


def load_prepared(task: Task, case_id: str, cfg: PreprocessConfig, cache_dir: Path | None = None) -> Prepared:
    """A preprocessed case, from the cache when present (written atomically otherwise)."""
    case = task.case(case_id)
    if cache_dir is None:
        return prepare_case(case, cfg)
    path = _cache_file(Path(cache_dir), task, case, cfg)
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            get = {k: z[k] for k in z.files}
        return Prepared(
            case_id=case_id,
            image=get["image"],
            label=get.get("label"),
            mask=get.get("mask"),
            keypoints=get.get("keypoints"),
            landmarks=get.get("landmarks"),
            spacing=tuple(float(s) for s in get["spacing"]),
            original_shape=tuple(int(n) for n in get["original_shape"]),
        )
    prepared = prepare_case(case, cfg)
    arrays = {
        k: v
        for k, v in {
            "image": prepared.image,
            "label": prepared.label,
            "mask": prepared.mask,
            "keypoints": prepared.keypoints,
            "landmarks": prepared.landmarks,
            "spacing": np.asarray(prepared.spacing),
            "original_shape": np.asarray(prepared.original_shape),
        }.items()
        if v is not None
    }
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
    return prepared


def preprocess_task(task_dir: Path, cfg: PreprocessConfig, cache_dir: Path) -> list[str]:
    """Fill the cache for every case; returns the problems (one per failed case)."""
    task = load_task(task_dir)
    problems = []
    for case_id in progress(sorted(task.cases), desc=f"preprocess {task.name}", unit="case", logger=log):
        try:
            load_prepared(task, case_id, cfg, cache_dir)
        except DataError as exc:
            problems.append(str(exc))
    return problems


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="task folder")
    parser.add_argument("--config", type=Path, required=True, help="run configuration (JSON)")
    parser.add_argument("--cache", type=Path, default=Path("cache"), help="cache folder")


def run(args: argparse.Namespace) -> int:
    problems = preprocess_task(args.data, load_config(args.config).preprocess, args.cache)
    for p in problems:
        print(f"error: {p}")
    return 1 if problems else 0
