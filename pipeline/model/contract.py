"""Torch side of the displacement-field contract (the rules live in ``evaluation.contract``).

Torch fields are ``B x 3 x X x Y x Z``, voxel units, channel ``k`` along array axis ``k``,
pull direction, on the fixed grid. ``grid_sample`` works in normalised coordinates with
``align_corners=True`` and its last grid dimension in reversed axis order; the conversions
between the two live here and nowhere else. LapIRN's raw output ("flow") is channels-first
``B x 3 x X x Y x Z`` in normalised units and *grid* channel order (channel 0 = axis Z).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.contract import (  # noqa: F401  re-exported: one import site for the pipeline
    affine_to_field,
    check_field,
    compose,
    compose_affine,
    disp_filename_2020,
    disp_filename_l2r,
    from_2020,
    grid_scale,
    identity_grid,
    jacobian_determinant,
    normalized_scale,
    normalized_to_voxel,
    physical_to_voxel_affine,
    resample_field,
    resize_image,
    sample_field,
    scale_points,
    to_2020,
    voxel_to_normalized,
    warp,
    warp_labels,
)


def _scale(shape: Sequence[int], ref: torch.Tensor) -> torch.Tensor:
    """``(N - 1) / 2`` per axis as a ``1 x 3 x 1 x 1 x 1`` tensor (axis order)."""
    return torch.as_tensor(normalized_scale(shape), dtype=ref.dtype, device=ref.device).view(1, 3, 1, 1, 1)


def flow_to_voxel(flow: torch.Tensor) -> torch.Tensor:
    """LapIRN flow (``B x 3 x X x Y x Z``, normalised, grid channel order) -> voxel field."""
    return flow.flip(1) * _scale(flow.shape[2:], flow)


def voxel_to_flow(u: torch.Tensor) -> torch.Tensor:
    """Voxel field (``B x 3 x X x Y x Z``) -> LapIRN flow (normalised, grid channel order)."""
    return (u / _scale(u.shape[2:], u)).flip(1)


def identity_flow_grid(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """grid_sample identity grid ``1 x X x Y x Z x 3`` (normalised, align_corners=True)."""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=like.dtype, device=like.device) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh[::-1], dim=-1).unsqueeze(0)


def warp_flow(moving: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp ``moving`` (``B x C x X x Y x Z``) by a normalised flow on the fixed grid."""
    grid = identity_flow_grid(flow.shape[2:], flow) + flow.permute(0, 2, 3, 4, 1)
    return F.grid_sample(moving, grid, mode=mode, padding_mode="zeros", align_corners=True)


def warp_torch(moving: torch.Tensor, u: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Torch twin of ``evaluation.contract.warp``: ``moving(x + u(x))`` with a voxel field ``u``.

    ``mode`` "bilinear" (trilinear in 3-D) for images, "nearest" for labels. Outside the
    moving grid, zero padding (grid_sample's; it agrees with scipy's constant mode wherever
    the sampled point lies inside the grid).
    """
    if u.ndim != 5 or u.shape[1] != 3:
        raise ValueError(f"field must be B x 3 x X x Y x Z, got {tuple(u.shape)}")
    grid_scale_m = _scale(moving.shape[2:], u)
    ident = torch.as_tensor(identity_grid(u.shape[2:]), dtype=u.dtype, device=u.device).unsqueeze(0)
    normalised = (ident + u) / grid_scale_m - 1.0
    grid = normalised.flip(1).permute(0, 2, 3, 4, 1)
    return F.grid_sample(moving.to(u.dtype), grid, mode=mode, padding_mode="zeros", align_corners=True)


def field_to_numpy(u: torch.Tensor) -> np.ndarray:
    """One torch field ``1 x 3 x X x Y x Z`` (or ``3 x X x Y x Z``) -> contract array ``X x Y x Z x 3``."""
    u = u.detach().float().cpu()
    if u.ndim == 5:
        if u.shape[0] != 1:
            raise ValueError(f"expected a batch of one, got {u.shape[0]}")
        u = u[0]
    return np.ascontiguousarray(u.permute(1, 2, 3, 0).numpy())


def field_from_numpy(u: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Contract array ``X x Y x Z x 3`` -> torch field ``1 x 3 x X x Y x Z`` (float32)."""
    check_field(u)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(u, -1, 0), dtype=np.float32)).unsqueeze(0).to(device)
