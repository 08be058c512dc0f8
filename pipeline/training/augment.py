"""The seed paper's affine augmentation, applied consistently to image, labels, mask, points.

With probability ``p`` an affine ``A = Rx Ry Rz S`` plus a translation is drawn: rotations
uniform in [-10, 10] degrees about the grid centre, scaling ``1 + U[-0.08, 0.08]`` per axis,
translation ``U[-0.05, 0.05]`` in normalised units (fractions of the half-extent ``(N-1)/2``).
It is expressed as a voxel matrix ``M`` (augmented voxel -> original voxel) and applied through
the contract: the augmented image is ``I(M x)`` (linear, edge values repeated outside the
image: border padding), labels and masks nearest (zero outside: background); a point
``q`` of the original image sits at ``M^-1 q`` in the augmented one. Randomness comes only
from the ``torch.Generator`` passed in, so a resumed run draws the same augmentations.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import AugmentConfig
from pipeline.model.contract import affine_to_field, field_from_numpy, warp_torch


def _uniform(gen: torch.Generator, n: int, bound: float) -> np.ndarray:
    return ((torch.rand(n, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * bound).numpy()


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """Rx @ Ry @ Rz for angles (degrees) about array axes 0, 1, 2."""
    a = np.deg2rad(angles_deg)
    c, s = np.cos(a), np.sin(a)
    rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    return rx @ ry @ rz


def sample_affine(shape: tuple[int, ...], gen: torch.Generator, cfg: AugmentConfig) -> np.ndarray | None:
    """Draw the augmentation for one sample: ``None`` (probability ``1 - prob``) or a 4x4
    voxel matrix ``M`` mapping augmented voxels to original voxels. Always consumes the same
    number of random numbers, so the generator's stream does not depend on the outcome."""
    coin = float(torch.rand(1, generator=gen, dtype=torch.float64))
    angles = _uniform(gen, 3, cfg.rotation_deg)
    scales = 1.0 + _uniform(gen, 3, cfg.scaling)
    half = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    shift = _uniform(gen, 3, cfg.translation) * half
    if coin >= cfg.prob:
        return None
    linear = _rotation(angles) @ np.diag(scales)
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = half - linear @ half + shift  # about the grid centre
    return m


def augment(
    matrix: np.ndarray,
    image: torch.Tensor,
    label: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    points: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, np.ndarray | None]:
    """Apply voxel matrix ``M`` to ``1 x C x X x Y x Z`` tensors (image linear with border
    padding, labels/mask nearest with zero padding) and map ``N x 3`` points into the augmented grid."""
    u = field_from_numpy(affine_to_field(matrix, image.shape[2:]), image.device)
    out_image = warp_torch(image, u, padding="border")
    out_label = None if label is None else warp_torch(label.float(), u, mode="nearest", padding="zeros").to(label.dtype)
    out_mask = None if mask is None else warp_torch(mask.float(), u, mode="nearest", padding="zeros").to(mask.dtype)
    out_points = None
    if points is not None:
        inv = np.linalg.inv(matrix)
        out_points = np.asarray(points, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]
    return out_image, out_label, out_mask, out_points
