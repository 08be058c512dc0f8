"""Mixed precision: autocast reaches LapIRN's convolutions only; fields, grids and warps stay float32.

The product autocasts on CUDA only. Each autocast test runs twice (``tests/devices.py``): as
``cpu_stand_in``, under CPU autocast (bfloat16), which lowers the same convolutions, and as
``cuda``, the real thing under the product's ``autocast`` on the GPU (``pytest -m cuda``).
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
from tests.devices import STAND_IN_AND_CUDA, bf16_autocast
from tests.pipeline.model.test_lapirn import ODD, ConstantResidual, images


def on(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]


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


@pytest.mark.parametrize("device", STAND_IN_AND_CUDA)
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_zero_weights_under_bf16_autocast_give_an_exact_float32_identity(diffeomorphic, device):
    """cpu_stand_in: CPU autocast stands in for CUDA's; cuda: the product's autocast on the GPU."""
    dev = torch.device(device)
    model = zero_model(diffeomorphic).to(dev)
    seen = conv_dtypes(model)
    moving, fixed = on(dev, *images(ODD))
    with torch.no_grad(), bf16_autocast(dev):
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


@pytest.mark.parametrize("device", STAND_IN_AND_CUDA)
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_a_bf16_residual_is_upsampled_converted_and_warped_in_float32(diffeomorphic, device):
    """CRNs that return a bfloat16 constant (exactly representable) under autocast give exactly
    the fields and warps of the same constants in float32 without autocast (cpu_stand_in: under
    CPU autocast, standing in for CUDA's; cuda: the product's autocast on the GPU)."""
    dev = torch.device(device)
    value = (0.09375, -0.0625, 0.15625)
    cfg = LapIRNConfig(start_channel=2, diffeomorphic=diffeomorphic)
    half, full = LapIRN(cfg).eval().to(dev), LapIRN(cfg).eval().to(dev)
    for p in range(3):
        half.nets[p] = ConstantResidual(value, torch.bfloat16)
        full.nets[p] = ConstantResidual(value, torch.float32)
    moving, fixed = on(dev, *images(ODD))
    with torch.no_grad():
        want = full(moving, fixed)
        with bf16_autocast(dev):
            got = half(moving, fixed)
            got_full = full_resolution_field(half, got)
    for a, b in zip(got.levels, want.levels, strict=True):
        for name in ("flow", "field", "warped", "velocity", "velocity_field"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None) and (x is None or (x.dtype == torch.float32 and torch.equal(x, y))), name
    assert torch.equal(got_full, full_resolution_field(full, want))
    assert got.field.abs().max() > 1.0 and (got.final.warped - moving).abs().max() > 0.05  # a warp that matters


@pytest.mark.parametrize("device", STAND_IN_AND_CUDA)
def test_random_weights_bf16_field_is_close_to_float32_and_its_warp_is_exact(device):
    """The bfloat16 convolutions change the field by a bfloat16-sized amount; given that field,
    the warped images and voxel fields are exactly what float32 maths make of it (cpu_stand_in:
    CPU autocast standing in for CUDA's; cuda: the product's autocast against float32 on the GPU,
    whose convolutions may use TF32)."""
    dev = torch.device(device)
    torch.manual_seed(3)
    model = LapIRN(LapIRNConfig(start_channel=2, range_flow=2.0)).eval().to(dev)
    seen = conv_dtypes(model)
    moving, fixed = on(dev, *images(ODD, seed=4))
    with torch.no_grad():
        ref = model(moving, fixed)
        with bf16_autocast(dev):
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
    assert seen[:3] == [torch.float32] * 3 and seen[3:6] == [torch.bfloat16] * 3
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


@pytest.mark.cuda
def test_predict_field_on_cuda_runs_bf16_convolutions_and_returns_a_float32_field_close_to_float32():
    """The GPU half of the policy above: on CUDA, ``predict.amp`` reaches the convolutions."""
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = LapIRN(LapIRNConfig(start_channel=2, range_flow=2.0)).eval().to(cuda)
    seen = conv_dtypes(model)
    moving, fixed = on(cuda, *images(ODD, seed=4))
    want = predict_field(model, moving, fixed, cuda, "none")
    got = predict_field(model, moving, fixed, cuda, "bf16")
    assert seen == [torch.float32] * 3 + [torch.bfloat16] * 3
    assert got.dtype == torch.float32 and not got.requires_grad and got.shape == (1, 3, *ODD)
    size = want.abs().max().item()
    assert size > 1.0 and (got - want).abs().max().item() < 0.03 * size


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


@pytest.mark.cuda
def test_autocast_and_grad_scaler_policy_on_cuda():
    cuda = torch.device("cuda")
    for amp, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(cuda, amp):
            assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == dtype
    with autocast(cuda, "none"):
        assert not torch.is_autocast_enabled("cuda")
    assert grad_scaler(cuda, "fp16").is_enabled()  # fp16 gradients need loss scaling
    assert not grad_scaler(cuda, "bf16").is_enabled() and not grad_scaler(cuda, "none").is_enabled()
