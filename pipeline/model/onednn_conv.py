"""3-D convolution on CPU through oneDNN in the forward *and* the backward pass.

``torch.mkldnn_convolution`` runs oneDNN forward, but its autograd formula goes through
``aten::convolution_backward``, which picks its backend with the same batch-1 heuristic as the
forward (oneDNN only when ``N * C * X * Y > 20480``). LapIRN's levels at start_channel 4-7 fall
under it, and the im2col fallback's backward is 10-50x slower than the forward (measured on
2 CPU cores: 16 -> 16 channels at 32x24x40, forward 2.5 ms, backward 90-115 ms). This module
writes both gradients as plain oneDNN forward convolutions, which are exact rewrites:

* input gradient: the output gradient, zero-stuffed by the stride, convolved with the kernel
  flipped in space and transposed in channels (padding ``k - 1 - p``);
* weight gradient: the input with batch and channels swapped, convolved with the output
  gradient (batch and channels swapped) as a kernel, dilated by the stride (padding ``p``).

These rewrites are slower than oneDNN's own backward (1.3-4x at 28 channels on 80x96x112), so
:func:`onednn_conv3d` uses them only where PyTorch would leave oneDNN for the backward pass.
Tensors are ``B x C x X x Y x Z`` float32 on CPU; dilation 1, one group, no bias (what LapIRN
uses; :func:`onednn_conv3d_supported` says when it applies). :class:`Conv3d` is the module form.
"""

from __future__ import annotations

import torch
from torch import nn

Triple = tuple[int, ...]  # three ints (nn.Conv3d types its stride, padding and dilation so)


def onednn_conv3d_supported(x: torch.Tensor, weight: torch.Tensor, dilation: Triple, groups: int) -> bool:
    """True where :func:`onednn_conv3d` applies: CPU float32, oneDNN on, dilation 1, one group."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and tuple(dilation) == (1, 1, 1)
        and groups == 1
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
        and not torch.is_autocast_enabled("cpu")
    )


def _conv(x: torch.Tensor, weight: torch.Tensor, padding: Triple, stride: Triple = (1, 1, 1), dilation: Triple = (1, 1, 1)) -> torch.Tensor:
    return torch.mkldnn_convolution(x, weight, None, padding, stride, dilation, 1)


def input_grad(grad: torch.Tensor, weight: torch.Tensor, in_shape: torch.Size, stride: Triple, padding: Triple) -> torch.Tensor:
    """Gradient of ``conv3d(x, weight, stride, padding)`` w.r.t. ``x`` (shape ``in_shape``) for
    the output gradient ``grad`` (``B x O x ...``)."""
    k = weight.shape[2:]
    if any(s > 1 for s in stride):
        # zero-stuffing: output voxel j sits on input position s * j; the length covers
        # every input voxel the kernel reached (n + 2p - k + 1)
        length = [n + 2 * p - kk + 1 for n, p, kk in zip(in_shape[2:], padding, k, strict=True)]
        stuffed = grad.new_zeros((*grad.shape[:2], *length))
        stuffed[:, :, :: stride[0], :: stride[1], :: stride[2]] = grad
        grad = stuffed
    flipped = weight.transpose(0, 1).flip(2, 3, 4).contiguous()
    pad = tuple(kk - 1 - p for kk, p in zip(k, padding, strict=True))
    if min(pad) < 0:
        raise ValueError(f"padding {padding} larger than kernel - 1 ({tuple(k)}) is not supported")
    out = _conv(grad.contiguous(), flipped, pad)
    return out[:, :, : in_shape[2], : in_shape[3], : in_shape[4]]


def weight_grad(x: torch.Tensor, grad: torch.Tensor, k: Triple, stride: Triple, padding: Triple) -> torch.Tensor:
    """Gradient of ``conv3d(x, weight, stride, padding)`` w.r.t. a ``O x I x k`` weight.

    ``dW[o, i, t] = sum_b sum_j grad[b, o, j] xpad[b, i, s j + t]``: a convolution of ``x``
    (batch and channels swapped, ``I x B x ...``) with ``grad`` (``O x B x ...``) as the kernel,
    dilated by the stride; trailing positions beyond ``k`` (strides that do not tile) are cut.
    """
    out = _conv(x.transpose(0, 1).contiguous(), grad.transpose(0, 1).contiguous(), padding, dilation=stride)
    return out[:, :, : k[0], : k[1], : k[2]].transpose(0, 1)


class _OneDnnConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: Triple, padding: Triple) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return _conv(x, weight, padding, stride)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = input_grad(grad, weight, x.shape, ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            gw = weight_grad(x, grad, tuple(weight.shape[2:]), ctx.stride, ctx.padding)
        return gx, gw, None, None


def native_backward_uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """PyTorch's own backend choice for a float32 CPU convolution (``ConvParams::use_mkldnn``,
    PyTorch 2.x) for kernels larger than 1: oneDNN for batches above 1, kernels above 3 in
    the last two axes, or ``N * C * X * Y > 20480``; otherwise the im2col path."""
    n, c, x0, x1 = x.shape[:4]
    return n > 1 or (weight.shape[-1] > 3 and weight.shape[-2] > 3) or n * c * x0 * x1 > 20480


def conv3d_onednn_backward(x: torch.Tensor, weight: torch.Tensor, stride: Triple, padding: Triple) -> torch.Tensor:
    """``conv3d(x, weight, stride=stride, padding=padding)`` (no bias), oneDNN forward, both
    gradients as oneDNN forward convolutions (module docstring); same values and gradients as
    ``F.conv3d`` up to float32 rounding."""
    return _OneDnnConv3d.apply(x, weight, tuple(stride), tuple(padding))


def onednn_conv3d(x: torch.Tensor, weight: torch.Tensor, stride: Triple, padding: Triple) -> torch.Tensor:
    """oneDNN in both passes: ``torch.mkldnn_convolution`` where PyTorch's backward already runs
    oneDNN (:func:`native_backward_uses_onednn`), :func:`conv3d_onednn_backward` elsewhere."""
    if native_backward_uses_onednn(x, weight):
        return _conv(x, weight, tuple(padding), tuple(stride))
    return conv3d_onednn_backward(x, weight, stride, padding)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that on CPU in float32 runs oneDNN forward and backward (same parameters,
    same state dict): :func:`onednn_conv3d`. LapIRN builds every conv from it.

    PyTorch's backend heuristic sends batch-1 3-D inputs with ``C * X * Y <= 20480`` (LapIRN's
    levels at small widths) to an im2col path about 5x slower than oneDNN in the forward pass
    and 10-50x slower in the backward pass; gradients are the same either way. Other
    devices/dtypes, autocast and ``torch.compile``: plain ``nn.Conv3d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not torch.compiler.is_compiling()  # first: the compiler picks its own kernels
            and self.padding_mode == "zeros"
            and self.bias is None
            and isinstance(self.padding, tuple)
            and onednn_conv3d_supported(x, self.weight, self.dilation, self.groups)
        ):
            return onednn_conv3d(x, self.weight, self.stride, self.padding)
        return super().forward(x)
