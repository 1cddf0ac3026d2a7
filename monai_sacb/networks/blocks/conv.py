# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from monai_sacb.networks.utils import channels_last_format, use_cpu_kernels

__all__ = ["same_conv", "SameConv2d", "SameConv3d"]


def same_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """
    ``conv(x, weight, bias, stride=1, padding=1)`` for a 3x3(x3) kernel: plain ``F.conv2d``/``F.conv3d``, or on
    CPU (:py:func:`~monai_sacb.networks.utils.use_cpu_kernels`) with float32 inputs and oneDNN, the faster route of
    :py:func:`_same_conv_onednn`. Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` that route computes in
    bfloat16 and returns bfloat16, as autocast's convolution does (on CPUs with AMX, about 5x faster for these
    narrow 3D convolutions than float32).

    Args:
        x: (B, C_in, *S), 2 or 3 spatial dimensions.
        weight: (C_out, C_in, 3, 3[, 3]).
        bias: optional (C_out,).

    Returns:
        (B, C_out, *S).
    """
    dtype = _onednn_dtype(x, weight) if use_cpu_kernels(x) else None
    if dtype is None:
        conv = F.conv3d if x.ndim == 5 else F.conv2d
        return conv(x, weight, bias, padding=1)
    return _same_conv_onednn(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """
    The dtype the oneDNN kernel computes in, or None where it does not apply. It needs oneDNN built and enabled,
    and float32 input and weight (bfloat16 input too under CPU autocast, the output of the layer before); under
    CPU autocast it computes in bfloat16 where oneDNN supports it, and leaves other autocast dtypes to autocast.
    """
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and weight.dtype == torch.float32):
        return None
    if not torch.is_autocast_enabled("cpu"):
        return torch.float32 if x.dtype == torch.float32 else None
    if torch.get_autocast_dtype("cpu") != torch.bfloat16 or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def _same_conv_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """
    CPU kernel of :py:func:`same_conv`, the same convolution:

    - oneDNN directly: PyTorch's heuristic sends a batch of one with C * D * H <= 20480 (coarse pyramid levels)
      to its native kernel, 2-3x slower for these shapes;
    - a one-channel 3D input is first unfolded along its last axis into 3 channels, and convolved with the
      equivalent 3x3x1 kernel: oneDNN is about 4x faster with 3 input channels than with 1.
    """
    spatial_dims = x.ndim - 2
    ones = [1] * spatial_dims
    if x.shape[1] != 1 or spatial_dims != 3:
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, ones, ones, ones, 1)
    layout = channels_last_format(spatial_dims)
    width = x.shape[-1]
    padded = F.pad(x, [1, 1])
    unfolded = torch.empty((x.shape[0], 3, *x.shape[2:]), dtype=x.dtype, device=x.device, memory_format=layout)
    for tap in range(3):
        unfolded[:, tap].copy_(padded[:, 0, ..., tap : tap + width])
    # (C_out, 1, 3, 3[, 3]) -> (C_out, 3, 3[, 3], 1): the last axis's taps become the input channels
    taps_as_channels = weight.movedim(-1, 1).squeeze(2).unsqueeze(-1).contiguous(memory_format=layout)
    return torch.ops.aten.mkldnn_convolution(unfolded, taps_as_channels, bias, ones[:-1] + [0], ones, ones, 1)


class SameConv3d(nn.Conv3d):
    """``nn.Conv3d(in_channels, out_channels, 3, padding=1)`` computed by :py:func:`same_conv`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return same_conv(x, self.weight, self.bias)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 3, padding=1)`` computed by :py:func:`same_conv`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return same_conv(x, self.weight, self.bias)
