"""Mixed precision: autocast reaches LapIRN's convolutions only; fields, grids and warps stay float32.

The tests run under CPU autocast (bfloat16), which lowers the same convolutions as CUDA autocast.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.model.contract import flow_to_voxel, warp_flow
from pipeline.model.field import full_resolution_field, predict_field
from pipeline.model.lapirn import (
    LapIRN,
    LapIRNConfig,
    crop,
    image_pyramid,
    pad_to_multiple,
    upsample_flow,
)
from pipeline.model.precision import autocast, grad_scaler
from tests.pipeline.model.test_lapirn import ODD, ConstantResidual, images

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def zero_model(diffeomorphic: bool = False) -> LapIRN:
    model = LapIRN(LapIRNConfig(start_channel=2, diffeomorphic=diffeomorphic)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def conv_dtypes(model: LapIRN) -> list[torch.dtype]:
    """Record the output dtype of every level's first conv during the next forward passes."""
    seen: list[torch.dtype] = []
    for net in model.nets:
        net.encoder[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_zero_weights_under_bf16_autocast_give_an_exact_float32_identity(diffeomorphic):
    model = zero_model(diffeomorphic)
    seen = conv_dtypes(model)
    moving, fixed = images(ODD)
    with torch.no_grad(), BF16:
        out = model(moving, fixed)
        full = full_resolution_field(model, out)
    assert seen == [torch.bfloat16] * 3  # the convolutions really ran in bfloat16
    for lv in out.levels:
        tensors = [lv.flow, lv.field, lv.warped, lv.fixed, lv.moving]
        tensors += [lv.velocity, lv.velocity_field] if diffeomorphic else []
        assert all(t.dtype == torch.float32 for t in tensors)
        assert lv.field.abs().max().item() == 0.0 and lv.flow.abs().max().item() == 0.0
        torch.testing.assert_close(lv.warped, lv.moving, atol=1e-5, rtol=0)
    assert full.dtype == torch.float32 and full.shape == (1, 3, *ODD) and full.abs().max().item() == 0.0
    torch.testing.assert_close(out.final.warped, moving, atol=1e-5, rtol=0)


@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_a_bf16_residual_is_upsampled_converted_and_warped_in_float32(diffeomorphic):
    """CRNs that return a bfloat16 constant (exactly representable) under autocast give exactly
    the fields and warps of the same constants in float32 without autocast."""
    value = (0.09375, -0.0625, 0.15625)
    cfg = LapIRNConfig(start_channel=2, diffeomorphic=diffeomorphic)
    half, full = LapIRN(cfg).eval(), LapIRN(cfg).eval()
    for p in range(3):
        half.nets[p] = ConstantResidual(value, torch.bfloat16)
        full.nets[p] = ConstantResidual(value, torch.float32)
    moving, fixed = images(ODD)
    with torch.no_grad():
        want = full(moving, fixed)
        with BF16:
            got = half(moving, fixed)
            got_full = full_resolution_field(half, got)
    for a, b in zip(got.levels, want.levels, strict=True):
        for name in ("flow", "field", "warped", "velocity", "velocity_field"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None) and (x is None or (x.dtype == torch.float32 and torch.equal(x, y))), name
    assert torch.equal(got_full, full_resolution_field(full, want))
    assert got.field.abs().max() > 1.0 and (got.final.warped - moving).abs().max() > 0.05  # a warp that matters


def test_random_weights_bf16_field_is_close_to_float32_and_its_warp_is_exact():
    """The bfloat16 convolutions change the field by a bfloat16-sized amount; given that field,
    the warped images and voxel fields are exactly what float32 maths make of it."""
    torch.manual_seed(3)
    model = LapIRN(LapIRNConfig(start_channel=2, range_flow=2.0)).eval()
    moving, fixed = images(ODD, seed=4)
    with torch.no_grad():
        ref = model(moving, fixed)
        with BF16:
            out = model(moving, fixed)
            coarse = model(moving, fixed, level=2)
            full2 = full_resolution_field(model, coarse)
        padded = image_pyramid(pad_to_multiple(moving, model.config.pad_multiple)[0], 3)
        for lv, img in zip(out.levels, padded, strict=True):
            scale = 2 ** (3 - lv.level)
            assert lv.flow.dtype == lv.field.dtype == lv.warped.dtype == torch.float32
            torch.testing.assert_close(lv.warped, crop(warp_flow(img, lv.flow, padding="border"), out.pad_spec, scale), atol=1e-6, rtol=0)
            assert torch.equal(lv.field, crop(flow_to_voxel(lv.flow), out.pad_spec, scale))
        assert torch.equal(full2, crop(flow_to_voxel(upsample_flow(coarse.final.flow)), out.pad_spec))
    size = ref.field.abs().max().item()
    assert size > 1.0
    err = (out.field - ref.field).abs().max().item()
    assert 0 < err < 0.03 * size  # bfloat16 convolutions: about 1 % of the field's range


def test_predict_field_is_float32_without_gradients_and_cpu_runs_without_autocast():
    torch.manual_seed(0)
    model = LapIRN(LapIRNConfig(start_channel=2)).eval()
    moving, fixed = images()
    with torch.no_grad():
        want = full_resolution_field(model, model(moving, fixed))
        want1 = full_resolution_field(model, model(moving, fixed, level=1))
    for amp in ("bf16", "fp16", "none"):
        got = predict_field(model, moving, fixed, torch.device("cpu"), amp)
        assert got.dtype == torch.float32 and not got.requires_grad
        assert torch.equal(got, want)  # autocast is GPU only: CPU stays on the float32 path
    assert torch.equal(predict_field(model, moving, fixed, torch.device("cpu"), "bf16", level=1), want1)


def test_autocast_and_grad_scaler_policy():
    cpu = torch.device("cpu")
    for amp in ("bf16", "fp16", "none"):
        ctx = autocast(cpu, amp)
        with ctx:
            assert not torch.is_autocast_enabled("cpu")
        assert not grad_scaler(cpu, amp).is_enabled()  # loss scaling: fp16 on CUDA only
    with pytest.raises(ValueError, match="amp must be one of bf16, fp16, none"):
        autocast(cpu, "fp8")
    with pytest.raises(ValueError, match="amp must be one of"):
        grad_scaler(cpu, "half")
