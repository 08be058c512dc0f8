"""``python -m pipeline align``: affine pre-alignment of a task's pairs (NGF + L-BFGS).

For every pair of a split (``learn2reg.task``), :func:`pipeline.affine.registration.register_affine`
finds the transform fixed mm -> moving mm, and the stage writes, each file atomically::

    OUT/transforms/{fixed}_{moving}.tfm                  SimpleITK transform (Euler3D / Affine)
    OUT/transforms/{fixed}_{moving}.json                 voxel + physical matrices, metrics, TRE
    OUT/images/{fixed}_{moving}_moving_aligned.nii.gz    moving image on the fixed grid
    OUT/align_summary.json                               resolved config, per-pair results, errors

The aligned image is ``learn2reg.contract.warp(moving, affine_to_field(voxel_matrix))``. When
both cases have landmarks, the official TRE (``evaluation.metrics.tre``, mm) before and after
alignment is recorded. A pair whose input is unusable is reported (file and problem) and
skipped; the others are still processed and the command exits with 1. The fields of view are
chosen per image from the images (``pipeline.affine.fov``; the modality names are hints) and
recorded with their reasons. The search stays within stated bounds (``max_rotation_deg``,
``max_translation`` of the fixed extent, ``max_scale``, ``max_shear``); a result at a bound or
one that shrinks the overlap (``pipeline.affine.bounds``) is implausible: reported by pair in
``implausible`` and on stderr, handled per ``on_implausible`` (default "fallback": the
translation stage's result if plausible, else the initial transform; "warn" keeps it; "refuse"
writes nothing for the pair), and the command exits with 3 (1 wins when an input failed). ``--config`` takes
AffineConfig settings or a run configuration (``configs/*.json``), which aligns as ``predict``
does with it (``predict.affine``, ``predict.affine_search_mm``, the fixed mask).

SimpleITK I/O lives here too: ``.tfm`` files, SimpleITK images built from our arrays and LPS
geometry (SimpleITK's index ``(i, j, k)`` is our array order; ``GetArrayFromImage`` returns
``z, y, x``), and a SimpleITK resampling that tests hold against the contract's ``warp``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from evaluation.metrics import tre
from learn2reg.cli import add_overwrite_argument, refuse_existing
from learn2reg.contract import warp
from learn2reg.faults import library_write_error
from learn2reg.io import (
    DataError,
    Geometry,
    atomic_path,
    check_output_path,
    load_nifti,
    read_json,
    read_points,
    save_nifti,
    write_json,
)
from learn2reg.progress import progress as progress_bar
from learn2reg.task import Case, Pair, Task, load_task
from learn2reg.writers import hold_folder
from pipeline.affine.bounds import ImplausibleResult
from pipeline.affine.fov import FOV_CHOICES, choose_fov, pair_names, with_fov
from pipeline.affine.registration import POLICIES, AffineConfig, AffineResult, register_affine
from pipeline.config import RunConfig, config_from_dict

log = logging.getLogger(__name__)

SPLITS = ("val", "test", "train")


# ------------------------------------------------------------------------- SimpleITK I/O


def transform_matrix(transform: sitk.Transform) -> np.ndarray:
    """Physical 4x4 of any linear SimpleITK transform (read off by mapping the origin and unit vectors)."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    m = np.eye(4)
    for axis in range(3):
        m[:3, axis] = np.asarray(transform.TransformPoint(tuple(float(v) for v in np.eye(3)[axis]))) - origin
    m[:3, 3] = origin
    return m


def write_transform(path: str | Path, transform: sitk.Transform) -> None:
    """``sitk.WriteTransform`` to ``path`` (``.tfm``), atomically (``OutputError`` when ITK cannot write it)."""
    with atomic_path(path) as tmp:
        try:
            sitk.WriteTransform(transform, str(tmp))
        except RuntimeError as exc:  # ITK gives no errno: its words and the free space
            raise library_write_error(exc, Path(path)) from exc


def read_transform(path: str | Path) -> sitk.Transform:
    """``sitk.ReadTransform``; ``DataError`` naming the file if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise DataError(f"{path}: unreadable transform file ({exc})") from exc


def to_sitk_image(array: np.ndarray, geom: Geometry) -> sitk.Image:
    """SimpleITK image of an ``X x Y x Z`` array with its LPS geometry (sitk index ``(i, j, k)`` = array order)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in geom.spacing))
    image.SetOrigin(tuple(float(o) for o in geom.origin))
    image.SetDirection(tuple(float(d) for d in geom.direction))
    return image


def resample_sitk(
    moving: np.ndarray, moving_geom: Geometry, fixed_geom: Geometry, transform: sitk.Transform, default: float = 0.0
) -> np.ndarray:
    """Moving image resampled by SimpleITK (linear) on the fixed grid -> ``X x Y x Z`` float32."""
    reference = to_sitk_image(np.zeros(fixed_geom.shape, np.float32), fixed_geom)
    source = to_sitk_image(np.asarray(moving, dtype=np.float32), moving_geom)
    out = sitk.Resample(source, reference, transform, sitk.sitkLinear, default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


# ------------------------------------------------------------------------- stage


def pair_stem(pair: Pair) -> str:
    """File stem of a pair's outputs: ``{fixed}_{moving}`` (case ids ``SSSS_MMMM``)."""
    return f"{pair.fixed}_{pair.moving}"


def split_pairs(task: Task, split: str) -> tuple[Pair, ...]:
    """The pairs of ``split`` ("val", "test", or "train": the task's training pairs)."""
    if split not in SPLITS:
        raise DataError(f"--split: unknown split {split!r} (choose from {', '.join(SPLITS)})")
    return task.training_pairs() if split == "train" else task.pairs.get(split, ())


def _landmark_tre(fixed_case: Case, moving_case: Case, moving_spacing, result: AffineResult) -> dict[str, float]:
    """Mean official TRE (mm) before (zero field) and after alignment, if both cases have landmarks."""
    if fixed_case.landmarks is None or moving_case.landmarks is None:
        return {}
    fixed_pts, moving_pts = read_points(fixed_case.landmarks), read_points(moving_case.landmarks)
    if fixed_pts.shape != moving_pts.shape:
        raise DataError(f"{moving_case.landmarks}: {len(moving_pts)} landmarks, but {fixed_case.landmarks} has {len(fixed_pts)}")
    u = result.field()
    return {
        "tre_initial_mm": float(np.mean(tre(np.zeros_like(u), fixed_pts, moving_pts, moving_spacing))),
        "tre_aligned_mm": float(np.mean(tre(u, fixed_pts, moving_pts, moving_spacing))),
    }


def align_pair(task: Task, pair: Pair, out: Path, config: AffineConfig, fov: str = "auto") -> dict[str, Any]:
    """Register one pair and write its three files; returns its summary entry. The fields of
    view are chosen from the images per ``fov`` (:func:`pipeline.affine.fov.choose_fov`, the
    modality names as hints) and recorded with their reasons.

    Raises ``DataError`` (naming the file) for unusable input and, under
    ``on_implausible="refuse"``, for an implausible result; nothing is written then.
    """
    fixed_case, moving_case = task.case(pair.fixed), task.case(pair.moving)
    fixed, fixed_geom = load_nifti(fixed_case.image)
    moving, moving_geom = load_nifti(moving_case.image)
    if fixed.ndim == 3 and moving.ndim == 3:
        choices = choose_fov(fixed, moving, fixed_geom, moving_geom, pair_names(task, pair), fov)
        config = with_fov(config, choices, pair.key)
    else:
        choices = None
    mask = None
    if config.use_fixed_mask and fixed_case.mask is not None:
        mask, _ = load_nifti(fixed_case.mask)
        if mask.shape != fixed.shape:
            raise DataError(f"{fixed_case.mask}: shape {mask.shape} differs from its image {fixed.shape}")
    try:
        result = register_affine(fixed, moving, fixed_geom, moving_geom, config, fixed_mask=mask)
    except ImplausibleResult:
        raise
    except ValueError as exc:
        raise DataError(f"{fixed_case.image} / {moving_case.image}: {exc}") from exc
    entry: dict[str, Any] = {"fixed": pair.fixed, "moving": pair.moving, **result.to_dict()}
    if choices is not None:
        entry["fov"] = {"fixed": choices[0].to_dict(), "moving": choices[1].to_dict()}
    entry.update(_landmark_tre(fixed_case, moving_case, moving_geom.spacing, result))
    entry["config"] = config.to_dict()
    stem = pair_stem(pair)
    save_nifti(out / "images" / f"{stem}_moving_aligned.nii.gz", warp(moving, result.field()), fixed_geom)
    write_json(out / "transforms" / f"{stem}.json", entry)
    write_transform(out / "transforms" / f"{stem}.tfm", result.transform)
    return entry


def align_task(
    data: str | Path, out: str | Path, split: str = "val", config: AffineConfig | None = None, fov: str = "auto", progress: bool = False
) -> dict[str, Any]:
    """Align every pair of ``split`` of the task in ``data``; write under ``out`` (module docstring).

    Returns the summary (also written to ``out/align_summary.json``); its ``errors`` maps pair
    keys to messages for pairs that could not be processed.
    """
    if fov not in FOV_CHOICES:
        raise DataError(f"--fov: unknown choice {fov!r} (choose from {', '.join(FOV_CHOICES)})")
    config = config or AffineConfig()
    task = load_task(data)
    pairs = split_pairs(task, split)
    if not pairs:
        raise DataError(f"{task.root}: task {task.name} has no {split} pairs")
    out = Path(out)
    summary: dict[str, Any] = {"task": task.name, "data": str(task.root), "split": split, "fov": fov, "config": config.to_dict()}
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    implausible: dict[str, Any] = {}
    start = time.perf_counter()
    for pair in progress_bar(pairs, desc=f"align {task.name}", unit="pair", enabled=progress, logger=log):
        try:
            results[pair.key] = entry = align_pair(task, pair, out, config, fov)
        except ImplausibleResult as exc:
            log.error("%s: %s", pair.key, exc)
            implausible[pair.key] = {"action": "refused", "reasons": list(exc.reasons)}
            continue
        except DataError as exc:
            log.error("%s: %s", pair.key, exc)
            errors[pair.key] = str(exc)
            continue
        if entry["implausible"]:
            log.warning("%s: implausible result (%s): %s", pair.key, "; ".join(entry["implausible"]), entry["action"])
            implausible[pair.key] = {"action": entry["action"], "reasons": entry["implausible"]}
    policy = {"on_implausible": config.on_implausible, "means": POLICY[config.on_implausible]}
    summary.update(pairs=results, errors=errors, implausible=implausible, policy=policy, runtime_s=time.perf_counter() - start)
    write_json(out / "align_summary.json", summary)
    return summary


POLICY = {
    "fallback": "an implausible result is replaced by the translation stage's result when that is plausible, "
                "else by the initial transform; reported, exit 3",
    "warn": "an implausible result is kept; reported, exit 3",
    "refuse": "an implausible result is not written; reported, exit 3",
}


def exit_code(summary: dict[str, Any]) -> int:
    """0: every pair aligned, every result plausible; 1: a pair could not be processed (its input);
    3: otherwise some result was implausible (the policy applied, the pairs listed)."""
    if summary["errors"]:
        return 1
    return 3 if summary["implausible"] else 0


RUN_SECTIONS = frozenset(f.name for f in dataclasses.fields(RunConfig))


def affine_settings_of_run(cfg: RunConfig) -> dict[str, Any]:
    """The pre-alignment ``predict`` does with this run configuration, as AffineConfig settings:
    ``predict.affine`` (mode; absent when "none"), ``predict.affine_search_mm``, the bounds and policy
    (``predict.affine_max_rotation_deg``, ``affine_max_translation``, ``affine_on_implausible``) and the
    fixed mask where the task has one."""
    settings: dict[str, Any] = {"search_radius": cfg.predict.affine_search_mm, "use_fixed_mask": True,
                                "max_rotation_deg": cfg.predict.affine_max_rotation_deg,
                                "max_translation": cfg.predict.affine_max_translation,
                                "on_implausible": cfg.predict.affine_on_implausible}
    if cfg.predict.affine != "none":
        settings["mode"] = cfg.predict.affine
    return settings


def _config_from_args(args: argparse.Namespace) -> AffineConfig:
    """Config file (if any), then the command-line overrides. The file holds AffineConfig settings
    or a run configuration (``configs/*.json``: see :func:`affine_settings_of_run`); keys starting
    with ``_`` are notes."""
    raw = read_json(args.config) if args.config else {}
    if not isinstance(raw, dict):
        raise DataError(f"{args.config}: must hold a JSON object (affine settings or a run configuration)")
    if raw.keys() & RUN_SECTIONS:
        raw = affine_settings_of_run(config_from_dict(raw, where=str(args.config)))
        if "mode" not in raw and args.mode is None:
            raise DataError(f"{args.config}: predict.affine is \"none\" (this run does no pre-alignment); pass --mode rigid|affine to align anyway")
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    overrides = {"mode": args.mode, "search_radius": args.search, "init": args.init, "use_fixed_mask": args.mask or None, "threads": args.threads,
                 "max_rotation_deg": getattr(args, "max_rotation", None), "max_translation": getattr(args, "max_translation", None),
                 "on_implausible": getattr(args, "on_implausible", None)}
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return AffineConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{args.config or 'command line'}: invalid affine settings ({exc})") from exc


def _bounded(low: float, high: float, unit: str) -> Callable[[str], float]:
    """argparse type: a number in ``(low, high]`` (a usage error, exit 2, naming the option otherwise)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"must be in ({low:g}, {high:g}] {unit}, got {text}")
        return value

    return parse


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="task folder (either layout)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--split", choices=SPLITS, default="val", help="which pairs")
    parser.add_argument("--mode", choices=("rigid", "affine"), default=None, help="6 or 12 DoF (default: config, else rigid)")
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON file of AffineConfig settings, or a run configuration (configs/*.json: its predict.affine, "
                             "predict.affine_search_mm and the fixed mask, as predict aligns)")
    parser.add_argument("--search", type=float, default=None, metavar="MM", help="translation search radius in mm (0 = off; default: config, else 0)")
    parser.add_argument("--init", choices=("none", "center", "com"), default=None, help="initial translation (default: config, else none)")
    parser.add_argument("--fov", choices=FOV_CHOICES, default="auto",
                        help="fields of view (constant outside, any shape) left out of the metric: auto decides per image from "
                             "the image, the modality name a hint (pipeline.affine.fov); on / off for both images")
    parser.add_argument("--max-rotation", type=_bounded(0.0, 90.0, "degrees"), default=None, metavar="DEG",
                        help="bound on the rotation angle (default: config, else 15)")
    parser.add_argument("--max-translation", type=_bounded(0.0, 1.0, "of the fixed image's mean extent"), default=None, metavar="FRACTION",
                        help="bound on the translation per axis, a fraction of the fixed image's mean extent (default: config, else 0.2)")
    parser.add_argument("--on-implausible", choices=POLICIES, default=None,
                        help="a result at a bound or shrinking the overlap: fallback (the translation stage's result, else the "
                             "initial transform), warn (keep it) or refuse (write nothing); reported and exit 3 in each case "
                             "(default: config, else fallback)")
    parser.add_argument("--mask", action="store_true", help="weight the metric by the fixed mask where the task has one")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads while registering (default: config, else 1)")
    add_overwrite_argument(parser, "an earlier alignment in --out")


def run(args: argparse.Namespace) -> int:
    refuse_existing([Path(args.out) / "align_summary.json"], args.overwrite)
    config = _config_from_args(args)
    with hold_folder(check_output_path(args.out, folder=True)):  # one writer per output folder
        summary = align_task(args.data, args.out, args.split, config, args.fov, progress=True)
    for key, entry in summary["pairs"].items():
        tre_text = f", TRE {entry['tre_initial_mm']:.2f} -> {entry['tre_aligned_mm']:.2f} mm" if "tre_aligned_mm" in entry else ""
        print(f"{key}: NGF {entry['metric_initial']:.4f} -> {entry['metric_final']:.4f} in {entry['runtime_s']:.1f} s{tre_text}")
    for key, message in summary["errors"].items():
        print(f"error: {key}: {message}", file=sys.stderr)
    for key, entry in summary["implausible"].items():
        print(f"implausible: {key}: {'; '.join(entry['reasons'])} -> {entry['action']}", file=sys.stderr)
    flagged = f", {len(summary['implausible'])} implausible ({summary['policy']['means']})" if summary["implausible"] else ""
    print(f"{len(summary['pairs'])} pair(s) aligned, {len(summary['errors'])} failed{flagged}; "
          f"summary in {Path(args.out) / 'align_summary.json'}")
    return exit_code(summary)
