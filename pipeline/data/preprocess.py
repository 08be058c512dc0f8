"""Preprocessing: optional half resolution, CT windowing, [0, 1] normalisation, disk cache.

CT windows are stated in HU (``preprocess.window``); what the stored values add to HU is
``preprocess.hu_offset``, declared or detected per image (:func:`detect_hu_offset`: the 2020
lung data store HU + 1024, the current tasks HU). Every windowed image is checked: when more
than half of its foreground lies outside the window (:func:`check_window`), a warning names the
file, so a window meant for the other convention cannot pass unnoticed.

Network grids are corner-aligned with the original grids (``learn2reg.contract``): at half
resolution an ``N``-voxel axis becomes ``(N + 1) // 2`` voxels, images are resampled linearly,
labels and masks by nearest neighbour, points scaled with ``scale_points``. Prediction may run
the network on another scale of that grid (:func:`prediction_shape`, ``predict.input_scale`` or
``predict.target_spacing``). Padding to the network's multiple happens inside the model (pad
and crop back), never here.

``python -m pipeline preprocess --data TASK_DIR --config CFG.json [--cache DIR]`` fills the
cache for every case of a task; training and prediction read through the same cache, so a
repeated run skips the work. Several processes may fill one cache at once (the ranks of a
``torchrun`` job on a fresh run folder, two jobs sharing ``--cache``): each writes a case under a
temporary of its own and renames it into place (``learn2reg.io.atomic_path``), so a reader only
ever sees a complete file; one that cannot be read anyway (a disk that failed) is made again.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from learn2reg.contract import resize_image, scale_points
from learn2reg.io import (
    DataError,
    Geometry,
    atomic_path,
    check_output_path,
    float3,
    int3,
    load_nifti,
    read_nifti_scaling,
    read_points,
)
from learn2reg.progress import progress
from learn2reg.segmentation import check_label_map, check_mask, label_dtype, max_label
from learn2reg.task import Case, Task, load_task
from pipeline.config import PreprocessConfig, RunConfig, load_config

log = logging.getLogger(__name__)
# 2: label maps and masks are checked (earlier caches may hold labels cast without a check)
# 3: windows are in HU, the stored values' offset declared or detected (preprocess.hu_offset)
CACHE_VERSION = 3
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
        return int3(self.image.shape)


def network_shape(shape: Sequence[int], cfg: PreprocessConfig, spacing: Sequence[float] | None = None) -> tuple[int, int, int]:
    """The network grid for an image grid: the same, or ``(N + 1) // 2`` per axis
    (``half_resolution``), or with ``cfg.target_spacing`` the corner-aligned grid at that spacing
    per axis (:func:`scaled_shape` by ``spacing / target_spacing``; ``spacing``, mm, required then)."""
    if cfg.target_spacing is not None:
        if spacing is None:
            raise ValueError("preprocess.target_spacing needs the image spacing")
        return scaled_shape(shape, [s / cfg.target_spacing for s in spacing])
    return int3((n + 1) // 2 if cfg.half_resolution else n for n in shape[:3])


def scaled_shape(shape: Sequence[int], scale: float | Sequence[float]) -> tuple[int, int, int]:
    """The corner-aligned grid ``scale`` times as fine as ``shape`` (per axis, or one number for
    all): ``floor((n - 1) * s + 0.5) + 1`` voxels. It spans the same extent (first and last voxel
    centres unchanged, ``learn2reg.contract``), so its spacing is ``spacing * (n - 1) / (m - 1)``:
    exactly ``spacing / s`` when ``(n - 1) * s`` is whole (any integer ``s``: an 80-voxel 2 mm
    axis at ``s = 2`` becomes 159 voxels of 1 mm), else the nearest grid. ``s = 1`` keeps the
    grid. ``ValueError`` when an axis of two or more voxels would shrink to one.
    """
    scales = [float(scale)] * 3 if isinstance(scale, (int, float)) else [float(s) for s in scale]
    if len(scales) != 3 or not all(s > 0 and math.isfinite(s) for s in scales):
        raise ValueError(f"scale must be one or three finite numbers > 0, got {scale!r}")
    out = int3(math.floor((n - 1) * s + 0.5) + 1 for n, s in zip(shape[:3], scales, strict=True))
    if any(m < 2 <= n for n, m in zip(shape[:3], out, strict=True)):
        raise ValueError(f"scale {scale!r} shrinks the grid {tuple(shape[:3])} to {out}: an axis would be a single voxel")
    return out


def prediction_shape(shape: Sequence[int], spacing: Sequence[float], cfg: RunConfig) -> tuple[int, int, int]:
    """The grid the network runs on at prediction for an image of ``shape`` and ``spacing`` (mm).

    ``predict.target_spacing`` set: the image grid scaled per axis by ``spacing / target_spacing``
    (absolute: it replaces ``preprocess.half_resolution`` and ``preprocess.target_spacing``). Otherwise
    the preprocessing grid (:func:`network_shape`: ``half_resolution`` or ``preprocess.target_spacing``)
    scaled by ``predict.input_scale``;
    the default 1 is the training grid. Either way corner-aligned with the image grid, so the
    field returns to it through ``learn2reg.contract.field_on_grid``.
    """
    if cfg.predict.target_spacing is not None:
        return scaled_shape(shape, [s / cfg.predict.target_spacing for s in spacing])
    return scaled_shape(network_shape(shape, cfg.preprocess, spacing), cfg.predict.input_scale)


# HU offset detection (:func:`detect_hu_offset`), in the image's stored units
AIR_PERCENTILE = 1.0  # the darkest 1 %: outside air, airways, lungs or the scanner's padding value
FLOOR_PERCENTILE = 0.1  # "the minimum" without the rare interpolation undershoots of resampled scans
HU_AIR_BELOW = -500.0  # an air level below this: the image is in HU (air about -1000)
SHIFTED_AIR = (-50.0, 200.0)  # an air level in this range, with a floor >= -50: HU + 1024 (air about 0-100)
SHIFTED_OFFSET = 1024.0
# Window check (:func:`check_window`)
FOREGROUND_ABOVE_AIR = 100.0  # without a mask, foreground = denser than the air level by this (HU)
MAX_CLIPPED = 0.5  # warn when more than this fraction of the foreground lies outside the window


def detect_hu_offset(image: np.ndarray, source: str = "image") -> tuple[float, str]:
    """What the stored values of a CT image add to HU (stored = HU + offset), from its intensities.

    ``image``: ``X x Y x Z`` as read (NIfTI ``scl_slope``/``scl_inter`` already applied, so the
    header's intercept is accounted for: data stored as HU + 1024 with an intercept of -1024
    read as HU; an intercept alone cannot decide, since it may only serve compression). Rule, on
    the air level (1st percentile: outside air, airways and lungs, or the padding value; every
    Learn2Reg CT has more than 1 % of them) and the floor (0.1th percentile: the minimum without
    the few undershoots that cubic resampling leaves next to sharp edges):

    * air level below -500 -> offset 0 (HU: air about -1000, padding -1024 or lower);
    * air level in [-50, 200] and floor >= -50 -> offset +1024 (HU + 1024: air about 0-100,
      nothing below 0; the 2020 lung data);
    * anything else -> offset 0 with a warning naming ``source`` (not recognisable as either:
      declare ``preprocess.hu_offset``).

    Returns the offset and a sentence saying what was seen (for the log).
    """
    floor, air = (float(v) for v in np.percentile(image, [FLOOR_PERCENTILE, AIR_PERCENTILE]))
    seen = f"floor (0.1th percentile) {floor:.0f}, air level (1st percentile) {air:.0f}"
    if air < HU_AIR_BELOW:
        return 0.0, f"HU ({seen}: air at about -1000)"
    if SHIFTED_AIR[0] <= air <= SHIFTED_AIR[1] and floor >= SHIFTED_AIR[0]:
        return SHIFTED_OFFSET, f"HU + 1024 ({seen}: air at about 0-100, nothing below 0)"
    log.warning(
        "%s: cannot tell whether the values are HU or HU + 1024 (%s; HU has air at about -1000, HU + 1024 at "
        "about 0-100): taken as HU (offset 0); set preprocess.hu_offset to 0 or 1024 to say which", source, seen,
    )
    return 0.0, f"taken as HU, not recognised ({seen})"


def resolve_hu_offset(image: np.ndarray, cfg: PreprocessConfig, source: str = "image", path: Path | None = None) -> float:
    """The offset of ``image`` (stored = HU + offset): 0 without a window, ``cfg.hu_offset`` when
    declared, else detected (:func:`detect_hu_offset`) and logged with the file's NIfTI scaling."""
    if cfg.window is None:
        return 0.0
    if cfg.hu_offset != "auto":
        return float(cfg.hu_offset)
    offset, seen = detect_hu_offset(image, source)
    scaling = read_nifti_scaling(path) if path is not None else None
    header = f"; header scaling slope {scaling[0]:g}, intercept {scaling[1]:g} applied on reading" if scaling else ""
    log.info("%s: hu_offset auto -> %g: %s%s", source, offset, seen, header)
    return offset


def check_window(image: np.ndarray, window: tuple[float, float], offset: float, source: str = "image",
                 mask: np.ndarray | None = None) -> float:
    """Fraction of the foreground outside ``window`` (HU); a warning naming ``source`` above 50 %.

    ``image``: stored values (HU + ``offset``). Foreground: the voxels inside ``mask`` (when
    given and not empty), else the voxels denser than the air level (1st percentile) by more than
    100 HU. A window meant for the other intensity convention clips most of it (the 2020 lung
    window [100, 1518] on HU data sends the whole lung, about -850 HU, to 0).
    """
    lo, hi = (float(v) + offset for v in window)
    if mask is not None and mask.any():
        values, what = image[mask > 0], "voxels inside the mask"
    else:
        level = float(np.percentile(image, AIR_PERCENTILE)) + FOREGROUND_ABOVE_AIR
        values, what = image[image > level], f"voxels above {level - offset:.0f} HU"
    if values.size == 0:
        return 0.0
    below, above = float(np.mean(values < lo)), float(np.mean(values > hi))
    if below + above > MAX_CLIPPED:
        log.warning(
            "%s: %.0f %% of the foreground (%s) lies outside the window [%g, %g] HU (%.0f %% below, %.0f %% above) "
            "with hu_offset %g: most of the image would be clipped to 0 or 1; check preprocess.window (in HU) "
            "and preprocess.hu_offset", source, 100 * (below + above), what, window[0], window[1],
            100 * below, 100 * above, offset,
        )
    return below + above


def normalise(image: np.ndarray, cfg: PreprocessConfig, offset: float | None = None) -> np.ndarray:
    """Intensities to [0, 1] with background 0: clip to ``cfg.window`` (CT, in HU; the stored
    values minus ``offset``, resolved by :func:`resolve_hu_offset` when ``None``) or to
    [min, percentile] (MR/US), then scale linearly."""
    image = image.astype(np.float32, copy=False)
    if cfg.window is not None:
        offset = resolve_hu_offset(image, cfg) if offset is None else offset
        lo, hi = (float(v) + offset for v in cfg.window)
    else:
        lo, hi = float(image.min()), float(np.percentile(image, cfg.percentile))
    if not hi > lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def network_image(image: np.ndarray, cfg: PreprocessConfig, shape: Sequence[int] | None = None,
                  path: Path | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """An image (``X x Y x Z``, scanner units) as network input: windowed (HU offset resolved,
    the window checked against the foreground, ``mask`` if given: :func:`check_window`),
    normalised to [0, 1], on the network grid (:func:`network_shape`, or the corner-aligned grid
    ``shape``, e.g. from :func:`prediction_shape`: resampled linearly in one step). ``path``
    names the file in the log."""
    source = str(path) if path is not None else f"image {'x'.join(map(str, image.shape))}"
    offset = resolve_hu_offset(image, cfg, source, path)
    if cfg.window is not None:
        check_window(image, cfg.window, offset, source, mask)
    img = normalise(image, cfg, offset)
    return on_grid(img, network_shape(image.shape, cfg) if shape is None else shape)


def on_grid(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A normalised image on the corner-aligned grid ``shape`` (linear, kept in [0, 1]), float32."""
    shape = tuple(int(n) for n in shape)
    if shape != image.shape:
        image = np.clip(resize_image(image, shape, order=1), 0.0, 1.0)
    return image.astype(np.float32)


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
    checks it (``learn2reg.segmentation``): labels non-negative integers up to
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
    shape = network_shape(image.shape, cfg, geom.spacing)
    resample = shape != image.shape
    mask = load_segmentation(case.mask, "mask", image.shape) if case.mask is not None else None

    def segmentation(path: Path | None, kind: str) -> np.ndarray | None:
        if path is None:
            return None
        arr = mask if kind == "mask" and mask is not None else load_segmentation(path, kind, image.shape)
        return resize_image(arr, shape, order=0) if resample else arr

    def points(path: Path | None) -> np.ndarray | None:
        if path is None:
            return None
        pts = read_points(path)
        return scale_points(pts, image.shape, shape) if resample else pts

    spacing = np.asarray(geom.spacing) * (np.asarray(image.shape) - 1) / np.maximum(np.asarray(shape) - 1, 1)
    return Prepared(
        case_id=case.case_id,
        image=network_image(image, cfg, shape, path=case.image, mask=mask),
        label=segmentation(case.label, "label"),
        mask=segmentation(case.mask, "mask"),
        keypoints=points(case.keypoints),
        landmarks=points(case.landmarks),
        spacing=float3(spacing),
        original_shape=int3(image.shape),
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
    """A preprocessed case, from the cache when present and readable (written atomically otherwise)."""
    case = task.case(case_id)
    if cache_dir is None:
        return prepare_case(case, cfg)
    path = _cache_file(Path(cache_dir), task, case, cfg)
    if path.exists():
        try:
            return _read_cached(path, case_id)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # damaged: made again
            log.warning("%s: unreadable cache file (%s: %s): preparing %s again", path, type(exc).__name__, exc, case_id)
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
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stubs take **kwds as allow_pickle's type
    return prepared


def _read_cached(path: Path, case_id: str) -> Prepared:
    with np.load(path, allow_pickle=False) as z:
        get = {k: z[k] for k in z.files}
    return Prepared(
        case_id=case_id,
        image=get["image"],
        label=get.get("label"),
        mask=get.get("mask"),
        keypoints=get.get("keypoints"),
        landmarks=get.get("landmarks"),
        spacing=float3(get["spacing"]),
        original_shape=int3(get["original_shape"]),
    )


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
    cfg = load_config(args.config).preprocess
    problems = preprocess_task(args.data, cfg, check_output_path(args.cache, folder=True))
    for p in problems:
        print(f"error: {p}")
    return 1 if problems else 0
