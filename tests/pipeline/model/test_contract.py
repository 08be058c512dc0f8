"""Torch side of the contract: padding of image and label warps, full precision of grids and warps.

Warps under autocast run twice (``tests/devices.py``): as ``cpu_stand_in`` under CPU autocast,
standing in for the GPU, and as ``cuda`` under the product's autocast on the GPU (``pytest -m cuda``).
"""

from __future__ import annotations

import pytest
import torch

from pipeline.model.contract import flow_to_voxel, identity_flow_grid, voxel_to_flow, warp_flow, warp_torch
from tests.devices import STAND_IN_AND_CUDA, bf16_autocast

SHAPE = (9, 7, 8)


def shift_field(shift: tuple[float, float, float], shape=SHAPE, dtype=torch.float32) -> torch.Tensor:
    """Constant voxel field ``1 x 3 x ...``: every voxel samples ``shift`` voxels away."""
    return torch.tensor(shift, dtype=dtype).view(1, 3, 1, 1, 1).expand(1, 3, *shape).contiguous()


def textured(shape=SHAPE, seed=0) -> torch.Tensor:
    return torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ padding


@pytest.mark.parametrize("by", ["voxel", "flow"])
def test_border_warp_of_a_constant_image_is_constant_and_zeros_padding_is_not(by):
    """A field that samples 2.5 voxels beyond the grid: border padding repeats the edge (a
    constant image stays constant everywhere), zero padding fades to 0 outside."""
    image = torch.full((1, 1, *SHAPE), 0.7)
    u = shift_field((2.5, -1.5, 0.0))

    def run(padding: str) -> torch.Tensor:
        return warp_torch(image, u, padding=padding) if by == "voxel" else warp_flow(image, voxel_to_flow(u), padding=padding)

    border, zeros = run("border"), run("zeros")
    torch.testing.assert_close(border, torch.full_like(image, 0.7), atol=1e-6, rtol=0)
    assert zeros[0, 0, -1].abs().max().item() == 0.0  # x = 8 samples x = 10.5: outside
    assert zeros[0, 0, :, 0].abs().max().item() < 0.7  # y = 0 samples y = -1.5: outside
    torch.testing.assert_close(zeros[0, 0, :6, 2:], border[0, 0, :6, 2:], atol=1e-6, rtol=0)  # inside: the same


def test_padding_defaults_to_zeros_for_labels_and_unknown_paddings_are_rejected():
    labels = torch.ones(1, 1, *SHAPE)
    u = shift_field((0.0, 0.0, 3.0))
    out = warp_torch(labels, u, mode="nearest")
    assert out[0, 0, :, :, -3:].abs().max().item() == 0.0  # outside is background
    assert torch.equal(out, warp_torch(labels, u, mode="nearest", padding="zeros"))
    assert torch.equal(warp_flow(labels, voxel_to_flow(u), mode="nearest"), out)
    for fn, field in ((warp_torch, u), (warp_flow, voxel_to_flow(u))):
        with pytest.raises(ValueError, match="padding must be one of border, zeros"):
            fn(labels, field, padding="reflection")


def test_integer_shift_with_border_padding_repeats_the_edge_slice():
    image = textured()
    out = warp_torch(image, shift_field((0.0, 2.0, 0.0)), padding="border")
    torch.testing.assert_close(out[0, 0, :, :-2], image[0, 0, :, 2:], atol=1e-6, rtol=0)
    for j in (-2, -1):
        torch.testing.assert_close(out[0, 0, :, j], image[0, 0, :, -1], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- precision


def test_grids_and_conversions_are_float32_for_half_precision_inputs():
    shape = (160, 5, 3)
    grid = identity_flow_grid(shape, torch.zeros((), dtype=torch.bfloat16))
    assert grid.dtype == torch.float32
    assert torch.equal(grid, identity_flow_grid(shape, torch.zeros(())))
    # in bfloat16 the same grid is off by up to 0.2 voxel on a 160-voxel axis
    rounded = grid.to(torch.bfloat16).float()
    assert ((rounded - grid)[..., 2].abs().max() * (shape[0] - 1) / 2).item() > 0.15
    flow = voxel_to_flow(shift_field((1.0, -2.0, 0.5), shape)).to(torch.bfloat16)
    assert flow_to_voxel(flow).dtype == torch.float32
    assert voxel_to_flow(flow_to_voxel(flow)).dtype == torch.float32
    assert identity_flow_grid(shape, torch.zeros((), dtype=torch.float64)).dtype == torch.float64  # float64 stays


@pytest.mark.parametrize("device", STAND_IN_AND_CUDA)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_zero_field_warps_exactly_even_under_autocast(dtype, device):
    dev = torch.device(device)
    image = textured((40, 33, 24)).to(dev)
    zero = torch.zeros(1, 3, 40, 33, 24, dtype=dtype, device=dev)
    with bf16_autocast(dev):
        by_voxel = warp_torch(image, zero, padding="border")
        by_flow = warp_flow(image, zero, padding="border")
    for out in (by_voxel, by_flow):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, image, atol=1e-5, rtol=0)  # float32 grid round-off


@pytest.mark.parametrize("device", STAND_IN_AND_CUDA)
def test_warps_under_autocast_equal_the_float32_warps(device):
    dev = torch.device(device)
    image = textured((16, 12, 10), seed=1).to(dev)
    u = (torch.randn(1, 3, 16, 12, 10, generator=torch.Generator().manual_seed(2)) * 2.0).to(dev)
    want = warp_torch(image, u, padding="border")
    with bf16_autocast(dev):
        got = warp_torch(image, u, padding="border")
    assert got.dtype == torch.float32 and torch.equal(got, want)
