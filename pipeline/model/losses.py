"""LapIRN's losses as pure torch functions (plus one thin per-level wrapper).

Conventions: images ``B x C x X x Y x Z`` (intensities in [0, 1]); fields ``B x 3 x X x Y x Z``
in **voxel** units of the grid they live on, channel ``k`` along array axis ``k`` (the torch
side of ``pipeline.model.contract``). Every loss returns a scalar tensor that is minimised.

Choices that differ from the public LapIRN code, on purpose:

* Local NCC sums over the part of each ``w^3`` window that lies inside the image (window
  truncated at the border, mean over the voxels actually summed). Inside the image this is
  exactly the public code's zero-padded box filter; at the border the public code mixes padded
  zeros into the statistics, which breaks the invariance of NCC to an intensity offset there.
* The similarity pyramid uses ``eps`` at every scale (the public ``multi_resolution_NCC``
  silently drops its ``eps`` argument and uses 1e-8 inside).
* Smoothness differentiates the **voxel** field (see :func:`smoothness` for the units).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import LossConfig
from pipeline.model.contract import warp_torch


def avg_downsample(x: torch.Tensor) -> torch.Tensor:
    """One pyramid step: average pooling 3x3x3, stride 2, padding 1, padding excluded.

    ``B x C x X x Y x Z`` -> ``B x C x ceil(X/2) x ceil(Y/2) x ceil(Z/2)``; output voxel ``i``
    is centred on input voxel ``2 i``. The model's image pyramid and the similarity pyramid
    both use this function.
    """
    return F.avg_pool3d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)


# ---------------------------------------------------------------------------- local NCC


def _box_sum_1d(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Sum over a centred window of ``window`` voxels along spatial ``dim`` (2, 3 or 4), zero padding.

    An average pool of the zero-padded input, times ``window``: on CPU its forward and backward
    are 3-25x faster than a one-channel ``conv3d`` with a ones kernel (which PyTorch sends to
    an im2col path), with the same per-value rounding.
    """
    kernel, padding = [1, 1, 1], [0] * 6
    kernel[dim - 2] = window
    padding[2 * (4 - dim)] = padding[2 * (4 - dim) + 1] = window // 2  # F.pad lists the last axis first
    # explicit zero padding: avg_pool3d refuses grids smaller than its kernel even when padded
    return F.avg_pool3d(F.pad(x, tuple(padding)), tuple(kernel), stride=1) * window


def box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sums over the in-image part of the centred ``window^3`` box at every voxel.

    ``x`` ``B x C x X x Y x Z`` -> same shape. Separable (three 1-D passes); ``window`` odd.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    for dim in (2, 3, 4):
        x = _box_sum_1d(x, window, dim)
    return x


def window_count(shape: tuple[int, ...], window: int, like: torch.Tensor) -> torch.Tensor:
    """Number of in-image voxels in the ``window^3`` box at every voxel: ``1 x 1 x X x Y x Z``."""
    ones = torch.ones((1, 1, *shape), dtype=like.dtype, device=like.device)
    return box_sum(ones, window)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (``B x 1 x ...``); with ``mask`` (same grid, weights in [0, 1]), the mean over the mask."""
    if mask is None:
        return values.mean()
    if mask.shape[2:] != values.shape[2:]:
        raise ValueError(f"mask grid {tuple(mask.shape[2:])} differs from the image grid {tuple(values.shape[2:])}")
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def ncc_map(warped: torch.Tensor, fixed: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Local squared correlation ``cc`` at every voxel: ``B x 1 x X x Y x Z``, values in [0, 1).

    ``warped``, ``fixed``: ``B x 1 x X x Y x Z``. Per voxel, over the ``window^3`` box (truncated
    at the image border, ``n`` voxels): ``cross = S_ab - S_a S_b / n``,
    ``var_a = S_aa - S_a^2 / n`` (sums of squared deviations, as the public code), and
    ``cc = cross^2 / (var_a var_b + eps)``.
    """
    if warped.shape != fixed.shape or warped.ndim != 5 or warped.shape[1] != 1:
        raise ValueError(f"NCC needs two B x 1 x X x Y x Z images of one shape, got {tuple(warped.shape)} and {tuple(fixed.shape)}")
    sums = box_sum(torch.cat([warped, fixed, warped * warped, fixed * fixed, warped * fixed], dim=1), window)
    s_a, s_b, s_aa, s_bb, s_ab = sums.unbind(dim=1)
    n = window_count(tuple(warped.shape[2:]), window, warped)[:, 0]
    cross = s_ab - s_a * s_b / n
    var_a = (s_aa - s_a * s_a / n).clamp_min(0.0)
    var_b = (s_bb - s_b * s_b / n).clamp_min(0.0)
    return (cross * cross / (var_a * var_b + eps)).unsqueeze(1)


def local_ncc(
    warped: torch.Tensor, fixed: torch.Tensor, window: int = 9, eps: float = 1e-5, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Local normalised cross-correlation loss ``-mean(cc)`` (in [-1, 0]; :func:`ncc_map` gives ``cc``).

    ``mask`` (``B x 1 x X x Y x Z``, 0/1 or weights): the mean runs over the mask voxels only
    (the window statistics still use every voxel).
    """
    return -_masked_mean(ncc_map(warped, fixed, window, eps), mask)


def similarity_pyramid(
    warped: torch.Tensor, fixed: torch.Tensor, level: int, eps: float = 1e-5, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-resolution NCC of LapIRN level ``level`` (seed paper eq. 2).

    ``warped``/``fixed``: the level's warped moving and fixed images (``B x 1 x ...`` on the
    level's grid). Scale ``i = 0 .. level-1`` (each a further :func:`avg_downsample`) uses window
    ``2 (level - i) + 1`` and weight ``1 / 2^i``: level 3 -> windows 7, 5, 3 with weights 1, 1/2,
    1/4; level 1 -> window 3 alone. ``mask`` is downsampled alongside (as weights).
    """
    if level < 1:
        raise ValueError(f"level must be >= 1, got {level}")
    total = warped.new_zeros(())
    for i in range(level):
        total = total + local_ncc(warped, fixed, 2 * (level - i) + 1, eps, mask) / 2**i
        if i + 1 < level:
            warped, fixed = avg_downsample(warped), avg_downsample(fixed)
            mask = None if mask is None else avg_downsample(mask.to(warped.dtype))
    return total


# ---------------------------------------------------------------------------------- Dice


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer label map ``B x 1 x X x Y x Z`` (any integer dtype, uint16 included) -> float
    one-hot ``B x num_classes x X x Y x Z`` (channel 0 = background)."""
    if labels.ndim != 5 or labels.shape[1] != 1:
        raise ValueError(f"labels must be B x 1 x X x Y x Z, got {tuple(labels.shape)}")
    labels = labels.long()  # torch has no min/max for uint16/uint32 tensors
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]")
    return F.one_hot(labels[:, 0], num_classes).permute(0, 4, 1, 2, 3).float()


def soft_dice(
    pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """``1 - mean soft Dice`` over the present foreground channels (loss 0 = perfect overlap).

    ``pred``, ``target``: ``B x C x X x Y x Z`` soft one-hot, channel 0 = background (excluded).
    Dice per batch item and channel ``2 sum(p t) / (sum p + sum t + eps)``. ``present``
    (``B x C`` bool) selects the (item, label) pairs that count; default: label present in
    ``target``. With nothing present the loss is 0.
    """
    if pred.shape != target.shape or pred.ndim != 5:
        raise ValueError(f"Dice needs two B x C x X x Y x Z tensors of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    dims = (2, 3, 4)
    dice = 2.0 * (pred * target).sum(dims) / (pred.sum(dims) + target.sum(dims) + eps)
    if present is None:
        present = target.sum(dims) > 0
    present = present.clone()
    present[:, 0] = False
    if not bool(present.any()):
        return pred.sum() * 0.0
    return 1.0 - dice[present].mean()


def dice_loss(moving_onehot: torch.Tensor, fixed_onehot: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss of moving one-hot labels warped by a voxel ``field`` against the fixed labels.

    ``moving_onehot``: ``B x C x ...`` on the moving grid (channel 0 background);
    ``fixed_onehot``: ``B x C x X x Y x Z``; ``field``: ``B x 3 x X x Y x Z`` voxels. Channels are
    warped with linear interpolation and zero padding (outside the moving grid is no label;
    ``warp_torch``, the same ``grid_sample`` as the model's ``warp_flow`` but taking voxel
    fields, so it also works on cropped grids). A label counts
    when it is present in both the fixed and the (unwarped) moving labels, as in the official
    Dice; a label that vanishes after warping counts with Dice 0.
    """
    warped = warp_torch(moving_onehot, field, padding="zeros")
    dims = (2, 3, 4)
    present = (moving_onehot.sum(dims) > 0) & (fixed_onehot.sum(dims) > 0)
    return soft_dice(warped, fixed_onehot.to(warped.dtype), present)


# ------------------------------------------------------------------------ regularisers


def smoothness(field: torch.Tensor, unit: float = 1.0) -> torch.Tensor:
    """Diffusion regulariser: mean squared forward differences of ``unit * field``.

    ``field``: ``B x 3 x X x Y x Z`` in voxel units. Returns
    ``(1/3) sum_j mean_{k, x} (unit * (u_k(x + e_j) - u_k(x)))^2`` where the mean runs over the
    3 components and the ``N_j - 1`` differences along axis ``j`` (no boundary padding). For
    ``u_k = sum_j a_kj x_j`` this is ``unit^2 ||A||_F^2 / 9``. ``unit = 1``: voxel units;
    ``unit = 2`` reproduces the public code's units (it scales normalised flows by ``N``, i.e.
    about 2 voxels per unit), so its lambda values (1.0 displacement, 3.5 diffeomorphic) apply.
    """
    if field.ndim != 5 or field.shape[1] != 3:
        raise ValueError(f"field must be B x 3 x X x Y x Z, got {tuple(field.shape)}")
    u = field * unit
    terms = [torch.diff(u, dim=d).pow(2).mean() for d in (2, 3, 4)]
    return (terms[0] + terms[1] + terms[2]) / 3.0


def jacobian_determinant_torch(field: torch.Tensor) -> torch.Tensor:
    """``det(I + grad u)`` of a voxel field ``B x 3 x X x Y x Z`` -> ``B x X x Y x Z``.

    Torch twin of ``learn2reg.contract.jacobian_determinant``: central differences inside,
    one-sided at the faces (``torch.gradient`` = ``np.gradient``); differentiable.
    """
    if field.ndim != 5 or field.shape[1] != 3:
        raise ValueError(f"field must be B x 3 x X x Y x Z, got {tuple(field.shape)}")
    grads = torch.gradient(field, dim=(2, 3, 4))  # grads[j][:, k] = du_k / dx_j
    j = [[grads[m][:, k] + (1.0 if k == m else 0.0) for m in range(3)] for k in range(3)]
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )


def anti_folding(field: torch.Tensor) -> torch.Tensor:
    """Folding penalty ``mean(relu(-det J))`` of a voxel field (0 where the map does not fold)."""
    return F.relu(-jacobian_determinant_torch(field)).mean()


# ------------------------------------------------------------------------------ wrapper


def level_loss(
    cfg: LossConfig,
    level: int,
    levels: int,
    warped: torch.Tensor,
    fixed: torch.Tensor,
    field: torch.Tensor,
    *,
    reg_field: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    moving_onehot: torch.Tensor | None = None,
    fixed_onehot: torch.Tensor | None = None,
    dice_field: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Total loss of one LapIRN level and its parts (keys ``total, similarity, smooth, dice, antifold``).

    All tensors on the level's grid: ``warped``/``fixed`` ``B x 1 x ...``, ``field`` voxel
    ``B x 3 x ...``; ``reg_field`` is what the smoothness sees (default ``field``; pass the
    velocity for the diffeomorphic variant, as the public code does); ``mask`` fixed-image
    mask for the similarity; one-hot labels for the Dice term, on the grid of ``dice_field``
    (the voxel field that warps them; default ``field``, the level's grid). Training passes
    the level's field upsampled to the input grid: one-hot labels averaged down to a coarse
    level are so blurred that their soft Dice hardly changes with the alignment.
    """
    if not 1 <= level <= levels:
        raise ValueError(f"level must be in 1..{levels}, got {level}")
    parts = {"similarity": similarity_pyramid(warped, fixed, level, cfg.eps, mask)}
    reg = field if reg_field is None else reg_field
    parts["smooth"] = smoothness(reg, cfg.smooth_unit)
    zero = field.new_zeros(())
    parts["dice"] = zero
    if cfg.dice > 0:
        if moving_onehot is None or fixed_onehot is None:
            raise ValueError("the Dice term needs moving_onehot and fixed_onehot")
        parts["dice"] = dice_loss(moving_onehot, fixed_onehot, field if dice_field is None else dice_field)
    parts["antifold"] = anti_folding(field) if cfg.antifold > 0 else zero
    smooth_weight = cfg.smooth / 2 ** (levels - level)
    parts["total"] = (
        parts["similarity"] + smooth_weight * parts["smooth"] + cfg.dice * parts["dice"] + cfg.antifold * parts["antifold"]
    )
    return parts
