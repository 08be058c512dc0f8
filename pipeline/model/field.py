"""The network's output as a field: the voxel field on the input grid, as prediction and
validation during training both compute it (``pipeline.model.lapirn`` is the network itself)."""

from __future__ import annotations

import torch

from pipeline.model.contract import flow_to_voxel
from pipeline.model.lapirn import LapIRN, LapIRNOutput, crop, upsample_flow
from pipeline.model.precision import autocast, no_autocast


def full_resolution_field(model: LapIRN, out: LapIRNOutput) -> torch.Tensor:
    """Voxel field on the input grid from the finest level that ran: its flow is upsampled the
    way the model hands it to the next level (``config.align_corners``), converted on the padded
    grid, then cropped. ``B x 3 x X x Y x Z``, at least float32 (computed with autocast off)."""
    flow = out.final.flow
    with no_autocast(flow):
        for _ in range(model.config.levels - out.final.level):
            flow = upsample_flow(flow, model.config.align_corners)
        return crop(flow_to_voxel(flow), out.pad_spec, 1)


@torch.no_grad()
def predict_field(
    model: LapIRN, moving: torch.Tensor, fixed: torch.Tensor, device: torch.device, amp: str, level: int | None = None
) -> torch.Tensor:
    """The network's field as prediction and validation during training both compute it.

    ``moving``/``fixed``: ``B x C x X x Y x Z`` on ``device``, intensities in [0, 1]. The forward
    pass (levels ``1 .. level``, default all) runs under ``amp``'s autocast
    (``pipeline.model.precision.autocast``: GPU only, convolutions only); the result is
    :func:`full_resolution_field`: voxel field ``B x 3 x X x Y x Z`` on the input grid, float32,
    without gradients.
    """
    with autocast(device, amp):
        out = model(moving, fixed, level=level)
    return full_resolution_field(model, out)
