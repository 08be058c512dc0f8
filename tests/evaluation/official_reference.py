"""Test oracle: the official Learn2Reg evaluation formulas, written out straightforwardly in float64.

Independent of ``evaluation.metrics`` / ``evaluation.surface`` on purpose: full-volume
``scipy.ndimage.correlate`` gradients and float64 9-component Jacobians, one boolean mask per label,
the full cubic prefilter for TRE, the PyPI ``surface-distance`` package (DeepMind's code, which the
official evaluator calls) for HD95, fields read with ``get_fdata`` and header zooms for spacing, as
the official script does. Slow and memory-hungry by design; only for tests and the benchmark.
Also LUMIR's NDV and landmark-centroid TRE (``tests/fixtures/organisers/SPEC.md`` 2.5, 2.6), as
ten full-volume ``correlate`` Jacobians and one mask per landmark.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage


@contextlib.contextmanager
def deepmind_compat() -> Iterator[None]:
    """surface-distance 0.1 uses ``np.Inf`` (removed in numpy 2) and scipy's deprecated
    ``ndimage.filters`` names: alias the one and silence the other while it runs."""
    added = "Inf" not in vars(np)
    if added:
        setattr(np, "Inf", np.inf)  # noqa: B010 (the name ruff's NPY201 would rewrite)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        if added:
            delattr(np, "Inf")  # noqa: B043


def jacobian_determinant(disp: np.ndarray) -> np.ndarray:
    """Official: ``disp`` 1 x 3 x H x W x D; zero-padded central differences, crop 2, cofactors."""
    kernels = [np.array([-0.5, 0, 0.5]).reshape(shape) for shape in ((1, 3, 1, 1), (1, 1, 3, 1), (1, 1, 1, 3))]
    grads = [
        np.stack([ndimage.correlate(disp[:, c], k, mode="constant", cval=0.0) for c in range(3)], axis=1) for k in kernels
    ]
    j = np.concatenate(grads, 0) + np.eye(3, 3).reshape(3, 3, 1, 1, 1)
    j = j[:, :, 2:-2, 2:-2, 2:-2]
    return (
        j[0, 0] * (j[1, 1] * j[2, 2] - j[1, 2] * j[2, 1])
        - j[1, 0] * (j[0, 1] * j[2, 2] - j[0, 2] * j[2, 1])
        + j[2, 0] * (j[0, 1] * j[1, 2] - j[0, 2] * j[1, 1])
    )


def sdlogj(disp: np.ndarray, mask: np.ndarray | None) -> tuple[float, float, np.ndarray]:
    """Official SDlogJ, official num_foldings and the raw determinant (``disp`` X x Y x Z x 3)."""
    det = jacobian_determinant(disp[np.newaxis].transpose(0, 4, 1, 2, 3))
    jac = np.clip(det + 3, 1e-9, 1e9)
    log_jac = np.log(jac)
    value = np.ma.MaskedArray(log_jac, 1 - mask[2:-2, 2:-2, 2:-2]).std() if mask is not None else log_jac.std()
    return float(value), float((jac <= 0).astype(float).sum()), det


def true_jacobian(det: np.ndarray, mask: np.ndarray | None) -> tuple[float, int, float]:
    """Ours, plainly: std of log det over det > 0, count and fraction of det <= 0 (same region)."""
    region = det if mask is None else det[mask[2:-2, 2:-2, 2:-2] == 1]
    positive = region[region > 0]
    std = float(np.log(positive).std()) if positive.size else float("nan")
    folds = int((region <= 0).sum())
    return std, folds, folds / region.size


def compute_tre(fix_lms: np.ndarray, mov_lms: np.ndarray, disp: np.ndarray, spacing_mov: Any) -> np.ndarray:
    sampled = np.array([ndimage.map_coordinates(disp[..., k], fix_lms.T) for k in range(3)]).T
    return np.linalg.norm((fix_lms + sampled - mov_lms) * spacing_mov, axis=1)


def compute_dice(fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray, labels: list[int]) -> tuple[float, list]:
    import surface_distance

    dice = []
    for i in labels:
        if (fixed == i).sum() == 0 or (moving == i).sum() == 0:
            dice.append(np.nan)
        else:
            dice.append(float(surface_distance.compute_dice_coefficient(fixed == i, warped == i)))
    return float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else float("nan"), dice


def compute_hd95(fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray, labels: list[int], spacing: Any = (1, 1, 1)) -> tuple[float, list]:
    import surface_distance

    hd = []
    with deepmind_compat():
        for i in labels:
            if (fixed == i).sum() == 0 or (moving == i).sum() == 0:
                hd.append(np.nan)
            else:
                dist = surface_distance.compute_surface_distances(fixed == i, warped == i, np.asarray(spacing, float))
                hd.append(float(surface_distance.compute_robust_hausdorff(dist, 95.0)))
    return float(np.nanmean(hd)) if not np.all(np.isnan(hd)) else float("nan"), hd


def load_disp(path: Path) -> np.ndarray:
    """Official loader: ``.npz`` any single key, cast to float32; NIfTI via ``get_fdata`` (float64)."""
    if str(path).endswith(".npz"):
        data = np.load(path)
        disp = data[data.files[0]]
        return disp.astype(np.float32) if disp.dtype != np.float32 else disp
    return nib.load(str(path)).get_fdata()


def load_disp_2020(path: Path, fixed_shape: tuple[int, ...]) -> np.ndarray:
    """2020 rule: arr_0 float16 3 x ..., each component ``zoom(c, 2, order=2)`` unless full size."""
    disp = np.load(path)["arr_0"].astype(np.float32)
    if tuple(disp.shape[1:]) != tuple(fixed_shape):
        disp = np.stack([ndimage.zoom(c, 2, order=2) for c in disp])
    return disp.transpose(1, 2, 3, 0)


def _field_path(disp_dir: Path, fixed: str, moving: str, fmt: str) -> Path:
    fs, fm, ms, mm = fixed[-16:-12], fixed[-11:-7], moving[-16:-12], moving[-11:-7]
    if fmt == "l2r2020":
        return disp_dir / f"disp_{fs}_{ms}.npz"
    stems = ([f"disp_{fs}_{ms}"] if (fm, mm) == ("0000", "0001") else []) + [f"disp_{fs}_{fm}_{ms}_{mm}"]
    for stem in stems:
        for ext in (".npz", ".nii.gz"):
            if (disp_dir / (stem + ext)).is_file():
                return disp_dir / (stem + ext)
    raise FileNotFoundError(f"no field for {fixed} <- {moving} in {disp_dir}")


def evaluate_reference(disp_dir: str | Path, gt_path: str | Path, config_path: str | Path, fmt: str = "l2r", extras: bool = True) -> dict:
    """The official evaluation loop (plus our extras computed plainly) -> result dict."""
    disp_dir, gt_path = Path(disp_dir), Path(gt_path)
    data = json.loads(Path(config_path).read_text())
    methods = data["evaluation_methods"]
    cases = {}
    for pair in data["eval_pairs"]:
        fixed_rel, moving_rel = pair["fixed"], pair["moving"]
        fs, fm, ms, mm = fixed_rel[-16:-12], fixed_rel[-11:-7], moving_rel[-16:-12], moving_rel[-11:-7]
        fixed_shape = nib.load(str(gt_path / fixed_rel)).shape
        path = _field_path(disp_dir, fixed_rel, moving_rel, fmt)
        disp = load_disp_2020(path, fixed_shape) if fmt == "l2r2020" else load_disp(path)
        cases[f"{fs}_{fm}<--{ms}_{mm}"] = _case(disp, gt_path, fixed_rel, moving_rel, methods, data, extras)
    aggregates = {}
    kinds = {m["name"]: m["metric"] for m in methods}
    if extras:
        first = next(iter(cases.values()))
        kinds.update({k: "sdlogj" if k == "SDlogJ_true" else "folding" for k in ("SDlogJ_true", "num_foldings_true", "folding_fraction") if k in first})
        kinds.update({m["name"] + "_mm": "hd95" for m in methods if m["metric"] == "hd95"})
    for name, kind in kinds.items():
        values = np.array([c[name]["mean"] for c in cases.values()])
        q = 0.7 if kind in ("sdlogj", "tre", "folding") else 0.3
        aggregates[name] = {"mean": values.mean(), "std": values.std(), "30": np.quantile(values, q)}
    return {"name": data["task_name"], "aggregates": aggregates, "cases": cases, "eval_version": "2.0"}


def _case(
    disp: np.ndarray, gt_path: Path, fixed_rel: str, moving_rel: str, methods: list[dict], data: dict, extras: bool
) -> dict:
    out, ours = {}, {}
    metric_names = [m["metric"] for m in methods]
    if "dice" in metric_names or "hd95" in metric_names:
        fixed_seg = nib.load(str(gt_path / fixed_rel.replace("images", "labels"))).get_fdata()
        moving_seg = nib.load(str(gt_path / moving_rel.replace("images", "labels"))).get_fdata()
        identity = np.meshgrid(*[np.arange(n) for n in fixed_seg.shape], indexing="ij")
        warped = ndimage.map_coordinates(moving_seg, identity + disp.transpose(3, 0, 1, 2), order=0)
        fixed_spacing = nib.load(str(gt_path / fixed_rel.replace("images", "labels"))).header.get_zooms()[:3]
    mask = None
    if data.get("masked_evaluation", False):
        mask_path = gt_path / fixed_rel.replace("images", "masks")
        mask = nib.load(str(mask_path)).get_fdata() if mask_path.exists() else None
    for m in methods:
        name = m["name"]
        if m["metric"] == "sdlogj":
            value, folds, det = sdlogj(disp, mask)
            out[name] = {"mean": value, "detailed": value}
            out["num_foldings"] = {"mean": folds, "detailed": folds}
            std, n_folds, fraction = true_jacobian(det, mask)
            ours.update(SDlogJ_true=std, num_foldings_true=n_folds, folding_fraction=fraction)
        elif m["metric"] == "dice":
            mean, detailed = compute_dice(fixed_seg, moving_seg, warped, m["labels"])
            out[name] = {"mean": mean, "detailed": detailed}
        elif m["metric"] == "hd95":
            mean, detailed = compute_hd95(fixed_seg, moving_seg, warped, m["labels"])
            out[name] = {"mean": mean, "detailed": detailed}
            if extras:
                ours[name + "_mm"] = compute_hd95(fixed_seg, moving_seg, warped, m["labels"], fixed_spacing)
        elif m["metric"] == "tre":
            spacing_mov = nib.load(str(gt_path / moving_rel)).header.get_zooms()[:3]
            dest = m["dest"]
            fix_lms = np.loadtxt(gt_path / fixed_rel.replace("images", dest).replace(".nii.gz", ".csv"), delimiter=",", ndmin=2)
            mov_lms = np.loadtxt(gt_path / moving_rel.replace("images", dest).replace(".nii.gz", ".csv"), delimiter=",", ndmin=2)
            tre = compute_tre(fix_lms, mov_lms, disp, spacing_mov)
            out[name] = {"mean": float(tre.mean()), "detailed": tre.tolist()}
    if extras:
        for key, value in ours.items():
            mean, detailed = value if isinstance(value, tuple) else (value, value)
            out[key] = {"mean": mean, "detailed": detailed}
    return out



NDV_ORDER = ("+x+y+z", "+x+y-z", "+x-y+z", "+x-y-z", "Jstar_1", "Jstar_2", "-x+y+z", "-x+y-z", "-x-y+z", "-x-y-z")


def _cofactor_det(j: list[list[np.ndarray]]) -> np.ndarray:
    """det of ``j[a][c]`` by the cofactor expansion down the first column (the organisers' order)."""
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[1][0] * (j[0][1] * j[2][2] - j[0][2] * j[2][1])
        + j[2][0] * (j[0][1] * j[1][2] - j[0][2] * j[1][1])
    )


def ndv_dets(disp: np.ndarray) -> dict[str, np.ndarray]:
    """The ten determinants of LUMIR's NDV on the interior: ``phi = u + id`` (float64), each row
    from ``correlate(phi_c, kernel, mode="nearest")`` over the whole volume, then cropped."""
    phi = disp.transpose(3, 0, 1, 2).astype(np.float64) + np.indices(disp.shape[:3]).astype(np.float32)
    dets = {}
    one_sided = {"+": [0, -1, 1], "-": [-1, 1, 0]}
    for name in NDV_ORDER:
        if name.startswith("Jstar"):
            sign, pairs = (-1, ((0, 1), (0, 2), (1, 2))) if name == "Jstar_1" else (1, ((0, 1), (1, 2), (0, 2)))
            kernels = []
            for a, b in pairs:
                k = np.zeros((3, 3, 3))
                k[1, 1, 1] = -1
                at = [1, 1, 1]
                at[a] += sign
                at[b] += sign
                k[tuple(at)] = 1
                kernels.append(k)
        else:
            kernels = [np.reshape(one_sided[name[2 * a]], [3 if d == a else 1 for d in range(3)]).astype(float) for a in range(3)]
        j = [[ndimage.correlate(phi[c], kernels[a], mode="nearest") for c in range(3)] for a in range(3)]
        dets[name] = _cofactor_det(j)[1:-1, 1:-1, 1:-1]
    return dets


def ndv(disp: np.ndarray, image: np.ndarray) -> float:
    """LUMIR's NDV (%): ``sum_k sum(-0.5 min(J_k, 0) mask / 6) / sum(mask) * 100``, mask = image > 0."""
    mask = image[1:-1, 1:-1, 1:-1] > 0
    dets = ndv_dets(disp)
    total = 0.0
    for name in NDV_ORDER:
        total += np.sum(-0.5 * np.minimum(dets[name], 0) * mask / 6)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(total / np.sum(mask) * 100)


def centroid_tre(fixed_lms: np.ndarray, moving_lms: np.ndarray, disp: np.ndarray) -> float:
    """LUMIR's landmark TRE (voxels): nearest warp of the moving landmark volume, then the mean
    distance of the label centroids, labels = ``np.unique(fixed)[1:]``; NaN for a vanished one."""
    identity = np.meshgrid(*[np.arange(n) for n in fixed_lms.shape], indexing="ij")
    warped = ndimage.map_coordinates(moving_lms, identity + disp.transpose(3, 0, 1, 2), order=0)
    grid = np.indices(fixed_lms.shape).astype(np.float64)
    errors = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for label in np.unique(fixed_lms)[1:]:
            centres = [[np.sum((vol == label).astype(np.float32) * g) / np.sum((vol == label).astype(np.float32)) for g in grid] for vol in (warped, fixed_lms)]
            errors.append(np.sqrt(np.sum((np.asarray(centres[0]) - np.asarray(centres[1])) ** 2)))
        return float(np.mean(errors)) if errors else float("nan")
