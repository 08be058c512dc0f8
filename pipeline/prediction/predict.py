"""Prediction stage: ``python -m pipeline predict --run RUN --data TASK_DIR --out OUT --split val|test``.

For each pair: read the images, optional affine pre-alignment (NGF + L-BFGS), preprocess as in
training (optionally on a finer or coarser grid: ``predict.input_scale`` / ``--input-scale``,
``predict.target_spacing`` / ``--target-spacing``, see ``pipeline.data.preprocess.prediction_shape``),
LapIRN forward (GPU when available), optional instance optimisation, resample the
field to the fixed image's full grid and compose it with the affine part through the contract,
then write it in the task's challenge format:

* current layout: ``OUT/`` + the name the task's evaluator reads (``learn2reg.rules.disp_name``
  under :attr:`Task.rules`, ``--rules`` overrides: ``disp_{fixS}_{fixM}_{movS}_{movM}.nii.gz``
  for ``l2r`` and ``remind2reg``, LUMIR's short ``disp_{fixS}_{movS}.nii.gz`` for equal
  modalities and ``0000 <- 0001``), ``X x Y x Z x 3`` float32 voxels (channel-last: every
  rule set accepts it), the identity grid's header (unit spacing; every evaluator ignores it);
* 2020 layout: ``OUT/disp_{fix:04d}_{mov:04d}.npz`` (key ``arr_0``, float16, channels first) at
  the resolution the task prescribes (``learn2reg.submission.submission_shape``: half for tasks
  1-3, full for task 4; no configuration changes it). A network run at half resolution gives the
  half-resolution field directly (exact, no up- and downsampling).

Every file is written atomically. ``OUT/runtimes.json`` (``learn2reg.submission`` schema) records
per pair the end-to-end and network-only runtimes (GPU-synchronised), the device, the
checkpoint and a configuration hash, and ``OUT/predict_config.json`` the resolved configuration
behind that hash; pairs already written under the same hash are skipped, so an interrupted
prediction resumes (a run with nothing left to do says so). A folder holding fields of another
configuration is refused, naming the options that differ (``--overwrite`` removes them first), so
every field in it keeps its record (the folder's names, records and checks:
``pipeline.prediction.folder``; the configuration and the model: ``pipeline.prediction.predictor``). The command ends with where it wrote and what to run next. A pair that cannot
be processed, or a pair entry of the task that cannot be read, is reported by name with the
reason on stderr; the others still run and the command exits 1. With ``predict.affine`` the
fields of view come from the images (``pipeline.affine.fov``) and an implausible
pre-alignment (at a bound, or a shrunken overlap: ``pipeline.affine.bounds``) falls back to its
translation stage or the initial transform; such pairs are named on stderr, recorded in
``runtimes.json`` (``affine``), and the command exits 3 (unless 1). Under ``torchrun`` the pairs
are sharded.

On request, per pair and on the fixed grid (``pipeline.prediction.outputs``, from the field as
the evaluator reads it, not timed): ``--save-warped`` the warped moving image and labels,
``--save-jacobian`` the Jacobian determinant map, ``--report`` the visual report
(``OUT/report/``, ``evaluation.pair_reports.stage``). :func:`register_images` is the path of one pair of
images, shared with the single-pair ``register`` command.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from evaluation.pair_reports.stage import REPORT_DIR, write_index
from learn2reg import rules as rulesets
from learn2reg.cli import add_overwrite_argument
from learn2reg.contract import (
    compose_affine,
    field_on_grid,
    grid_scale,
    warp,
)
from learn2reg.errors import OutputError
from learn2reg.io import (
    DataError,
    Geometry,
    atomic_path,
    check_output_path,
    load_nifti,
    save_nifti,
    write_json,
)
from learn2reg.progress import progress
from learn2reg.submission import submission_shape, write_manifest
from learn2reg.task import Case, Layout, Pair, Task, load_task
from pipeline.affine.fov import choose_fov, pair_names, with_fov
from pipeline.affine.registration import AffineConfig, register_affine
from pipeline.affine.support import outside_region
from pipeline.data.preprocess import load_image, network_image, on_grid
from pipeline.distributed import DistInfo, add_device_argument, hold_folder, init_distributed, pick_device, shutdown
from pipeline.model.contract import field_from_numpy, field_to_numpy
from pipeline.model.field import predict_field
from pipeline.model.instance_opt import InstanceOptSettings, refine_field
from pipeline.prediction.folder import (
    CONFIG_RECORD,
    check_field_space,
    merge_rank_manifests,
    output_name,
    prepare_out_dir,
    resume_advice,
    resume_manifest,
    task_rules,
)
from pipeline.prediction.memory import check_task_prediction
from pipeline.prediction.outputs import Outputs, missing, write_pair_outputs
from pipeline.prediction.predictor import Predictor, add_override_arguments, load_predictor, run_config
from pipeline.prediction.scale import (
    add_scale_arguments,
    explicit_scale,
    network_grid,
    quiet_grid,
    record_grid,
    trained_spacing,
)

log = logging.getLogger(__name__)

def write_field(path: Path, u: np.ndarray, task: Task) -> None:
    """The task's challenge format, atomically; ``u`` is already on the submission grid."""
    if task.layout == Layout.L2R2020:
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, arr_0=np.moveaxis(u, -1, 0).astype(np.float16))
    else:
        save_nifti(path, u.astype(np.float32))


def predict_pair(p: Predictor, pair: Pair, out_dir: Path, notes: dict[str, Any] | None = None) -> dict[str, float]:
    """Register one pair and write its field; returns the runtimes in seconds. ``notes`` (if
    given) receives the pre-alignment's outcome (:func:`register_images`)."""
    start = time.perf_counter()
    task = p.task
    if task is None:
        raise ValueError("predict_pair needs a predictor made for a task")
    u, _, timings = register_images(p, task.case(pair.fixed), task.case(pair.moving), pair_names(task, pair),
                                    grid=lambda fixed_shape: submission_shape(task, fixed_shape), notes=notes)
    write_field(out_dir / output_name(task, pair), u, task)
    timings["total_s"] = time.perf_counter() - start
    return timings


def register_images(
    p: Predictor, fixed_case: Case, moving_case: Case, names: tuple[str, str] = ("", ""),
    grid: Callable[[tuple[int, ...]], tuple[int, int, int]] | None = None, notes: dict[str, Any] | None = None,
) -> tuple[np.ndarray, Geometry, dict[str, float]]:
    """The prediction path for one pair of images: read both, optional affine pre-alignment
    (fields of view from the images, the modality ``names`` (fixed, moving) as hints:
    ``pipeline.affine.fov.choose_fov``), network and optional instance optimisation (from the zero
    field without a network; inside the fixed image's field of view when it has one), the field
    resampled to the output grid and composed with the affine part. An implausible
    pre-alignment (``pipeline.affine.bounds``) falls back to the translation stage's result or
    the initial transform, with a warning; ``notes["affine"]`` (when ``notes`` is given)
    records the outcome: action, reasons, fields of view.

    Returns the field (``X x Y x Z x 3`` voxels of the fixed image, pull) on ``grid(fixed
    shape)`` (default: the fixed grid), the fixed image's geometry, and the runtimes (affine,
    network, instance optimisation; seconds). ``DataError`` naming the moving image when the
    two grids differ and the configuration has no affine pre-alignment to resample it.
    """
    fixed, fgeom = load_image(fixed_case.image)
    moving, mgeom = load_image(moving_case.image)
    timings = {"affine_s": 0.0, "network_s": 0.0, "instance_opt_s": 0.0}
    matrix = None
    choices = None  # fields of view (fixed, moving), for the affine stage and the instance optimisation
    if p.cfg.predict.affine != "none":
        mask = load_nifti(fixed_case.mask)[0] if fixed_case.mask is not None else None
        choices = choose_fov(fixed, moving, fgeom, mgeom, names) if fixed.ndim == moving.ndim == 3 else None
        config = AffineConfig(mode=p.cfg.predict.affine, search_radius=p.cfg.predict.affine_search_mm,
                              max_rotation_deg=p.cfg.predict.affine_max_rotation_deg,
                              max_translation=p.cfg.predict.affine_max_translation,
                              on_implausible=p.cfg.predict.affine_on_implausible)
        config = with_fov(config, choices, f"{fixed_case.case_id} <- {moving_case.case_id}") if choices else config
        result = register_affine(fixed, moving, fgeom, mgeom, config, fixed_mask=mask)
        matrix, timings["affine_s"] = result.voxel_matrix, result.runtime_s
        if result.implausible:
            log.warning("%s <- %s: implausible pre-alignment (%s): %s", fixed_case.case_id, moving_case.case_id, "; ".join(result.implausible), result.action)
        if notes is not None:
            notes["affine"] = {"action": result.action, "reasons": list(result.implausible),
                               "fov": [c.to_dict() for c in choices] if choices else None}
        moving = warp(moving, result.field())
    elif moving.shape != fixed.shape:
        raise DataError(f"{moving_case.image}: shape {moving.shape} differs from the fixed image {fixed.shape} (enable predict.affine to resample)")
    shape = tuple(fixed.shape) if grid is None else grid(fixed.shape)
    if p.model is None and p.cfg.predict.instance_opt_steps == 0:
        u = np.zeros(shape + (3,), np.float32)  # affine only (or nothing)
    else:
        # normalised once on the fixed grid (window checks logged once), for the network and the optimisation
        f = network_image(fixed, p.cfg.preprocess, fixed.shape, path=fixed_case.image)
        m = network_image(moving, p.cfg.preprocess, fixed.shape, path=moving_case.image)
        if p.model is None:  # network-free: instance optimisation from the zero field (after the affine stage)
            u = np.zeros(tuple(fixed.shape) + (3,), np.float32)
        else:
            u = network_field(p, f, m, fgeom.spacing, timings)
        if p.cfg.predict.instance_opt_steps > 0:
            if choices is None:  # no affine stage: the images as read (moving not warped)
                choices = choose_fov(fixed, moving, fgeom, mgeom, names)
                log.info("%s <- %s: fixed image: %s", fixed_case.case_id, moving_case.case_id, choices[0].reason)
            fixed_fov = fixed if choices[0].has_fov else None
            u = optimise_instance(p, field_on_grid(u, fixed.shape, fixed.shape), f, m, fixed_case, timings, fixed_fov)
        u = field_on_grid(u, shape, fixed.shape)
    if matrix is not None:
        u = compose_affine(u, matrix, step=grid_scale(shape, fixed.shape))
    return u, fgeom, timings


def network_field(p: Predictor, fixed: np.ndarray, moving: np.ndarray, spacing: Sequence[float], timings: dict) -> np.ndarray:
    """LapIRN -> the voxel field on the network grid; ``fixed``/``moving``: normalised images on
    the fixed grid (``network_image``), ``spacing`` the fixed image's (mm).

    The network grid is ``pipeline.prediction.scale.network_grid`` of the fixed image: the
    preprocessing grid at the spacing the run was trained at, or, when given, scaled by
    ``predict.input_scale`` / ``predict.target_spacing``; both images are resampled
    onto it, and the field, in voxels of that grid, goes back to the fixed grid through
    ``learn2reg.contract.field_on_grid``. The network's field comes from ``predict_field``
    (autocast for the convolutions only, a float32 field), the same function validation during
    training uses."""
    grid = network_grid(p.grid_policy, fixed.shape, spacing, p.cfg)
    f, m = (torch.from_numpy(on_grid(image, grid))[None, None].to(p.device) for image in (fixed, moving))
    if p.model is None:
        raise ValueError("a network-free predictor has no network")
    p.sync()
    t0 = time.perf_counter()
    field = predict_field(p.model, m, f, p.device, p.cfg.predict.amp)
    p.sync()
    timings["network_s"] = time.perf_counter() - t0
    return field_to_numpy(field)


def optimise_instance(p: Predictor, u: np.ndarray, fixed: np.ndarray, moving: np.ndarray, fixed_case: Case,
                      timings: dict, fixed_fov: np.ndarray | None = None) -> np.ndarray:
    """Instance optimisation (``pipeline.model.instance_opt``) of a field on the fixed image's
    grid, with both images normalised as for the network (``fixed``/``moving``, on that grid);
    the similarity is restricted to the fixed mask when the run trains with one (``loss.use_mask``),
    and to the fixed image's field of view when it has one (``fixed_fov``: the fixed image as
    read, an ultrasound zero outside its fan: :func:`field_of_view`)."""
    t0 = time.perf_counter()
    f, m = (torch.from_numpy(image)[None, None].to(p.device) for image in (fixed, moving))
    mask = None
    if p.cfg.loss.use_mask and fixed_case.mask is not None:
        mask = torch.from_numpy(load_nifti(fixed_case.mask)[0] > 0)[None, None].to(p.device)
    if fixed_fov is not None:
        inside = torch.from_numpy(field_of_view(fixed_fov, InstanceOptSettings.from_predict(p.cfg.predict)))[None, None].to(p.device)
        mask = inside if mask is None else mask & inside
    settings = InstanceOptSettings.from_predict(p.cfg.predict)
    refined = refine_field(field_from_numpy(u, p.device), m, f, settings, mask)
    p.sync()
    timings["instance_opt_s"] = time.perf_counter() - t0
    return field_to_numpy(refined)


def field_of_view(image: np.ndarray, settings: InstanceOptSettings) -> np.ndarray:
    """The voxels of an image with a field of view (constant outside it, connected to the grid's
    border: ``pipeline.affine.support.outside_region``, e.g. an ultrasound fan) whose MIND-SSC
    features see only the inside: the rest eroded by the features' reach (``dilation + radius``
    voxels). Without it, the fan's border, an edge that the other image does not have, would pull
    the instance optimisation."""
    reach = settings.dilation + settings.radius
    return ndimage.binary_erosion(~outside_region(image), iterations=reach, border_value=0)


def predict(
    data_dir: Path, out_dir: Path, run_dir: Path | None = None, split: str = "val", device: str = "auto",
    checkpoint: str = "best", save_warped: bool = False, overwrite: bool = False, *, save_jacobian: bool = False,
    report: bool = False, skip_memory_check: bool = False, rules: str | None = None, **overrides,
) -> int:
    """Predict every pair of ``split``; returns the exit code (1 if any pair failed or could not
    be read from the task, else 3 if a pre-alignment was implausible and fell back, else 0). ``overwrite``: replace the fields of another configuration in ``out_dir``.
    ``rules``: the rule set whose file names to write (default: the task folder's, :attr:`Task.rules`).
    ``save_warped`` / ``save_jacobian`` / ``report``: also write the warped moving image (and
    labels), the Jacobian determinant map, the per-pair report (``pipeline.prediction.outputs``),
    also for pairs already predicted that lack them. Before anything is written, the largest
    pair's peak memory is checked against what the device has free (``pipeline.prediction.memory``:
    ``DataError`` when it cannot fit, unless ``skip_memory_check``); the estimate and the measured
    peak go into ``runtimes.json`` (``memory``)."""
    outputs = Outputs(warped=save_warped, jacobian=save_jacobian, report=report)
    cfg = run_config(run_dir, overrides)  # refused before anything is read or written
    check_output_path(out_dir, folder=True)
    info: DistInfo = init_distributed(device)
    held = contextlib.ExitStack()  # the submission folder's writer lock (one writer; the torchrun job is one)
    try:
        task = load_task(data_dir).with_rules(rules)
        if task.layout == Layout.L2R2020 and task.rules != rulesets.L2R.name:
            raise DataError(f"{data_dir}: a 2020-layout task is submitted in the 2020 format; --rules {task.rules} is for current layouts")
        pairs, unreadable = task.pairs.get(split, ()), list(task.split_problems(split))
        if not pairs and not unreadable:
            raise DataError(f"{data_dir}: the task has no {split} pairs")
        dev = pick_device(device, info)
        scale = explicit_scale(overrides, cfg)
        grid = quiet_grid(trained_spacing(run_dir), scale, cfg)  # the grid the network will run on, for the check
        memory = check_task_prediction(task, pairs, cfg, dev, outputs, skip_memory_check, grid)  # before any output
        p = load_predictor(cfg, run_dir, task, dev, checkpoint, scale)
        manifest_path = out_dir / (f"runtimes.rank{info.rank}.json" if info.enabled else "runtimes.json")
        held.enter_context(hold_folder(out_dir, info, p.device))
        prepare_out_dir(out_dir, p, task, overwrite, info)
        manifest = resume_manifest(out_dir / "runtimes.json", manifest_path, p)
        check_field_space(out_dir, p, task, [q for q in pairs if q.key not in manifest["runtimes"]])  # every rank: all stop
        if info.is_main:  # after the checks: a refused start leaves nothing behind
            write_json(out_dir / CONFIG_RECORD, {"config_hash": p.config_hash, "checkpoint": p.checkpoint, "rules": task_rules(task),
                                                 "config": p.cfg.to_dict()})
        mine = pairs[info.rank :: info.world_size]
        problems = list(unreadable) if info.is_main else []
        predicted = False
        present = {q.key for q in mine if q.key in manifest["runtimes"] and (out_dir / output_name(task, q)).exists()}
        todo = [q for q in mine if q.key not in present or (outputs.any() and missing(out_dir, task, q, outputs))]
        if info.is_main and present:
            what = "nothing to do" if not todo else f"{len(todo)} to do"
            log.info("%d pair(s) already present in %s (same configuration), %s", len(present), out_dir, what)
        for pair in progress(todo, desc=f"predict {task.name}", unit="pair", enabled=info.is_main and bool(todo), logger=log):
            field = out_dir / output_name(task, pair)
            done = pair.key in present  # written earlier under the same configuration
            try:
                if not done:
                    notes: dict[str, Any] = {}
                    manifest["runtimes"][pair.key] = predict_pair(p, pair, out_dir, notes)
                    if "affine" in notes:
                        manifest.setdefault("affine", {})[pair.key] = notes["affine"]
                    manifest["memory"], predicted = memory.record(), True  # of the run that predicted the fields
                    record_grid(manifest, p.grid_policy, pair.key)
                    write_manifest(manifest_path, manifest)
                if outputs.any() and (not done or missing(out_dir, task, pair, outputs)):
                    write_pair_outputs(out_dir, task, pair, field, outputs)  # not timed: not part of the runtime
            except (DataError, ValueError) as exc:
                problems.append(f"{pair.key}: {exc}")
        if predicted:
            manifest["memory"] = memory.record()  # the measured peak includes the extra outputs
        write_manifest(manifest_path, manifest)
        if info.enabled:
            torch.distributed.barrier()
            if info.is_main:
                merge_rank_manifests(out_dir, info.world_size)
        if outputs.report and info.is_main and (out_dir / REPORT_DIR).is_dir():
            write_index(out_dir / REPORT_DIR, task.name)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        implausible = {k: v for k, v in manifest.get("affine", {}).items() if k in {q.key for q in todo} and v["reasons"]}
        for key, note in implausible.items():
            print(f"implausible pre-alignment: {key}: {'; '.join(note['reasons'])} -> {note['action']}", file=sys.stderr)
        if info.is_main:
            log.info("%d field(s) in %s (%d predicted now)", len(manifest["runtimes"]), out_dir, len(todo) - len(problems))
        return 1 if problems else 3 if implausible else 0
    except OutputError as exc:  # a full disk or a folder it may not write: what is kept, how to resume
        raise exc.with_next_step(resume_advice(out_dir, task, pairs)) from exc
    finally:
        held.close()
        shutdown(info)


def next_steps(data_dir: Path, out_dir: Path, split: str, report: bool) -> list[str]:
    """What to run after ``predict``: evaluate the val pairs, or zip the test fields."""
    lines = [f"fields and runtimes.json in {out_dir}"]
    if report:
        lines.append(f"reports: {out_dir / REPORT_DIR / 'index.html'}")
    if split == "val":
        lines.append(f"next: python -m pipeline evaluate -i {out_dir} -d {data_dir} -o {out_dir.with_suffix('.json')}")
    lines.append(f"{'then' if split == 'val' else 'next'}: the zip to upload: python -m pipeline package --data {data_dir} "
                 f"--submission {out_dir}{'' if split == 'val' else ' --split test'} --out {out_dir.with_suffix('.zip')}")
    return lines


def build_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", "--run-dir", dest="run", type=Path, default=None,
                        help="training run folder (config.json + checkpoints/); under torchrun write --run-dir")
    source.add_argument("--config", type=Path, default=None,
                        help="configuration file of a network-free registration (predict.network \"none\": no run needed)")
    parser.add_argument("--data", type=Path, required=True, help="task folder")
    parser.add_argument("--out", type=Path, required=True, help="submission folder for this task")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="which pairs of the task")
    parser.add_argument("--checkpoint", default="best", help="best | last | PATH")
    parser.add_argument("--rules", choices=rulesets.RULE_SETS, default=None,
                        help="whose file names to write (default: the task folder's rule set: lumir24/lumir25 for LUMIR, "
                             "remind2reg for ReMIND2Reg, else l2r)")
    add_device_argument(parser)
    add_override_arguments(parser)
    add_scale_arguments(parser)
    parser.add_argument("--save-warped", action="store_true",
                        help="also write the warped moving image, and its warped labels (nearest) when it has them, "
                             "on the fixed grid, in OUT/warped/")
    parser.add_argument("--save-jacobian", action="store_true",
                        help="also write the Jacobian determinant det(I + grad u) on the fixed grid (det <= 0: folded), "
                             "in OUT/jacobian/")
    parser.add_argument("--report", action="store_true",
                        help="also write a visual report per pair and an index, in OUT/report/ (as `python -m pipeline report`)")
    add_overwrite_argument(parser, "fields that --out holds from another configuration")
    parser.add_argument("--skip-memory-check", action="store_true",
                        help="run even when the estimated peak memory exceeds what the device has free")


def run(args: argparse.Namespace) -> int:
    code = predict(args.data, args.out, args.run, args.split, args.device, args.checkpoint, args.save_warped,
                   args.overwrite, save_jacobian=args.save_jacobian, report=args.report, rules=args.rules,
                   skip_memory_check=args.skip_memory_check, affine=args.affine, instance_opt_steps=args.instance_opt_steps,
                   instance_opt_similarity=args.instance_opt_similarity, sets=args.sets,
                   input_scale=args.input_scale, target_spacing=args.target_spacing, config_file=args.config)
    if int(os.environ.get("RANK", "0")) == 0 and Path(args.out).is_dir():
        print("\n".join(next_steps(args.data, args.out, args.split, args.report)))
    return code
