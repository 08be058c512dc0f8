"""Torch side of the displacement-field contract (the rules live in ``learn2reg.contract``).

Torch fields are ``B x 3 x X x Y x Z``, voxel units, channel ``k`` along array axis ``k``,
pull direction, on the fixed grid. ``grid_sample`` works in normalised coordinates with
``align_corners=True`` and its last grid dimension in reversed axis order; the conversions
between the two live here and nowhere else. LapIRN's raw output ("flow") is channels-first
``B x 3 x X x Y x Z`` in normalised units and *grid* channel order (channel 0 = axis Z).

Precision: grids, conversions and warps compute in at least float32 (a bfloat16 or float16
field is promoted, float64 stays) with autocast switched off, whatever the caller's context.

Padding outside the moving grid (``padding`` of :func:`warp_flow` and :func:`warp_torch`):
``"border"`` repeats the edge values and is the rule for **images** (a zero rim would darken
images that touch the edge); ``"zeros"`` makes the outside background and is the rule for
**labels** (one-hot or integer) and masks, and the default of both functions. Fields are
extended by their edge values (``pipeline.model.lapirn.compose_flow``, ``learn2reg.contract.compose``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from learn2reg.contract import (  # noqa: F401  re-exported: one import site for the pipeline
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
from pipeline.model.precision import field_dtype, no_autocast

PADDINGS = ("border", "zeros")


def _scale(shape: Sequence[int], ref: torch.Tensor) -> torch.Tensor:
    """``(N - 1) / 2`` per axis as a ``1 x 3 x 1 x 1 x 1`` tensor (axis order), in ``ref``'s field dtype."""
    return torch.as_tensor(normalized_scale(shape), dtype=field_dtype(ref), device=ref.device).view(1, 3, 1, 1, 1)


def flow_to_voxel(flow: torch.Tensor) -> torch.Tensor:
    """LapIRN flow (``B x 3 x X x Y x Z``, normalised, grid channel order) -> voxel field (at least float32)."""
    with no_autocast(flow):
        return flow.flip(1).to(field_dtype(flow)) * _scale(flow.shape[2:], flow)


def voxel_to_flow(u: torch.Tensor) -> torch.Tensor:
    """Voxel field (``B x 3 x X x Y x Z``) -> LapIRN flow (normalised, grid channel order; at least float32)."""
    with no_autocast(u):
        return (u.to(field_dtype(u)) / _scale(u.shape[2:], u)).flip(1)


def identity_flow_grid(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """grid_sample identity grid ``1 x X x Y x Z x 3`` (normalised, align_corners=True), at least float32."""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=field_dtype(like), device=like.device) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh[::-1], dim=-1).unsqueeze(0)


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")


def warp_flow(moving: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    """Warp ``moving`` (``B x C x X x Y x Z``) by a normalised flow on the fixed grid (same grid as ``moving``).

    ``padding`` outside the moving grid: ``"zeros"`` (labels, the default) or ``"border"``
    (images; LapIRN's image warps use its ``warp_padding``). Computed in at least float32
    (``moving`` is cast to the flow's field dtype), autocast off.
    """
    _check_padding(padding)
    with no_autocast(flow):
        dtype = field_dtype(flow)
        grid = identity_flow_grid(flow.shape[2:], flow) + flow.to(dtype).permute(0, 2, 3, 4, 1)
        return F.grid_sample(moving.to(dtype), grid, mode=mode, padding_mode=padding, align_corners=True)


def warp_torch(moving: torch.Tensor, u: torch.Tensor, mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    """Torch twin of ``learn2reg.contract.warp``: ``moving(x + u(x))`` with a voxel field ``u``.

    ``mode`` "bilinear" (trilinear in 3-D) for images, "nearest" for labels. ``padding`` outside
    the moving grid: ``"zeros"`` (the default; labels and masks: outside is background; it agrees
    with scipy's constant mode wherever the sampled point lies inside the grid) or ``"border"``
    (images: edge values repeated, no dark rim). Computed in at least float32 (``moving`` is cast
    to ``u``'s field dtype), autocast off.
    """
    if u.ndim != 5 or u.shape[1] != 3:
        raise ValueError(f"field must be B x 3 x X x Y x Z, got {tuple(u.shape)}")
    _check_padding(padding)
    with no_autocast(u):
        dtype = field_dtype(u)
        grid_scale_m = _scale(moving.shape[2:], u)
        ident = torch.as_tensor(identity_grid(u.shape[2:]), dtype=dtype, device=u.device).unsqueeze(0)
        normalised = (ident + u.to(dtype)) / grid_scale_m - 1.0
        grid = normalised.flip(1).permute(0, 2, 3, 4, 1)
        return F.grid_sample(moving.to(dtype), grid, mode=mode, padding_mode=padding, align_corners=True)


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
