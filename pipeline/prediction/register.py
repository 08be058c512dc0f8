"""Single-pair registration, as ANTs and elastix users expect: ``python -m pipeline register
--fixed F.nii.gz --moving M.nii.gz --run RUN --out DIR [--fixed-label FL --moving-label ML]``, or
without a trained network ``--config CFG`` (``predict.network`` "none", as ``predict --config``).

No task folder or ``dataset.json``: the two images go through the prediction path of a run
(``predict.register_images``: optional affine pre-alignment, preprocessing, network, optional
instance optimisation, the field on the fixed grid composed with the affine part). Written to
``DIR`` atomically, every image on the fixed grid with the fixed image's geometry:

* ``disp.nii.gz``: the field in the current challenge layout (``X x Y x Z x 3`` float32, voxels,
  pull: ``warped = moving(x + u(x))``);
* ``warped.nii.gz``: the warped moving image; ``warped_labels.nii.gz`` with ``--moving-label``
  (nearest neighbour, e.g. an atlas's labels carried onto the fixed image);
* ``jacobian_det.nii.gz`` with ``--save-jacobian``;
* ``report.html`` (+ ``report.json``): the visual report, with Dice per label and label contours
  when both label maps are given (``--no-report`` skips it);
* ``register.json``: the inputs, checkpoint, configuration hash, device, runtimes, outputs,
  memory (the estimate checked before the work, ``pipeline.prediction.memory``, and the measured
  peak), the grid the network ran on (``network_grid``: rule, trained spacing, grid, spacing, scale)
  and, with ``predict.affine``, the pre-alignment's outcome (``affine``: action, the reasons of an
  implausible result and its fallback, the fields of view; ``pipeline.affine.bounds``).

The network runs at the spacing the run was trained at (imported weights: 1 mm), as in
``predict`` (``pipeline.prediction.scale``); ``--input-scale`` / ``--target-spacing`` choose
another grid, with a warning when it departs from that spacing.

A folder that already holds a registration's outputs is refused unless ``--overwrite``; then
outputs of the earlier registration that this one does not write are removed, so the folder never
mixes two registrations. ``--device`` takes the values of every stage (``auto|cpu|cuda|cuda:N``;
CUDA where there is none is a usage error, exit 2).

Images of different grids need a run whose configuration has affine pre-alignment
(``predict.affine``, or ``--affine rigid|affine``); otherwise the command stops with a message
naming the moving image. A missing or unreadable file is named, exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.pair_reports.stage import report_from_files
from learn2reg.cli import add_overwrite_argument, refuse_existing
from learn2reg.io import DataError, check_output_path, save_nifti, write_json
from learn2reg.task import Case
from learn2reg.writers import hold_folder
from pipeline.distributed import DistInfo, add_device_argument, pick_device
from pipeline.prediction.memory import check_prediction
from pipeline.prediction.outputs import write_jacobian, write_warped_image, write_warped_labels
from pipeline.prediction.predict import register_images
from pipeline.prediction.predictor import add_override_arguments, load_predictor, run_config
from pipeline.prediction.scale import add_scale_arguments, explicit_scale, quiet_grid, trained_spacing

log = logging.getLogger(__name__)

FIELD = "disp.nii.gz"
WARPED = "warped.nii.gz"
WARPED_LABELS = "warped_labels.nii.gz"
JACOBIAN = "jacobian_det.nii.gz"
REPORT = "report.html"
REPORT_NUMBERS = "report.json"  # written beside the report by evaluation.pair_reports.stage
RECORD = "register.json"


def register(
    fixed: Path, moving: Path, run_dir: Path | None, out_dir: Path, fixed_label: Path | None = None,
    moving_label: Path | None = None, device: str = "auto", checkpoint: str = "best", report: bool = True,
    save_jacobian: bool = False, overwrite: bool = False, skip_memory_check: bool = False,
    config_file: Path | None = None, **overrides,
) -> dict[str, Path]:
    """Register ``moving`` to ``fixed`` with the run in ``run_dir`` (or, ``run_dir=None``, the
    network-free configuration ``config_file``: ``predict.network`` "none"); write the outputs to
    ``out_dir`` and return them by kind. ``overrides``: ``predict`` settings (``affine``,
    ``instance_opt_steps``, ``input_scale``, ``target_spacing``, ``sets``: ``--set`` pairs). ``DataError`` naming the file for
    any bad input, for outputs of an earlier registration in ``out_dir`` unless ``overwrite``, and
    when the estimated peak memory exceeds what the device has free (unless ``skip_memory_check``),
    before any work."""
    cfg = run_config(run_dir, {**overrides, "config_file": config_file})
    inputs = [Path(fixed), Path(moving)] + [Path(p) for p in (fixed_label, moving_label) if p is not None]
    for path in inputs:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
    if fixed_label is not None and moving_label is None:
        raise DataError(f"{fixed_label}: a fixed label map alone is not used: Dice needs --moving-label too")
    out_dir = check_output_path(out_dir, folder=True)
    refuse_existing([out_dir / name for name in (FIELD, WARPED, WARPED_LABELS, JACOBIAN, REPORT, RECORD)], overwrite)
    dev = pick_device(device, DistInfo())
    kinds = ["warped"] + (["jacobian"] if save_jacobian else []) + (["report"] if report else [])
    scale = explicit_scale(overrides, cfg)
    memory = check_prediction("register", cfg, [(Path(fixed), Path(moving))], dev, outputs=kinds, skip=skip_memory_check,
                              grid_of=quiet_grid(trained_spacing(run_dir), scale, cfg))
    p = load_predictor(cfg, run_dir, None, dev, checkpoint, scale)
    start = time.perf_counter()
    notes: dict[str, Any] = {}  # the pre-alignment's outcome (fields of view, an implausible result's fallback)
    u, geometry, timings = register_images(p, Case("fixed", Path(fixed).resolve()), Case("moving", Path(moving).resolve()), notes=notes)
    p.sync()
    timings["total_s"] = time.perf_counter() - start
    written = {"field": out_dir / FIELD}
    save_nifti(written["field"], u.astype(np.float32), geometry)
    written["warped"] = write_warped_image(out_dir / WARPED, u, geometry, Path(moving))
    if moving_label is not None:
        written["warped_labels"] = write_warped_labels(out_dir / WARPED_LABELS, u, geometry, Path(moving), Path(moving_label))
    if save_jacobian:
        written["jacobian"] = write_jacobian(out_dir / JACOBIAN, u, geometry)
    if report:  # Dice and contours with both label maps
        written["report"] = out_dir / REPORT
        both = fixed_label is not None and moving_label is not None
        report_from_files(written["report"], Path(fixed), Path(moving), written["field"],
                          fixed_label=Path(fixed_label) if both and fixed_label is not None else None,
                          moving_label=Path(moving_label) if both and moving_label is not None else None,
                          title=f"{Path(fixed).name} <-- {Path(moving).name}")
    record = {
        "fixed": str(Path(fixed).resolve()), "moving": str(Path(moving).resolve()),
        "fixed_label": str(Path(fixed_label).resolve()) if fixed_label else None,
        "moving_label": str(Path(moving_label).resolve()) if moving_label else None,
        "run": str(Path(run_dir).resolve()) if run_dir is not None else None,
        "config": str(Path(config_file).resolve()) if run_dir is None and config_file is not None else None,
        "checkpoint": p.checkpoint, "config_hash": p.config_hash, "predict": dataclasses.asdict(cfg.predict), "device": str(p.device), "runtimes": timings,
        "network_grid": p.grid_policy.last if p.grid_policy is not None else None,
        "outputs": {k: v.name for k, v in written.items()}, "memory": memory.record(), "affine": notes.get("affine"),
    }
    written["record"] = out_dir / RECORD
    write_json(written["record"], record)
    kept = {path.name for path in written.values()} | ({REPORT_NUMBERS} if report else set())
    for name in {WARPED_LABELS, JACOBIAN, REPORT, REPORT_NUMBERS} - kept:
        (out_dir / name).unlink(missing_ok=True)  # left by an earlier registration into this folder
    return written


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", type=Path, required=True, help="fixed image (NIfTI); the outputs lie on its grid")
    parser.add_argument("--moving", type=Path, required=True, help="moving image (NIfTI)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, default=None, help="training run folder (config.json + checkpoints/)")
    source.add_argument("--config", type=Path, default=None,
                        help="configuration file of a network-free registration (predict.network \"none\": no run needed)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (disp.nii.gz, warped.nii.gz, report.html, ...)")
    parser.add_argument("--fixed-label", type=Path, default=None, help="fixed label map (with --moving-label: Dice in the report)")
    parser.add_argument("--moving-label", type=Path, default=None, help="moving label map (also written warped)")
    parser.add_argument("--checkpoint", default="best", help="best | last | PATH")
    add_device_argument(parser)
    add_override_arguments(parser)
    add_scale_arguments(parser)
    parser.add_argument("--save-jacobian", action="store_true", help="also write the Jacobian determinant map")
    parser.add_argument("--no-report", action="store_true", help="skip the visual report")
    add_overwrite_argument(parser, "the outputs of an earlier registration in --out")
    parser.add_argument("--skip-memory-check", action="store_true",
                        help="run even when the estimated peak memory exceeds what the device has free")


def run(args: argparse.Namespace) -> int:
    with hold_folder(check_output_path(args.out, folder=True)):  # one writer per output folder
        written = register(args.fixed, args.moving, args.run, args.out, args.fixed_label, args.moving_label, args.device,
                           args.checkpoint, not args.no_report, args.save_jacobian, args.overwrite, args.skip_memory_check,
                           config_file=args.config, affine=args.affine, instance_opt_steps=args.instance_opt_steps,
                           instance_opt_similarity=args.instance_opt_similarity, sets=args.sets,
                           input_scale=args.input_scale,
                           target_spacing=args.target_spacing)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0
