"""ANTs SyNCC reference fields for the validation pairs of a Learn2Reg task (current layout).

Runs in its own environment (antspyx is not a project dependency)::

    python3.11 -m venv /tmp/scratch/ants-venv
    /tmp/scratch/ants-venv/bin/pip install antspyx==0.6.3 numpy nibabel
    nice -n 10 /tmp/scratch/ants-venv/bin/python bench/ants_baseline.py \\
        --task /tmp/scratch/brain/BrainDev --out /tmp/scratch/brain/ants_syncc
    .venv/bin/python -m evaluation.evaluate -i /tmp/scratch/brain/ants_syncc -d /tmp/scratch/brain/BrainDev -o ants_syncc.json

Every ``registration_val`` pair is registered with ``ants.registration(fixed, moving,
type_of_transform=T)`` and nothing else changed. ``--transform SyNCC`` (default; antspyx 0.6.3
defaults: rigid then affine stages with Mattes MI, 32 bins, regular sampling at rate 0.2; then
``SyN[0.15,3,0]`` with CC of radius 4, ``2100x1200x1200x20`` iterations, shrink ``4x3x2x1``,
smoothing ``3x2x1x0`` voxels, float precision) or ``--transform "antsRegistrationSyN[s,4]"``:
antspyx's recreation of ``antsRegistrationSyN.sh -t s``, what ANTs users run for inter-subject
brain MR, with the script's CC radius 4 (rigid and affine with MI, ``[1000x500x250x100,1e-6,10]``,
shrink ``8x4x2x1``; ``SyN[0.2,3,0]`` with ``CC[...,1,4]``, ``[100x70x50x20,1e-6,10]``, shrink
``8x4x2x1``, smoothing ``3x2x1x0vox``; :data:`SYN_SCRIPT_STAGES`). ``--seed`` only fixes the metric's sampling (antsRegistration
``--random-seed``); with 2 threads the result can still differ in the last digits run to run.

Conversion into the project's field contract (fixed grid, ``X x Y x Z x 3``, voxel units, pull:
the warped moving image is ``moving(x + u(x))``): the physical (LPS) centre of every fixed voxel
is mapped through ``fwdtransforms`` by ``ants.apply_transforms_to_points`` (points travel
fixed -> moving with the same list that resamples the moving image onto the fixed grid), then
into the moving image's continuous voxel index; ``u`` = that index minus the fixed voxel index.
This is exact for every voxel, including those that map outside the moving grid (where a
coordinate image resampled by ``apply_transforms`` would only give a default value, and, in the
outer half voxel, a clamped one).

Two checks per pair, reported in ``ants_report.json`` and on stdout:

* coordinates: three images holding the moving voxel indices ``i, j, k`` (moving geometry),
  resampled onto the fixed grid by ``ants.apply_transforms(..., interpolator="linear")`` (linear
  interpolation of a linear function is exact) must equal ``x + u`` wherever they map at least
  one voxel inside the moving grid;
* image: ``scipy.ndimage.map_coordinates(moving, x + u, order=1)`` must equal ANTs' own linear
  resampling of the moving image, up to float32 rounding.

The folder gets ``disp_{fixS}_{fixM}_{movS}_{movM}.nii.gz`` (float32) per pair, ``runtimes.json``
(schema of ``learn2reg/submission.py``; ``network_s`` = wall time of the registration call,
``total_s`` = load + registration + conversion + write; also ``registration_cpu_s``, the CPU time
of the registration over all threads, and the checks' own time ``check_s``) and
``ants_report.json``. ``--resume`` skips pairs whose field and report entry exist.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"

TRANSFORM = "SyNCC"
#: antsRegistrationSyN.sh -t s as its users run it for inter-subject brain MR, with the script's
#: CC radius 4 (antspyx's recreation of the script defaults to radius 2; "[s,4]" sets it)
SYN_SCRIPT = "antsRegistrationSyN[s,4]"
# What each type_of_transform runs in antspyx 0.6.3 (ants/registration/registration.py), recorded
# so that the numbers can be traced; no other argument of ants.registration is changed from its default.
SYNCC_STAGES = {
    "rigid": "Rigid[1]; MI[fixed,moving,1,32,regular,0.2]; 2100x1200x1200x0; shrink 4x4x2x1; smooth 3x2x1x0",
    "affine": "Affine[1]; MI[fixed,moving,1,32,regular,0.2]; 1200x1200x100; shrink 4x2x1; smooth 2x1x0",
    "syn": "SyN[0.15,3,0]; CC[fixed,moving,1,4]; [2100x1200x1200x20,1e-7,8]; shrink 4x3x2x1; smooth 3x2x1x0",
    "initial": "[fixed,moving,1] (centre-of-mass alignment)",
    "precision": "float",
}
SYN_SCRIPT_STAGES = {
    "rigid": "Rigid[0.1]; MI[fixed,moving,1,32,Regular,0.25]; [1000x500x250x100,1e-6,10]; shrink 8x4x2x1; smooth 3x2x1x0vox",
    "affine": "Affine[0.1]; MI[fixed,moving,1,32,Regular,0.25]; [1000x500x250x100,1e-6,10]; shrink 8x4x2x1; smooth 3x2x1x0vox",
    "syn": "SyN[0.2,3,0]; CC[fixed,moving,1,4]; [100x70x50x20,1e-6,10]; shrink 8x4x2x1; smooth 3x2x1x0vox",
    "initial": "[fixed,moving,1] (centre-of-mass alignment)",
    "precision": "float",
}
STAGES = {TRANSFORM: SYNCC_STAGES, SYN_SCRIPT: SYN_SCRIPT_STAGES}
_CASE_RE = re.compile(r"_(\d{4})_(\d{4})\.nii\.gz$")


def case_id(path: str) -> str:
    """``./imagesTr/NAME_0005_0000.nii.gz`` -> ``0005_0000``."""
    match = _CASE_RE.search(path)
    if match is None:
        raise SystemExit(f"{path}: not a Learn2Reg image name (NAME_SSSS_MMMM.nii.gz)")
    return f"{match.group(1)}_{match.group(2)}"


def val_pairs(task: Path) -> list[tuple[Path, Path, str, str]]:
    """(fixed image, moving image, fixed id, moving id) of every ``registration_val`` pair."""
    found = sorted(task.glob("*_dataset.json"))
    if len(found) != 1:
        raise SystemExit(f"{task}: expected one *_dataset.json, found {len(found)}")
    dataset = json.loads(found[0].read_text())
    pairs = []
    for entry in dataset.get("registration_val", []):
        fixed, moving = (task / entry["fixed"]).resolve(), (task / entry["moving"]).resolve()
        pairs.append((fixed, moving, case_id(entry["fixed"]), case_id(entry["moving"])))
    if not pairs:
        raise SystemExit(f"{found[0]}: no registration_val pairs")
    return pairs


def index_to_physical(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 matrix, origin) with ``physical = matrix @ index + origin`` (ITK/LPS, mm)."""
    matrix = np.asarray(image.direction, dtype=np.float64) @ np.diag(np.asarray(image.spacing, dtype=np.float64))
    return matrix, np.asarray(image.origin, dtype=np.float64)


def grid_indices(shape: tuple[int, ...]) -> np.ndarray:
    """``N x 3`` voxel indices of a grid, C order (the first axis varies slowest)."""
    return np.indices(shape, dtype=np.float64).reshape(3, -1).T


def field_from_transforms(ants: Any, fixed: Any, moving: Any, transforms: list[str]) -> np.ndarray:
    """The contract field ``X x Y x Z x 3`` (float64, voxels) of an ANTs forward transform list."""
    index = grid_indices(fixed.shape)
    f_mat, f_org = index_to_physical(fixed)
    physical = index @ f_mat.T + f_org
    mapped = ants.apply_transforms_to_points(3, pd.DataFrame(physical, columns=["x", "y", "z"]), transforms)
    m_mat, m_org = index_to_physical(moving)
    moving_index = (mapped[["x", "y", "z"]].to_numpy(np.float64) - m_org) @ np.linalg.inv(m_mat).T
    return (moving_index - index).reshape(*fixed.shape, 3)


def check_field(ants: Any, fixed: Any, moving: Any, transforms: list[str], disp: np.ndarray) -> dict[str, float]:
    """Compare ``x + u`` with ANTs' resampling of coordinate images, and our warp of the moving
    image with ANTs' own (both linear); returns the largest differences."""
    identity = np.indices(fixed.shape, dtype=np.float64)
    target = identity + np.moveaxis(disp, -1, 0)
    sentinel = -1.0e4
    coord_diff, inside = [], None
    for axis in range(3):
        coords = np.indices(moving.shape, dtype=np.float32)[axis]
        image = ants.from_numpy(coords, origin=moving.origin, spacing=moving.spacing, direction=moving.direction)
        warped = ants.apply_transforms(fixed, image, transforms, interpolator="linear", defaultvalue=sentinel).numpy()
        coord_diff.append(warped - target[axis])
        # ITK treats the outer half voxel as inside but clamps there: compare at least 1 voxel in
        ok = (warped != sentinel) & (target[axis] >= 0.0) & (target[axis] <= moving.shape[axis] - 1)
        inside = ok if inside is None else inside & ok
    assert inside is not None
    coord_err = np.abs(np.stack(coord_diff))[:, inside]
    moving_np = moving.numpy().astype(np.float64)
    ours = ndimage.map_coordinates(moving_np, target, order=1, mode="constant", cval=0.0)
    theirs = ants.apply_transforms(fixed, moving, transforms, interpolator="linear").numpy().astype(np.float64)
    image_err = np.abs(ours - theirs)
    scale = float(np.abs(moving_np).max()) or 1.0
    return {
        "coord_max_abs_vox": float(coord_err.max()) if coord_err.size else float("nan"),
        "coord_voxels_compared": int(inside.sum()),
        "outside_fraction": float(1.0 - inside.mean()),
        "image_max_abs_rel": float(image_err[inside].max() / scale),
        "image_max_abs_rel_all_voxels": float(image_err.max() / scale),
        "image_rms_rel": float(np.sqrt(np.mean(image_err**2)) / scale),
    }


def save_field(path: Path, disp: np.ndarray, affine: np.ndarray) -> None:
    """Write a float32 ``X x Y x Z x 3`` field with the fixed image's affine, atomically."""
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(disp, dtype=np.float32), affine), str(tmp))
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def run(task: Path, out: Path, threads: int, seed: int | None, resume: bool, limit: int | None, check: bool,
        transform: str = TRANSFORM) -> dict[str, Any]:
    """Register every val pair; returns the report (also written to ``out``)."""
    os.environ[THREADS_ENV] = str(threads)  # before ITK starts any thread pool
    import ants  # after the thread setting: ITK reads it when its first thread pool starts

    if seed is not None:
        ants.config._random_seed = seed  # what ants.set_ants_deterministic sets, without forcing 1 thread
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "ants_report.json"
    settings = {"type_of_transform": transform, "antspyx": ants.__version__, "stages": STAGES[transform],
                "random_seed": seed, "threads": threads}
    config_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    report: dict[str, Any] = {"settings": settings, "pairs": {}}
    if resume and report_path.is_file():
        report["pairs"] = json.loads(report_path.read_text()).get("pairs", {})
    pairs = val_pairs(task)[: limit or None]
    for n, (fixed_path, moving_path, fid, mid) in enumerate(pairs, start=1):
        key = f"{fid}<--{mid}"
        disp_path = out / f"disp_{fid}_{mid}.nii.gz"
        if resume and disp_path.is_file() and key in report["pairs"]:
            print(f"[{n}/{len(pairs)}] {key}: kept", flush=True)
            continue
        start = time.perf_counter()
        fixed, moving = ants.image_read(str(fixed_path)), ants.image_read(str(moving_path))
        with tempfile.TemporaryDirectory(prefix="ants-syncc-") as tmp:
            t_reg, cpu_reg = time.perf_counter(), time.process_time()
            reg = ants.registration(fixed, moving, type_of_transform=transform, outprefix=f"{tmp}/")
            network_s = time.perf_counter() - t_reg
            cpu_s = time.process_time() - cpu_reg  # all threads: shows CPU contention in the wall time
            disp = field_from_transforms(ants, fixed, moving, reg["fwdtransforms"])
            save_field(disp_path, disp, nib.load(str(fixed_path)).affine)
            total_s = time.perf_counter() - start
            entry: dict[str, Any] = {"total_s": total_s, "network_s": network_s, "registration_cpu_s": cpu_s,
                                     "max_abs_disp_vox": float(np.abs(disp).max())}
            if check:
                t_chk = time.perf_counter()
                entry["check"] = check_field(ants, fixed, moving, reg["fwdtransforms"], disp)
                entry["check_s"] = time.perf_counter() - t_chk
        report["pairs"][key] = entry
        write_json(report_path, report)
        write_manifest(out, report, ants.__version__, threads, config_hash, transform)
        print(f"[{n}/{len(pairs)}] {key}: registration {network_s:.1f} s, total {total_s:.1f} s"
              + (f", check {json.dumps(entry['check'])}" if check else ""), flush=True)
    write_manifest(out, report, ants.__version__, threads, config_hash, transform)
    return report


def write_manifest(out: Path, report: dict[str, Any], version: str, threads: int, config_hash: str, transform: str = TRANSFORM) -> None:
    """``runtimes.json`` in the schema of ``learn2reg/submission.py``."""
    runtimes = {key: {k: round(v, 3) for k, v in e.items() if k.endswith("_s")} for key, e in report["pairs"].items()}
    write_json(out / "runtimes.json", {"device": f"CPU ({threads} threads) ANTsPy {version}", "checkpoint": f"ants-{transform}",
                                       "config_hash": config_hash, "runtimes": runtimes})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", type=Path, required=True, help="Learn2Reg task folder (current layout)")
    parser.add_argument("--out", type=Path, required=True, help="submission folder to write")
    parser.add_argument("--threads", type=int, default=2, help=f"{THREADS_ENV} (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="antsRegistration --random-seed (default 0; -1: clock)")
    parser.add_argument("--resume", action="store_true", help="keep pairs already done")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the conversion checks")
    parser.add_argument("--transform", choices=sorted(STAGES), default=TRANSFORM,
                        help=f"type_of_transform: {TRANSFORM} (antspyx defaults) or {SYN_SCRIPT} (antsRegistrationSyN.sh -t s, CC radius 4)")
    args = parser.parse_args(argv)
    report = run(args.task, args.out, args.threads, None if args.seed < 0 else args.seed, args.resume, args.limit, args.check,
                 args.transform)
    times = [e["network_s"] for e in report["pairs"].values()]
    print(f"{len(times)} pairs, registration {sum(times) / max(len(times), 1):.1f} s/pair -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
