# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from monai_sacb.networks.utils import is_exporting

__all__ = ["instance_norm_leaky_relu", "InstanceNormLeakyReLU"]


def _forward_in_place(x: torch.Tensor, negative_slope: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalises and activates x in its own memory; returns x and 1 / std, (B, C). Two reads of x, no copy."""
    flat = x.flatten(2)  # (B, C, N); a view for contiguous and channels-last tensors
    view = (*x.shape[:2],) + (1,) * (x.ndim - 2)
    mean = flat.sum(2) / flat.shape[2]  # PyTorch sums float32 pairwise: accurate over millions of voxels
    x.sub_(mean.view(view))
    # the centred sum of squares as the diagonal of a (C, C) Gram matrix: one read, no temporary of x's size
    squares = torch.bmm(flat, flat.transpose(1, 2)).diagonal(dim1=1, dim2=2)
    inv_std = torch.rsqrt(squares / flat.shape[2] + eps)
    x.mul_(inv_std.view(view))
    if negative_slope != 1.0:
        F.leaky_relu_(x, negative_slope)
    return x, inv_std


class _InstanceNormLeakyReLU(torch.autograd.Function):
    """y = leaky_relu((x - mean) / sqrt(var + eps)), computed in x's memory; saves only y and 1/std."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, negative_slope: float, eps: float) -> torch.Tensor:  # type: ignore[override]
        y, inv_std = _forward_in_place(x, negative_slope, eps)
        ctx.mark_dirty(x)
        ctx.save_for_backward(y, inv_std)
        ctx.negative_slope = negative_slope
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor):  # type: ignore[override]
        y, inv_std = ctx.saved_tensors
        slope = ctx.negative_slope
        view = (*y.shape[:2],) + (1,) * (y.ndim - 2)
        num_voxels = y[0, 0].numel()
        # with xhat the normalised input and g its gradient:
        # dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)), and g * xhat == grad_y * y on both sides of zero
        grad_norm = torch.ops.aten.leaky_relu_backward(grad_y, y, slope, True) if slope != 1.0 else grad_y.clone()
        grad_mean = grad_norm.flatten(2).sum(2) / num_voxels
        grad_dot = torch.bmm(grad_y.flatten(2), y.flatten(2).transpose(1, 2)).diagonal(dim1=1, dim2=2) / num_voxels
        normalised = F.leaky_relu(y, 1.0 / slope) if slope != 1.0 else y  # undoes the activation: xhat
        grad_norm.sub_(grad_mean.view(view)).addcmul_(normalised, grad_dot.view(view), value=-1.0)
        return grad_norm.mul_(inv_std.view(view)), None, None


def instance_norm_leaky_relu(
    x: torch.Tensor, negative_slope: float = 0.1, eps: float = 1e-5, inplace: bool = False
) -> torch.Tensor:
    """
    ``leaky_relu(instance_norm(x, eps=eps), negative_slope)`` (no affine, biased variance), fused.

    Statistics are exact to float32 rounding (a pairwise sum for the mean, then the centred sum of squares),
    unlike single-pass variance kernels whose error SACB-Net's k-means amplifies. With ``inplace=True`` the
    result is written into x, and autograd keeps only the output, not x: use it on a fresh convolution output.
    float16/bfloat16 inputs, and tracing/export (:py:func:`~monai_sacb.networks.utils.is_exporting`), take
    PyTorch's own ``instance_norm`` and ``leaky_relu`` (the same function).

    Args:
        x: (B, C, *S) tensor, any memory format.
        negative_slope: LeakyReLU slope (1.0: no activation).
        eps: added to the variance.
        inplace: overwrite x.

    Returns:
        (B, C, *S) tensor in x's memory format.
    """
    if x.dtype not in (torch.float32, torch.float64) or is_exporting():
        return F.leaky_relu(F.instance_norm(x, eps=eps), negative_slope)
    if not inplace:
        x = x.clone(memory_format=torch.preserve_format)
    return _InstanceNormLeakyReLU.apply(x, negative_slope, eps)


class InstanceNormLeakyReLU(nn.Module):
    """Module form of :py:func:`instance_norm_leaky_relu`, the norm-and-activation of every SACB-Net convolution."""

    def __init__(self, negative_slope: float = 0.1, eps: float = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.eps = eps
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_norm_leaky_relu(x, self.negative_slope, self.eps, self.inplace)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}, eps={self.eps}, inplace={self.inplace}"
