"""Validation during training: Dice of warped labels and TRE of points on the network grid.

The field comes from ``pipeline.model.field.predict_field``, the function prediction uses, under
the prediction's ``amp`` setting: the best checkpoint is chosen on the numbers prediction gives.
"""

from __future__ import annotations

import numpy as np
import torch

from evaluation.metrics import dice, label_counts, nanmean
from learn2reg.contract import sample_field
from pipeline.model.contract import field_from_numpy, field_to_numpy, warp_torch
from pipeline.model.field import predict_field
from pipeline.model.lapirn import LapIRN
from pipeline.training.pairs import TrainingData, tensor


@torch.no_grad()
def pair_metrics(field: torch.Tensor | None, data: TrainingData, fixed_id: str, moving_id: str, device: torch.device) -> dict[str, float]:
    fixed, moving = data.cases[fixed_id], data.cases[moving_id]
    u = np.zeros(fixed.shape + (3,), np.float32) if field is None else field_to_numpy(field)
    metrics = {"val_dice": np.nan, "val_tre_mm": np.nan}
    if fixed.label is not None and moving.label is not None:
        warped = warp_torch(tensor(moving.label, device).float(), field_from_numpy(u, device), mode="nearest", padding="zeros")
        warped_np = warped[0, 0].cpu().numpy().astype(fixed.label.dtype)
        labels = sorted(set(np.unique(fixed.label)) - {0})
        # the official DSC: labels absent in fixed or moving are NaN and left out of the mean
        metrics["val_dice"] = nanmean(dice(label_counts(fixed.label, moving.label, warped_np, labels))) if labels else np.nan
    for kind in ("landmarks", "keypoints"):
        fp, mp = getattr(fixed, kind), getattr(moving, kind)
        if fp is not None and mp is not None and len(fp) == len(mp):
            err = (fp + sample_field(u, fp, order=1) - mp) * np.asarray(moving.spacing)
            metrics["val_tre_mm"] = float(np.linalg.norm(err, axis=1).mean())
            break
    return metrics


@torch.no_grad()
def validate_pairs(model: LapIRN | None, data: TrainingData, level: int, device: torch.device, amp: str) -> dict[str, float]:
    """Mean Dice / TRE over the validation pairs (``model=None``: the zero field). ``val_score``
    is what the best checkpoint maximises: Dice where there are labels, else -TRE, NaN when
    the pairs give neither (``best.pt`` then follows the last checkpoint). ``amp``: the mixed
    precision of the forward pass (pass ``cfg.predict.amp``, as prediction does)."""
    rows = []
    for fixed_id, moving_id in data.val_pairs:
        field = None
        if model is not None:
            f = tensor(data.cases[fixed_id].image, device)
            m = tensor(data.cases[moving_id].image, device)
            field = predict_field(model, m, f, device, amp, level=level)
        rows.append(pair_metrics(field, data, fixed_id, moving_id, device))
    dice = float(np.nanmean([r["val_dice"] for r in rows])) if any(np.isfinite(r["val_dice"]) for r in rows) else np.nan
    tre = float(np.nanmean([r["val_tre_mm"] for r in rows])) if any(np.isfinite(r["val_tre_mm"]) for r in rows) else np.nan
    score = dice if np.isfinite(dice) else (-tre if np.isfinite(tre) else float("nan"))
    return {"val_dice": dice, "val_tre_mm": tre, "val_score": score}
