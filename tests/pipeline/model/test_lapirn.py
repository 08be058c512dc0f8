"""LapIRN model: exact architecture size, shapes on odd grids, identity, exp of constant velocities,
freezing, determinism, and agreement of its voxel fields with the numpy contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from learn2reg import contract as C
from pipeline.model.contract import field_to_numpy, flow_to_voxel, identity_flow_grid, voxel_to_flow, warp_torch
from pipeline.model.field import full_resolution_field
from pipeline.model.lapirn import (
    Conv3d,
    LapIRN,
    LapIRNConfig,
    compose_flow,
    crop,
    pad_to_multiple,
    scaling_and_squaring,
    upsample_flow,
)
from pipeline.model.losses import similarity_pyramid, smoothness

ODD = (37, 41, 29)  # pads to 40 x 48 x 32 (multiple of 8)
SMALL = (19, 21, 13)  # pads to 24 x 24 x 16


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def images(shape=SMALL, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth textured images in [0, 1] with a zero background margin, ``1 x 1 x ...``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        img = ndimage.gaussian_filter(rng.random(shape), 1.5)
        img = (img - img.min()) / (img.max() - img.min())
        img[:2], img[-2:], img[:, :2], img[:, -2:], img[:, :, :2], img[:, :, -2:] = 0, 0, 0, 0, 0, 0
        out.append(torch.from_numpy(img.astype(np.float32))[None, None])
    return out[0], out[1]


def small_model(diffeomorphic=False, range_flow=0.4, seed=0) -> LapIRN:
    torch.manual_seed(seed)
    return LapIRN(LapIRNConfig(start_channel=2, diffeomorphic=diffeomorphic, range_flow=range_flow)).eval()


# ---------------------------------------------------------------------- architecture


def test_parameter_counts_match_the_reference_architecture():
    model = LapIRN(LapIRNConfig())
    assert n_params(model) == 923_748
    assert [n_params(net) for net in model.nets] == [306_404, 308_672, 308_672]
    assert n_params(LapIRN(LapIRNConfig(start_channel=28))) == 14_589_456
    assert n_params(LapIRN(LapIRNConfig(diffeomorphic=True))) == 923_748
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d))


def crn_by_hand(net, x: torch.Tensor, skip: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The CRN of ../shared/docs/lapirn.md written out with functional ops on the module's weights."""
    conv = torch.nn.functional.conv3d
    lrelu = torch.nn.functional.leaky_relu
    f = conv(lrelu(conv(x, net.encoder[0].weight, padding=1), 0.2), net.encoder[2].weight, padding=1)
    e = conv(f, net.down.weight, stride=2, padding=1) + (0 if skip is None else skip)
    for block in net.blocks[::2]:
        inner = conv(lrelu(conv(lrelu(e, 0.2), block.conv1.weight, padding=1), 0.2), block.conv2.weight, padding=1)
        e = lrelu(e + inner, 0.2)
    e = torch.nn.functional.conv_transpose3d(e, net.up.weight, stride=2)
    h = conv(lrelu(conv(torch.cat([e, f], 1), net.head[0].weight, padding=1), 0.2), net.head[2].weight, padding=1)
    return torch.nn.functional.softsign(h) * net.range_flow, e


def test_crn_computes_the_documented_architecture():
    torch.manual_seed(1)
    model = LapIRN(LapIRNConfig(start_channel=2, range_flow=0.7))
    x1, x2 = torch.randn(1, 2, 8, 12, 10), torch.randn(1, 5, 16, 24, 20)  # level 2 grid = 2 x level 1
    with torch.no_grad():
        r1, e1 = model.nets[0](x1)
        h1, he1 = crn_by_hand(model.nets[0], x1, None)
        r2, e2 = model.nets[1](x2, e1)
        h2, he2 = crn_by_hand(model.nets[1], x2, he1)
    for got, want in [(r1, h1), (e1, he1), (r2, h2), (e2, he2)]:
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert r1.abs().max() < 0.7


def test_onednn_conv_matches_the_plain_conv_in_value_and_gradient():
    torch.manual_seed(0)
    conv = Conv3d(5, 8, kernel_size=3, stride=2, padding=1, bias=False)
    x = torch.randn(1, 5, 11, 9, 10, requires_grad=True)
    fast = conv(x)
    plain = torch.nn.functional.conv3d(x, conv.weight, None, conv.stride, conv.padding)
    assert fast.shape == plain.shape == (1, 8, 6, 5, 5)
    assert torch.allclose(fast, plain, atol=1e-4)
    g = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad(fast, (x, conv.weight), g), torch.autograd.grad(plain, (x, conv.weight), g), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_config_validation_and_round_trip():
    cfg = LapIRNConfig(levels=4, start_channel=3, diffeomorphic=True)
    assert LapIRNConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.pad_multiple == 16 and cfg.width == 12
    with pytest.raises(ValueError, match="unknown LapIRN config keys: colour"):
        LapIRNConfig.from_dict({"levels": 3, "colour": 1})
    with pytest.raises(ValueError):
        LapIRNConfig(levels=0)
    with pytest.raises(ValueError):
        LapIRNConfig(range_flow=0.0)
    with pytest.raises(ValueError, match="warp_padding must be one of border, zeros"):
        LapIRNConfig(warp_padding="reflection")
    with pytest.raises(ValueError, match="align_corners"):
        LapIRNConfig(align_corners="false")


def test_numerics_defaults_and_legacy_checkpoints_load_with_their_own_numerics():
    """New models: align_corners=True, border padding. A model_config stored before the keys
    existed was trained with align_corners=True and zero padding, so that is what it loads with."""
    new = LapIRNConfig()
    assert (new.align_corners, new.warp_padding) == (True, "border")
    assert LapIRNConfig.from_dict(new.to_dict()) == new
    legacy = {k: v for k, v in new.to_dict().items() if k not in ("align_corners", "warp_padding")}
    old = LapIRNConfig.from_dict(legacy)
    assert (old.align_corners, old.warp_padding) == (True, "zeros")
    assert LapIRN(old).config.warp_padding == "zeros"
    assert LapIRNConfig.from_dict({}).warp_padding == "zeros"
    authors = LapIRNConfig.from_dict({**legacy, "align_corners": False, "warp_padding": "border"})
    assert (authors.align_corners, authors.warp_padding) == (False, "border")
    assert LapIRNConfig.from_dict({"warp_padding": "border"}).align_corners is True


# --------------------------------------------------------------------- pad and crop


def test_pad_and_crop_round_trip_and_coarse_shapes():
    x = torch.rand(2, 3, *ODD)
    padded, spec = pad_to_multiple(x, 16)
    assert padded.shape[2:] == (48, 48, 32)
    assert torch.equal(crop(padded, spec), x)
    assert spec == ((0, 11), (0, 7), (0, 3))
    assert torch.equal(padded[..., 37:, :, :], torch.zeros_like(padded[..., 37:, :, :]))
    for scale in (2, 4):
        coarse = torch.zeros(2, 3, *(n // scale for n in padded.shape[2:]))
        assert crop(coarse, spec, scale).shape[2:] == tuple(math.ceil(n / scale) for n in ODD)
    same, spec16 = pad_to_multiple(torch.rand(1, 1, 16, 32, 48), 16)
    assert spec16 == ((0, 0), (0, 0), (0, 0)) and same.shape[2:] == (16, 32, 48)


# ----------------------------------------------------------------------- forward pass


@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_output_shapes_on_an_odd_grid_at_every_level(diffeomorphic):
    model = small_model(diffeomorphic)
    moving, fixed = images(ODD)
    with torch.no_grad():
        for active in (1, 2, 3):
            out = model(moving, fixed, level=active)
            assert [lv.level for lv in out.levels] == list(range(1, active + 1))
            for lv in out.levels:
                scale = 2 ** (3 - lv.level)
                grid = tuple(math.ceil(n / scale) for n in ODD)
                assert lv.field.shape == (1, 3, *grid)
                assert lv.warped.shape == lv.fixed.shape == lv.moving.shape == (1, 1, *grid)
                m = model.config.pad_multiple
                assert lv.flow.shape == (1, 3, *(math.ceil(n / m) * m // scale for n in ODD))
                assert (lv.velocity is not None) == diffeomorphic == (lv.velocity_field is not None)
                if diffeomorphic:
                    assert lv.velocity_field.shape == lv.field.shape
    assert out.field.shape == (1, 3, *ODD)


def test_zero_head_gives_the_identity_at_every_level():
    model = small_model()
    for net in model.nets:
        torch.nn.init.zeros_(net.head[2].weight)
    moving, fixed = images()
    with torch.no_grad():
        out = model(moving, fixed)
    for lv in out.levels:
        assert lv.field.abs().max().item() == 0.0
        assert torch.allclose(lv.warped, lv.moving, atol=1e-5)
    assert torch.allclose(out.final.warped, moving, atol=1e-5)


def test_pyramid_method_reproduces_the_output_images():
    model = small_model()
    moving, fixed = images()
    with torch.no_grad():
        out = model(moving, fixed)
    for lv, img in zip(out.levels, model.pyramid(fixed), strict=True):
        assert torch.equal(lv.fixed, img)
    assert torch.equal(out.final.fixed, fixed)


def test_cropped_voxel_field_is_correct_on_the_original_grid():
    """The model warps on the padded grid with its normalised flow; the cropped voxel field must
    warp the *unpadded* image identically (converting after the crop would scale it wrongly)."""
    model = small_model(range_flow=4.0)
    moving, fixed = images()
    with torch.no_grad():
        out = model(moving, fixed)
    u = out.field
    assert u.abs().max() > 1.0  # a field that matters
    np.testing.assert_allclose(warp_torch(moving, u).numpy(), out.final.warped.numpy(), atol=2e-5)
    wrong = flow_to_voxel(crop(out.final.flow, out.pad_spec))  # normalised -> voxel on the wrong grid
    assert (wrong - u).abs().max() > 0.1


def test_model_field_warps_like_the_numpy_contract():
    model = small_model(range_flow=2.0)
    moving, fixed = images(seed=3)
    with torch.no_grad():
        out = model(moving, fixed)
    u = field_to_numpy(out.field)
    expected = C.warp(moving[0, 0].numpy(), u)
    got = out.final.warped[0, 0].numpy()
    interior = (slice(3, -3),) * 3
    assert np.abs(got[interior] - expected[interior]).max() < 1e-4
    assert np.abs(got - moving[0, 0].numpy()).max() > 0.05  # the warp is not the identity


def test_forward_is_deterministic_on_cpu():
    model = small_model(diffeomorphic=True)
    moving, fixed = images()
    with torch.no_grad():
        a, b = model(moving, fixed), model(moving, fixed)
    for la, lb in zip(a.levels, b.levels, strict=True):
        assert torch.equal(la.flow, lb.flow) and torch.equal(la.warped, lb.warped)


def test_bad_inputs_are_rejected():
    model = small_model()
    moving, fixed = images()
    with pytest.raises(ValueError, match="level must be in 1..3"):
        model(moving, fixed, level=4)
    with pytest.raises(ValueError, match="differ in shape"):
        model(moving, fixed[..., :-1])
    with pytest.raises(ValueError, match="B x 1 x X x Y x Z"):
        model(moving[0], fixed[0])


# ------------------------------------------------------------ fields between levels


def test_upsampling_keeps_a_normalised_affine_flow_exact():
    """With align_corners=True an affine function of normalised position stays the same function."""
    a = torch.tensor([[0.05, -0.02, 0.01], [0.0, 0.03, -0.04], [0.02, 0.01, 0.0]])
    b = torch.tensor([0.01, -0.02, 0.03])

    def affine_flow(shape):
        grid = identity_flow_grid(shape, torch.zeros(()))  # 1 x X x Y x Z x 3, normalised
        return (grid @ a.T + b).permute(0, 4, 1, 2, 3)

    coarse, fine = affine_flow((6, 5, 7)), affine_flow((12, 10, 14))
    assert torch.allclose(upsample_flow(coarse), fine, atol=1e-6)


@pytest.mark.parametrize("align_corners", [True, False])
def test_upsample_flow_is_trilinear_interpolation_with_the_chosen_corner_rule(align_corners):
    flow = torch.randn(2, 3, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    want = torch.nn.functional.interpolate(flow, scale_factor=2, mode="trilinear", align_corners=align_corners)
    got = upsample_flow(flow, align_corners=align_corners)
    assert got.shape == (2, 3, 10, 8, 12) and torch.equal(got, want)
    other = upsample_flow(flow, align_corners=not align_corners)
    assert (other - got).abs().max() > 0.1  # the option matters
    assert torch.equal(upsample_flow(flow), upsample_flow(flow, align_corners=True))  # the default


@pytest.mark.parametrize("diffeomorphic", [False, True])
@pytest.mark.parametrize("align_corners", [True, False])
def test_the_model_upsamples_flow_and_velocity_with_its_corner_rule(diffeomorphic, align_corners):
    """With the level-2 and level-3 residuals zeroed, each level's flow (velocity) is exactly
    the upsampled one of the level below, and full_resolution_field upsamples the same way."""
    torch.manual_seed(0)
    model = LapIRN(LapIRNConfig(start_channel=2, diffeomorphic=diffeomorphic, align_corners=align_corners, range_flow=0.4)).eval()
    for net in model.nets[1:]:
        torch.nn.init.zeros_(net.head[2].weight)
    moving, fixed = images()
    with torch.no_grad():
        out = model(moving, fixed)
        coarse = model(moving, fixed, level=1)
    key = "velocity" if diffeomorphic else "flow"
    for lower, upper in zip(out.levels, out.levels[1:], strict=False):
        assert torch.equal(getattr(upper, key), upsample_flow(getattr(lower, key), align_corners))
    assert out.levels[0].flow.abs().max() > 1e-3
    if not diffeomorphic:
        twice = upsample_flow(upsample_flow(coarse.final.flow, align_corners), align_corners)
        assert torch.equal(full_resolution_field(model, coarse), crop(flow_to_voxel(twice), coarse.pad_spec))


class ConstantResidual(torch.nn.Module):
    """Stands in for a CRN: the residual ``value`` everywhere (normalised units, ``dtype``)."""

    def __init__(self, value: tuple[float, float, float], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.value, self.dtype = value, dtype

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.tensor(self.value, dtype=self.dtype, device=x.device).view(1, 3, 1, 1, 1).expand(x.shape[0], 3, *x.shape[2:])
        return r.contiguous(), x.new_zeros(x.shape[0], 1, *x.shape[2:])


@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_image_warps_inside_the_model_use_its_padding(padding):
    """A translation that samples beyond the grid, on a constant image whose grid needs no
    padding: border keeps every level's warped image constant, zero padding darkens the rim."""
    model = LapIRN(LapIRNConfig(start_channel=2, warp_padding=padding)).eval()
    for p in range(3):
        model.nets[p] = ConstantResidual((0.25, -0.25, 0.125))
    moving = torch.full((1, 1, 16, 16, 24), 0.6)
    with torch.no_grad():
        out = model(moving, torch.zeros_like(moving))
    for lv in out.levels:
        if padding == "border":
            torch.testing.assert_close(lv.warped, torch.full_like(lv.warped, 0.6), atol=1e-6, rtol=0)
        else:
            assert lv.warped.min() < 0.3


def test_compose_flow_matches_the_numpy_contract():
    rng = np.random.default_rng(5)
    shape = (12, 10, 9)
    u1, u2 = (
        np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) * 8 for _ in range(3)], axis=-1).astype(np.float32)
        for _ in range(2)
    )
    t1, t2 = (torch.from_numpy(np.moveaxis(u, -1, 0).copy())[None] for u in (u1, u2))
    got = field_to_numpy(flow_to_voxel(compose_flow(voxel_to_flow(t1), voxel_to_flow(t2))))
    np.testing.assert_allclose(got, C.compose(u1, u2), atol=1e-4)
    assert np.abs(u1).max() > 1.0  # samples do leave the grid: edge extension is exercised


def test_scaling_and_squaring_of_a_constant_velocity_is_that_translation():
    shape = (20, 18, 16)
    v_vox = torch.tensor([0.8, -0.5, 0.3]).view(1, 3, 1, 1, 1).expand(1, 3, *shape).contiguous()
    flow = scaling_and_squaring(voxel_to_flow(v_vox), steps=7)
    u = flow_to_voxel(flow)
    assert torch.allclose(u, v_vox, atol=1e-5)  # edge extension: exact up to the faces
    zero = scaling_and_squaring(torch.zeros(1, 3, *shape), steps=7)
    assert zero.abs().max().item() == 0.0


# ----------------------------------------------------------------------- training


def test_freezing_lower_levels_leaves_them_without_gradients():
    model = small_model().train()
    moving, fixed = images()
    model.freeze_levels(3)
    assert model.trainable_levels == (3,)
    out = model(moving, fixed, level=3)
    loss = similarity_pyramid(out.final.warped, out.final.fixed, 3) + smoothness(out.field)
    loss.backward()
    for p in list(model.level_parameters(1)) + list(model.level_parameters(2)):
        assert p.grad is None
    grads = [p.grad for p in model.level_parameters(3)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)
    model.freeze_levels(1)
    assert model.trainable_levels == (1, 2, 3)
    with pytest.raises(ValueError):
        model.freeze_levels(5)


def test_level_one_alone_trains_only_level_one():
    model = small_model().train()
    moving, fixed = images()
    out = model(moving, fixed, level=1)
    similarity_pyramid(out.final.warped, out.final.fixed, 1).backward()
    assert all(p.grad is not None for p in model.level_parameters(1))
    assert all(p.grad is None for p in model.level_parameters(2))
