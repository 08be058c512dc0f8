"""Instance optimisation: refine a network's field per pair at test time, as the strongest
Learn2Reg entries since 2021 do (ConvexAdam and its successors), in our own formulation.

Starting from the network's field ``u0`` on the fixed image's grid, a *correction* is optimised
on a coarse control grid (every ``grid_spacing`` voxels), smoothed between the steps (two 3^3
box filters of the control grid, so the correction is a smooth, spline-like field whatever the
step), upsampled trilinearly and added: ``u = u0 + up(smooth(d))``. The similarity is the mean
squared difference of MIND-SSC features (``pipeline.model.mind``: robust to contrast, bias and
modality changes) of the fixed image and of the moving image warped by ``u``, sampled at the
fixed grid's voxels that carry structure (a random subset of at most ``max_points`` per step,
the same subset sequence every run); the regulariser is the diffusion energy of the smoothed
correction, weight ``smooth``; Adam with learning rate ``lr`` (control-grid voxels), ``steps``
steps. Regularising the correction, not ``u``, keeps the detail the network found.

With ``levels`` > 1 the optimisation runs coarse to fine: first on the images resampled to a
grid ``2^(levels - 1)`` times as coarse (corner-aligned, ``(n - 1) // f + 1`` voxels per axis),
its correction brought back to the fixed grid and added, then on each finer grid, the fixed
grid last, ``steps`` steps each. A coarse level widens the capture range (a displacement of 8
voxels is 4 at half resolution, where the features are also smoother): registration from the
zero field, without a network, needs it (``predict.network`` "none", e.g. ultrasound to MR).

``similarity="lncc"`` replaces the sampled MIND-SSC difference with ANTs' metric for
mono-modal images: the local normalised cross-correlation (squared, over 9^3 windows,
``pipeline.model.losses.ncc_map``) of the fixed image and the moving image warped densely by
``u`` (edge values repeated), maximised over the whole grid. On brain MR with local, gyral-scale
differences it finds what the MIND optimum misses (``bench/results/brainhard_cpu.md``), at about
three times the cost per step. The coarse levels use the same similarity.

``presmooth`` > 0 first smooths the start field (a Gaussian of that many fixed-grid voxels,
edge values repeated: :func:`gaussian_smooth`). The regulariser acts on the correction, so
whatever fine detail the start carries is kept unless the similarity pays for undoing it; a
network's small-scale errors (e.g. a 1 mm network's field brought to a 2 mm grid) are such
detail, and the optimisation cannot leave them. Smoothed away first, the detail the images
support comes back through the similarity: on BrainHard2 a Gaussian of 3 voxels takes the
landmark error of local NCC optimisation from 0.71 to 0.49 mm (``bench/results/brainhard_cpu.md``).
Nothing is smoothed when there is nothing to optimise (no steps, or a mask of nothing).

The result is kept diffeomorphic in practice: :func:`repair_folds` smooths the field locally
wherever ``det(I + grad u) <= 0`` (network fields at 1 mm brought to a coarser grid have a few
such voxels) until none is left.

Fields are ``1 x 3 x X x Y x Z`` torch tensors in voxels of the fixed grid, pull direction
(``pipeline.model.contract``); images ``1 x 1 x X x Y x Z`` in [0, 1] on that grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from learn2reg.contract import jacobian_determinant
from pipeline.model.contract import warp_torch
from pipeline.model.losses import ncc_map
from pipeline.model.mind import mind_ssc

if TYPE_CHECKING:
    from pipeline.config import PredictConfig


@dataclass(frozen=True)
class InstanceOptSettings:
    """See the module docstring; ``radius``/``dilation`` of the MIND-SSC features; ``similarity``
    "mind" (sampled MIND-SSC) or "lncc" (dense local NCC over ``window``^3 voxels)."""

    steps: int
    lr: float = 0.5
    smooth: float = 0.3
    grid_spacing: int = 2
    max_points: int = 2**16
    radius: int = 1
    dilation: int = 2
    unfold: bool = True
    seed: int = 0
    similarity: str = "mind"
    window: int = 9
    levels: int = 1
    presmooth: float = 0.0

    @classmethod
    def from_predict(cls, predict: PredictConfig) -> InstanceOptSettings:
        """From a run configuration's ``predict`` section (``pipeline.config.PredictConfig``)."""
        return cls(steps=predict.instance_opt_steps, lr=predict.instance_opt_lr, smooth=predict.instance_opt_smooth,
                   grid_spacing=predict.instance_opt_grid, max_points=predict.instance_opt_points,
                   unfold=predict.instance_opt_unfold, similarity=predict.instance_opt_similarity,
                   window=predict.instance_opt_window, levels=predict.instance_opt_levels,
                   presmooth=predict.instance_opt_presmooth)


def smooth_control(d: torch.Tensor) -> torch.Tensor:
    """Two 3^3 box filters (edge values repeated): the correction the control values stand for."""
    for _ in range(2):
        d = F.avg_pool3d(F.pad(d, (1,) * 6, mode="replicate"), 3, stride=1)
    return d


def gaussian_smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of ``field`` (``B x C x X x Y x Z``) smoothed by a Gaussian of ``sigma``
    voxels, edge values repeated, truncated at 4 sigma: ``scipy.ndimage.gaussian_filter`` with
    ``mode="nearest"``, in torch (on the field's device), as three separable 1-D convolutions."""
    if sigma <= 0:
        return field
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(device=field.device, dtype=field.dtype)
    channels = field.shape[1]
    out = field
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = kernel.numel()
        pad = [0] * 6
        pad[4 - 2 * axis: 6 - 2 * axis] = [radius, radius]  # F.pad counts from the last axis
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(1, 1, *shape).expand(channels, 1, *shape), groups=channels)
    return out


def control_shape(shape: tuple[int, ...], spacing: int) -> tuple[int, int, int]:
    """A corner-aligned control grid with about ``spacing`` fixed voxels between its points."""
    return tuple(max(2, (n - 1) // spacing + 1) for n in shape)  # type: ignore[return-value]


def corners(points: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear interpolation at ``points`` (``N x 3`` voxel coordinates, array order) of a
    ``shape`` grid stored flat (C order), edges extended: the 8 corner indices (``8 x N``, long)
    and weights (``8 x N``; differentiable in ``points``)."""
    size = torch.tensor(shape, dtype=points.dtype, device=points.device)
    p = torch.minimum(points.clamp_min(0), size - 1)
    low = torch.minimum(p.detach().floor(), (size - 2).clamp_min(0))
    t = p - low
    low = low.long()
    base = (low[:, 0] * shape[1] + low[:, 1]) * shape[2] + low[:, 2]
    index, weight = [], []
    for a, b, c in ((a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)):
        index.append(base + (a * shape[1] + b) * shape[2] + c)
        weight.append((t[:, 0] if a else 1 - t[:, 0]) * (t[:, 1] if b else 1 - t[:, 1]) * (t[:, 2] if c else 1 - t[:, 2]))
    return torch.stack(index), torch.stack(weight)


def interpolate_rows(rows: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``rows`` (``V x C``: a grid's values, one row per voxel) at the points of :func:`corners`
    -> ``N x C``. Gathers rows, so the backward pass is a scatter of N rows (not of the grid)."""
    out = rows.index_select(0, index[0]) * weight[0, :, None]
    for k in range(1, 8):
        out = out + rows.index_select(0, index[k]) * weight[k, :, None]
    return out


def structure_mask(fixed: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Voxels (flat indices) where the fixed image is not flat within 2 voxels (and inside ``mask``)."""
    local_max = F.max_pool3d(fixed, 5, stride=1, padding=2)
    local_min = -F.max_pool3d(-fixed, 5, stride=1, padding=2)
    keep = (local_max - local_min) > 1e-3
    if mask is not None:
        keep &= mask > 0
    return torch.nonzero(keep.flatten()).flatten()


@torch.no_grad()
def refine_field(field: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor, settings: InstanceOptSettings,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """The refined field (module docstring): ``field`` plus an optimised smooth correction,
    folds repaired when ``settings.unfold``. ``mask``: similarity only inside it (0/1)."""
    u0 = field.detach().float()
    if settings.steps > 0 and (mask is None or bool(mask.any())):
        u0 = gaussian_smooth(u0, settings.presmooth)
        correct = _correction_lncc if settings.similarity == "lncc" else _correction
        for level in range(settings.levels - 1, 0, -1):  # coarse to fine: 2^(levels-1), ..., 2
            u0 = u0 + _coarse_correction(correct, u0, moving.float(), fixed.float(), settings, mask, 2**level)
        u0 = u0 + correct(u0, moving.float(), fixed.float(), settings, mask)
    if settings.unfold:
        u0 = torch.from_numpy(np.moveaxis(repair_folds(np.moveaxis(u0[0].cpu().numpy(), 0, -1))[0], -1, 0).copy())[None].to(field.device)
    return u0


def coarse_shape(shape: tuple[int, ...], factor: int) -> tuple[int, int, int]:
    """The corner-aligned grid ``factor`` times as coarse (at least 2 voxels per axis)."""
    return tuple(max(2, (n - 1) // factor + 1) for n in shape)  # type: ignore[return-value]


Correction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, InstanceOptSettings, torch.Tensor | None], torch.Tensor]


def _coarse_correction(correct: Correction, u0: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor,
                       settings: InstanceOptSettings, mask: torch.Tensor | None, factor: int) -> torch.Tensor:
    """The correction of one coarse level (``correct``: :func:`_correction` or
    :func:`_correction_lncc`), optimised on the grid ``factor`` times as coarse
    (images and ``u0`` resampled trilinearly, corner-aligned; the mask where it covers the whole
    coarse voxel), returned on the fixed grid in its voxels."""
    shape = tuple(fixed.shape[2:])
    coarse = coarse_shape(shape, factor)
    ratio = torch.tensor([(c - 1) / (n - 1) if n > 1 else 1.0 for n, c in zip(shape, coarse, strict=True)],
                         device=u0.device).view(1, 3, 1, 1, 1)  # fixed voxels -> coarse voxels

    def down(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=coarse, mode="trilinear", align_corners=True)

    small_mask = None if mask is None else down(mask.float()) > 0.99
    d = correct(down(u0) * ratio, down(moving), down(fixed), settings, small_mask)
    return F.interpolate(d / ratio, size=shape, mode="trilinear", align_corners=True)


def _correction(u0: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor, settings: InstanceOptSettings,
                mask: torch.Tensor | None) -> torch.Tensor:
    shape = tuple(fixed.shape[2:])
    coarse = control_shape(shape, settings.grid_spacing)
    scale = torch.tensor([(n - 1) / (c - 1) for n, c in zip(shape, coarse, strict=True)], device=u0.device)
    flat = structure_mask(fixed, mask)
    if flat.numel() == 0:
        return torch.zeros_like(u0)
    # one row of 12 features per voxel, rows contiguous: a gather reads 48 consecutive bytes
    feat_fixed, feat_moving = (mind_ssc(x, settings.radius, settings.dilation).flatten(2)[0].T.contiguous() for x in (fixed, moving))
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=u0.device)
    voxels = torch.stack([flat // strides[0], (flat // strides[1]) % shape[1], flat % shape[2]], dim=1).float()
    control_index, control_weight = corners(voxels / scale, coarse)  # fixed voxels on the control grid: constant
    target, start = feat_fixed[flat], u0.flatten(2)[0][:, flat].T  # n x 12, n x 3
    d = torch.zeros((1, 3, *coarse), device=u0.device, requires_grad=True)
    optimiser = torch.optim.Adam([d], lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.enable_grad():
        for _ in range(settings.steps):
            # a random subset, visited in memory order (the gathers below stay cache-friendly)
            pick = torch.randperm(flat.numel(), generator=generator)[: settings.max_points].sort().values.to(u0.device)
            smooth = smooth_control(d)
            rows = smooth.flatten(2)[0].T.contiguous()
            correction = interpolate_rows(rows, control_index[:, pick], control_weight[:, pick]) * scale
            index, weight = corners(voxels[pick] + start[pick] + correction, shape)
            similarity = ((interpolate_rows(feat_moving, index, weight) - target[pick]) ** 2).mean()
            energy = sum((smooth.diff(dim=k) ** 2).mean() for k in (2, 3, 4))
            optimiser.zero_grad(set_to_none=True)
            (similarity + settings.smooth * energy).backward()
            optimiser.step()
    return F.interpolate(smooth_control(d.detach()) * scale.view(1, 3, 1, 1, 1), size=shape, mode="trilinear", align_corners=True)


def _correction_lncc(u0: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor, settings: InstanceOptSettings,
                     mask: torch.Tensor | None) -> torch.Tensor:
    """The correction that maximises the mean local NCC (inside ``mask``) of the densely warped
    moving image and the fixed image; control grid, smoothing and regulariser as :func:`_correction`."""
    shape = tuple(fixed.shape[2:])
    coarse = control_shape(shape, settings.grid_spacing)
    scale = torch.tensor([(n - 1) / (c - 1) for n, c in zip(shape, coarse, strict=True)], device=u0.device).view(1, 3, 1, 1, 1)
    inside = None if mask is None else mask > 0
    if inside is not None and not bool(inside.any()):
        return torch.zeros_like(u0)
    d = torch.zeros((1, 3, *coarse), device=u0.device, requires_grad=True)
    optimiser = torch.optim.Adam([d], lr=settings.lr)
    with torch.enable_grad():
        for _ in range(settings.steps):
            smooth = smooth_control(d)
            correction = F.interpolate(smooth * scale, size=shape, mode="trilinear", align_corners=True)
            cc = ncc_map(warp_torch(moving, u0 + correction, padding="border"), fixed, settings.window)
            similarity = -(cc.mean() if inside is None else cc[inside].mean())
            energy = sum((smooth.diff(dim=k) ** 2).mean() for k in (2, 3, 4))
            optimiser.zero_grad(set_to_none=True)
            (similarity + settings.smooth * energy).backward()
            optimiser.step()
    return F.interpolate(smooth_control(d.detach()) * scale, size=shape, mode="trilinear", align_corners=True)


def repair_folds(u: np.ndarray, max_rounds: int = 20, sigma: float = 1.0) -> tuple[np.ndarray, int]:
    """A field (``X x Y x Z x 3``) without folded voxels: where ``det(I + grad u) <= 0``
    (``learn2reg.contract.jacobian_determinant``), the field and two voxels around are
    replaced by its Gaussian smoothing (``sigma`` voxels), round after round until no voxel is
    folded or ``max_rounds`` is reached. Returns the field and the folded voxels left (0 in
    practice); a field without folds comes back unchanged."""
    u = np.array(u, dtype=np.float32, copy=True)
    for _ in range(max_rounds):
        folded = jacobian_determinant(u) <= 0
        if not folded.any():
            return u, 0
        region = ndimage.binary_dilation(folded, iterations=2)
        smoothed = np.stack([ndimage.gaussian_filter(u[..., k], sigma, mode="nearest") for k in range(3)], axis=-1)
        u[region] = smoothed[region]
    return u, int((jacobian_determinant(u) <= 0).sum())
