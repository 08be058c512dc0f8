"""A small synthetic task with many labels and many landmarks, for the per-pair report tests.

``make_many_task(root)``: 40^3 images, 100 labelled boxes (a 5 x 5 x 4 grid, label ids 1-100,
each its own intensity), 120 landmarks per image; subject ``s`` is the base image rolled by
``SHIFTS[s]`` voxels, so a fixed point ``x`` of subject 1 corresponds to ``x + shift`` in the
moving subject. ``ramp_field(shift)`` corrects the shift fully at the far corner of axes 0 and 1
and not at all at the origin (a pull field on the fixed grid): Dice and TRE after registration vary over
the image, so some labels and landmarks are clearly worse than others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from learn2reg.io import Geometry, save_nifti

SHAPE = (40, 40, 40)
SPACING = (1.0, 1.0, 1.5)
N_LABELS, N_POINTS = 100, 120
SHIFTS = {1: (0, 0, 0), 2: (2, 1, 0), 3: (1, 2, 1), 4: (2, 0, -1)}
PAIRS = ((1, 2), (1, 3), (1, 4))


def base_volumes(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, labels 1..100 (boxes of 5 x 5 x 6 voxels) and 120 points of subject 1."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    label = 0
    for i in range(5):
        for j in range(5):
            for k in range(4):
                label += 1
                labels[8 * i + 1 : 8 * i + 6, 8 * j + 1 : 8 * j + 6, 10 * k + 2 : 10 * k + 8] = label
    tone = np.concatenate([[0.0], rng.uniform(40, 200, N_LABELS)])
    image = (tone[labels] + rng.normal(0, 4, SHAPE)).astype(np.float32)
    points = rng.uniform(4, 35, (N_POINTS, 3)).round(1)
    return image, labels, points


def make_many_task(root: Path) -> Path:
    """The task folder (current layout): subjects 1-4, validation pairs 1 <- 2, 1 <- 3, 1 <- 4."""
    image, labels, points = base_volumes()
    geometry = Geometry.identity(SHAPE, SPACING)
    for s, shift in SHIFTS.items():
        stem = f"Many_{s:04d}_0000"
        save_nifti(root / "imagesTr" / f"{stem}.nii.gz", np.roll(image, shift, axis=(0, 1, 2)), geometry)
        save_nifti(root / "labelsTr" / f"{stem}.nii.gz", np.roll(labels, shift, axis=(0, 1, 2)), geometry)
        (root / "landmarksTr").mkdir(parents=True, exist_ok=True)
        np.savetxt(root / "landmarksTr" / f"{stem}.csv", points + np.asarray(shift), delimiter=",", fmt="%.3f")
    meta = {
        "name": "Many", "tensorImageShape": {"0": list(SHAPE)},
        "labels": {"0": {str(k): f"region {k:03d}" for k in range(1, N_LABELS + 1)}},
        "training": [{"image": f"./imagesTr/Many_{s:04d}_0000.nii.gz", "label": f"./labelsTr/Many_{s:04d}_0000.nii.gz"} for s in SHIFTS],
        "registration_val": [{"fixed": f"./imagesTr/Many_{f:04d}_0000.nii.gz", "moving": f"./imagesTr/Many_{m:04d}_0000.nii.gz"}
                             for f, m in PAIRS],
    }  # fmt: skip
    (root / "Many_dataset.json").write_text(json.dumps(meta))
    return root


def ramp_field(shift: tuple[int, int, int]) -> np.ndarray:
    """``u(x) = shift * (x_0 + x_1) / 78``: the full correction at the far corner of axes 0 and 1,
    none at the origin."""
    x0, x1 = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    ramp = ((x0 + x1) / float(SHAPE[0] + SHAPE[1] - 2)).astype(np.float32)[:, :, None, None]
    return np.broadcast_to(ramp * np.asarray(shift, np.float32), (*SHAPE, 3)).copy()


def write_ramp_submission(sub: Path) -> Path:
    """The ramp fields of the three validation pairs (current layout)."""
    from learn2reg.contract import disp_filename_l2r

    for f, m in PAIRS:
        shift = tuple(b - a for a, b in zip(SHIFTS[f], SHIFTS[m], strict=True))
        save_nifti(sub / disp_filename_l2r(f"{f:04d}_0000", f"{m:04d}_0000"), ramp_field(shift))  # type: ignore[arg-type]
    return sub
