"""Mixed precision: autocast for the convolutions only, float32 for everything that is a field.

Policy (``amp`` "bf16" | "fp16" | "none", ``TrainConfig.amp`` / ``PredictConfig.amp``):

* autocast runs on GPU only (:func:`autocast`); on CPU it is a disabled context, so CPU runs are
  plain float32 (and stay on the oneDNN fast path of ``pipeline.model.onednn_conv``).
* Under autocast only the CNNs (LapIRN's CRN bodies) compute in reduced precision. Every field,
  identity grid, warp, upsampling, scaling and squaring, voxel conversion and loss runs in float32
  inside :func:`no_autocast`: bfloat16 keeps 8 significant bits, so an identity grid in [-1, 1]
  on a 160-voxel axis would be off by up to 0.2 voxel and a zero-flow warp by 0.06 intensity.
* fp16 gradients underflow without loss scaling: :func:`grad_scaler` is enabled for fp16 on CUDA
  (bf16 has float32's exponent range and needs none).
"""

from __future__ import annotations

import torch

AMP_MODES = ("bf16", "fp16", "none")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _check(amp: str) -> None:
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """Mixed precision on GPU only: ``amp`` "bf16" | "fp16" | "none"; a disabled context elsewhere.

    Wrap the model's forward pass in it; :class:`pipeline.model.lapirn.LapIRN` then runs its
    convolutions in ``amp``'s dtype and returns float32 fields.
    """
    _check(amp)
    if device.type != "cuda" or amp == "none":
        return torch.autocast(device_type="cpu", enabled=False)
    return torch.autocast(device_type="cuda", dtype=_DTYPES[amp])


def no_autocast(like: torch.Tensor) -> torch.autocast:
    """A context that switches autocast off for ``like``'s device type (field maths in full precision)."""
    kind = like.device.type if like.device.type in ("cpu", "cuda", "xpu", "mps") else "cpu"
    return torch.autocast(device_type=kind, enabled=False)


def field_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype field maths use for a tensor of ``like``'s dtype: at least float32 (float64 stays)."""
    return torch.promote_types(like.dtype, torch.float32)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Loss scaler for the training step: enabled for fp16 on CUDA only (a pass-through otherwise).

    Use ``scaler.scale(loss).backward(); scaler.step(opt); scaler.update()``; its
    ``state_dict()`` (empty when disabled) belongs in the checkpoint so a resumed run continues
    with the same scale.
    """
    _check(amp)
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and amp == "fp16")
