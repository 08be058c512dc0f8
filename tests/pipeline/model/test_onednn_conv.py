"""oneDNN 3-D convolution with a oneDNN backward: values and both gradients equal ``F.conv3d``'s
(strides, paddings, odd grids, channels-last inputs, frozen weights); small batch-1 grids no
longer run PyTorch's ``convolution_backward`` (its slow im2col path there), larger ones still do
(oneDNN's own backward, faster than the rewrites)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from pipeline.model.lapirn import Conv3d
from pipeline.model.onednn_conv import (
    conv3d_onednn_backward,
    native_backward_uses_onednn,
    onednn_conv3d,
    onednn_conv3d_supported,
)

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")

CASES = [
    # (in, out, grid, kernel, stride, padding)
    (5, 16, (12, 9, 10), 3, 1, 1),
    (16, 3, (8, 8, 6), 3, 1, 1),
    (4, 6, (11, 9, 10), 3, 2, 1),  # odd grid, stride 2 (LapIRN's down conv)
    (4, 6, (12, 10, 8), 3, 2, 1),  # even grid, stride 2
    (3, 5, (7, 6, 9), 3, 1, 0),
    (2, 4, (9, 8, 7), 2, 2, 0),  # kernel 2
    (3, 2, (10, 7, 9), 5, 1, 2),
]


@pytest.mark.parametrize("cin, cout, grid, k, s, p", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_and_gradients_match_the_plain_convolution(cin, cout, grid, k, s, p, channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, cin, *grid, dtype=torch.float64).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    w = torch.randn(cout, cin, k, k, k, requires_grad=True)
    fast = conv3d_onednn_backward(x, w, (s,) * 3, (p,) * 3)
    plain = F.conv3d(x, w, None, s, p)
    assert fast.shape == plain.shape
    assert torch.allclose(fast, plain, atol=1e-4, rtol=1e-5)
    g = torch.randn_like(plain)
    gx_fast, gw_fast = torch.autograd.grad(fast, (x, w), g)
    gx_plain, gw_plain = torch.autograd.grad(plain, (x, w), g)
    assert gx_fast.shape == x.shape and gw_fast.shape == w.shape
    assert torch.allclose(gx_fast, gx_plain, atol=1e-3, rtol=1e-4)
    assert torch.allclose(gw_fast, gw_plain, atol=1e-3, rtol=1e-4)


def test_frozen_weights_or_inputs_get_only_the_gradient_asked_for():
    torch.manual_seed(1)
    x = torch.randn(1, 3, 6, 7, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, 3)  # frozen
    (gx,) = torch.autograd.grad(conv3d_onednn_backward(x, w, (1, 1, 1), (1, 1, 1)).sum(), (x,))
    (ref,) = torch.autograd.grad(F.conv3d(x, w, None, 1, 1).sum(), (x,))
    assert torch.allclose(gx, ref, atol=1e-4)
    image = torch.randn(1, 3, 6, 7, 5)  # an input image: no gradient wanted
    w.requires_grad_(True)
    (gw,) = torch.autograd.grad(conv3d_onednn_backward(image, w, (2, 2, 2), (1, 1, 1)).sum(), (w,))
    (ref,) = torch.autograd.grad(F.conv3d(image, w, None, 2, 1).sum(), (w,))
    assert torch.allclose(gw, ref, atol=1e-4)


def _backward_ops(conv: torch.nn.Module, x: torch.Tensor) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        conv(x).square().sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    return {e.key for e in prof.key_averages()}


def test_small_grids_avoid_pytorchs_backward_and_large_ones_keep_it():
    """The reason for the module: on batch-1 grids with C*X*Y <= 20480, PyTorch's backward of
    a oneDNN forward falls back to im2col, 10-50x slower (measured in the module docstring);
    above, PyTorch's backward is oneDNN's own and faster than the rewrites."""
    torch.manual_seed(2)
    conv = Conv3d(16, 16, kernel_size=3, padding=1, bias=False)
    small = torch.randn(1, 16, 16, 12, 20, requires_grad=True)  # 16 * 16 * 12 = 3072
    assert not native_backward_uses_onednn(small, conv.weight)
    ops = _backward_ops(conv, small)
    assert "aten::mkldnn_convolution" in ops and "aten::convolution_backward" not in ops
    large = torch.randn(1, 16, 40, 33, 4, requires_grad=True)  # 16 * 40 * 33 = 21120
    assert native_backward_uses_onednn(large, conv.weight)
    assert "aten::convolution_backward" in _backward_ops(conv, large)
    batch = torch.randn(2, 16, 8, 6, 4)
    assert native_backward_uses_onednn(batch, conv.weight)
    assert torch.allclose(onednn_conv3d(batch, conv.weight, (1, 1, 1), (1, 1, 1)), F.conv3d(batch, conv.weight, None, 1, 1), atol=1e-4)


def test_support_check_falls_back_where_it_does_not_apply():
    x, w = torch.randn(1, 2, 4, 4, 4), torch.randn(3, 2, 3, 3, 3)
    assert onednn_conv3d_supported(x, w, (1, 1, 1), 1)
    assert not onednn_conv3d_supported(x.double(), w.double(), (1, 1, 1), 1)
    assert not onednn_conv3d_supported(x, w, (2, 2, 2), 1)
    assert not onednn_conv3d_supported(x, w, (1, 1, 1), 2)
    conv = Conv3d(2, 3, kernel_size=3, padding=1, bias=False).double()
    xd = torch.randn(1, 2, 5, 4, 6, dtype=torch.float64)
    assert torch.allclose(conv(xd), F.conv3d(xd, conv.weight, None, 1, 1))  # plain path, same values
