# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from monai_sacb.networks.utils import channels_last_format, compiled_cpu_kernels, is_exporting, use_cpu_kernels

__all__ = ["instance_norm_leaky_relu", "InstanceNormLeakyReLU"]


def instance_norm_leaky_relu(
    x: torch.Tensor, negative_slope: float = 0.1, eps: float = 1e-5, inplace: bool = False
) -> torch.Tensor:
    """
    ``leaky_relu(instance_norm(x, eps=eps), negative_slope)`` (no affine, biased variance).

    Plain PyTorch ``instance_norm`` and ``leaky_relu``, or, on CPU
    (:py:func:`~monai_sacb.networks.utils.use_cpu_kernels`) with float32/float64/bfloat16 input, the same function
    fused in x's memory, with statistics exact to float32 rounding, unlike single-pass variance kernels whose
    error SACB-Net's k-means amplifies:

    - float32/float64 x: a pairwise sum for the mean, then the centred sum of squares; two reads of x and no
      temporary of its size; autograd keeps only the output, not x;
    - bfloat16 x without a gradient (a convolution's output under CPU autocast, in inference): cache-sized
      chunks computed in float32, one read for the statistics and one read and write for the result. x stays
      bfloat16, so that the next convolution reads it without a conversion (plain ``instance_norm`` would return
      float32 under autocast).

    In training on a CUDA GPU (x requires a gradient; float16, bfloat16, float32 or float64; contiguous or
    channels-last; nothing exporting or compiling) the float32 kernel's autograd function runs too, for its
    memory: it keeps one tensor for backward where ``instance_norm`` then ``leaky_relu`` keep two, and the
    next convolution's input is that same tensor (docs/benchmarks.md, "Training memory on a GPU"). Its
    statistics there are float32 reductions, never matrix products, so TF32 settings cannot touch them.

    With ``inplace=True`` the fused kernels write the result into x: use it on a fresh convolution output.

    Args:
        x: (B, C, *S) tensor, any memory format.
        negative_slope: LeakyReLU slope (1.0: no activation).
        eps: added to the variance.
        inplace: overwrite x (fused kernel only).

    Returns:
        (B, C, *S) tensor in x's memory format.
    """
    if not use_cpu_kernels(x):
        if _saves_memory_in_training(x):
            if not inplace:
                x = x.clone(memory_format=torch.preserve_format)
            with torch.autocast(x.device.type, enabled=False):
                return _InstanceNormLeakyReLU.apply(x, negative_slope, eps)
        return F.leaky_relu(F.instance_norm(x, eps=eps), negative_slope)
    if not _is_voxel_major(x):  # e.g. a transposed view: the fused kernels need whole voxels in rows
        out = instance_norm_leaky_relu(x.contiguous(), negative_slope, eps, inplace=True)
        return x.copy_(out) if inplace else torch.empty_like(x).copy_(out)
    if x.dtype == torch.bfloat16 and not (torch.is_grad_enabled() and x.requires_grad):
        if not inplace:
            x = x.clone(memory_format=torch.preserve_format)
        with torch.autocast("cpu", enabled=False):
            return _bfloat16_in_place(x, negative_slope, eps)
    if x.dtype not in (torch.float32, torch.float64):
        return F.leaky_relu(F.instance_norm(x, eps=eps), negative_slope)
    if not inplace:
        x = x.clone(memory_format=torch.preserve_format)
    with torch.autocast("cpu", enabled=False):  # the statistics choose their own precision, not autocast
        return _InstanceNormLeakyReLU.apply(x, negative_slope, eps)


def _saves_memory_in_training(x: torch.Tensor) -> bool:
    """Whether the fused autograd function replaces PyTorch's norm and activation off the CPU: GPU training."""
    return (
        x.device.type == "cuda"
        and torch.is_grad_enabled()
        and x.requires_grad
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        and _is_voxel_major(x)
        and not is_exporting()
    )


def _sum_of_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """
    Per-row sums of a * b, (B, C, N) x (B, C, N) -> (B, C), in float32 at least. On the CPU as the diagonal of a
    (C, C) Gram matrix (one read of each, no temporary of their size); elsewhere as a product and a reduction,
    since matrix products there may run in TF32 or in the inputs' half precision.
    """
    if a.device.type == "cpu":
        return torch.bmm(a, b.transpose(1, 2)).diagonal(dim1=1, dim2=2)
    dtype = torch.promote_types(a.dtype, torch.float32)
    if a is b:
        return torch.linalg.vector_norm(a, dim=2, dtype=dtype).square()
    return (a.to(dtype) * b.to(dtype)).sum(2)


def _channel_rows(x: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """
    x viewed for in-place element-wise ops with per-(sample, channel) values (B, C), and those values
    shaped to broadcast. A channels-last x is viewed as (B, N / r, r * C) rows of r voxels with the values
    tiled r times (:py:func:`_voxel_major_rows`): broadcasting a vector of 4-16 channels along the innermost
    axis vectorises badly (3x slower).
    """
    batch, channels = x.shape[:2]
    if channels > 1 and _is_channels_last(x) and not x.is_contiguous():
        rows, _, repeats = _voxel_major_rows(x)
        return (rows, *(v.repeat(1, repeats).view(batch, 1, repeats * channels) for v in values))
    return (x, *(v.view(batch, channels, *(1,) * (x.ndim - 2)) for v in values))


def _forward_in_place(x: torch.Tensor, negative_slope: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalises and activates x in its own memory; returns x and 1 / std, (B, C). Two reads of x, no copy."""
    flat = x.flatten(2)  # (B, C, N); a view for contiguous and channels-last tensors
    # PyTorch sums float32 pairwise (tree-wise on GPUs): accurate over millions of voxels
    mean = flat.sum(2, dtype=torch.promote_types(x.dtype, torch.float32)) / flat.shape[2]
    rows, mean = _channel_rows(x, mean)
    rows.sub_(mean)
    inv_std = torch.rsqrt(_sum_of_products(flat, flat) / flat.shape[2] + eps)  # the centred sum of squares
    rows.mul_(_channel_rows(x, inv_std)[1])
    if negative_slope != 1.0:
        F.leaky_relu_(x, negative_slope)
    return x, inv_std


# float32 elements of one chunk of the bfloat16 kernel: small enough to stay in cache between its passes
_CHUNK_ELEMENTS = 2**18


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.ndim in (4, 5) and x.is_contiguous(memory_format=channels_last_format(x.ndim - 2))


def _is_voxel_major(x: torch.Tensor) -> bool:
    """Contiguous or channels-last: the layouts in which the fused kernels can view x as rows of voxels."""
    return x.is_contiguous() or _is_channels_last(x)


def _voxel_major_rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """
    A contiguous or channels-last x as rows of whole voxels, (G, M, R), with the values of ``channels`` channels
    repeating along each row ``repeats`` times (R = repeats * channels): a channels-last x gives G = B samples;
    a contiguous one gives G = B * C one-channel groups.
    """
    batch, channels = x.shape[:2]
    num_voxels = x[0, 0].numel()
    if _is_channels_last(x):
        groups, rows = batch, x.movedim(1, -1)
    else:
        groups, rows, channels = batch * channels, x, 1
    repeats = math.gcd(num_voxels, max(1, 128 // channels))
    return rows.view(groups, num_voxels // repeats, repeats * channels), channels, repeats


def _bfloat16_in_place(x: torch.Tensor, negative_slope: float, eps: float) -> torch.Tensor:
    """
    The norm and activation of a bfloat16 x (no gradient) computed in float32 and written into x, a cache-sized
    chunk at a time: one read of x for the statistics and one read and write for the result, 3x faster than
    normalising a float32 copy of x (2 x 8 x 96 x 112 x 96, 2 threads). The statistics are shifted sums, of
    (x - k) and (x - k)^2 with k each channel's mean over an evenly spread subset, summed pairwise within a chunk
    and in float64 across chunks: with k near the mean, as exact as the centred two-pass formula. With numba
    installed, the same function as one compiled loop per pass (float32 sums over 32 rows added in float64; about
    2x faster again at full resolution and no slower down to a few voxels,
    :py:mod:`~monai_sacb.networks.blocks.numba_kernels`).
    """
    rows, channels, repeats = _voxel_major_rows(x)
    kernels = compiled_cpu_kernels(x)
    if kernels is not None:
        from monai_sacb.networks.blocks.numba_kernels import bfloat16_instance_norm_leaky_relu_

        bfloat16_instance_norm_leaky_relu_(rows, channels, negative_slope, eps, kernels)
        return x
    groups, num_rows, width = rows.shape
    num_voxels = num_rows * repeats

    def per_column(values: torch.Tensor) -> torch.Tensor:  # (G, channels) -> (G, 1, R)
        return values.float().repeat(1, repeats).view(groups, 1, width)

    def per_channel(sums: torch.Tensor) -> torch.Tensor:  # (G, R) column sums -> (G, channels) means
        return sums.view(groups, repeats, channels).sum(1) / num_voxels

    shift = rows[:, :: max(1, num_rows // 1024)].float().mean(1).view(groups, repeats, channels).mean(1)
    shift_columns = per_column(shift)
    step = max(1, _CHUNK_ELEMENTS // (groups * width))
    chunks = [(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]
    buffer = rows.new_empty((groups, min(step, num_rows), width), dtype=torch.float32)
    sums = rows.new_zeros((groups, width), dtype=torch.float64)
    squares = torch.zeros_like(sums)
    for start, stop in chunks:
        chunk = buffer[:, : stop - start].copy_(rows[:, start:stop]).sub_(shift_columns)
        sums += chunk.sum(1)
        squares += chunk.mul_(chunk).sum(1)
    offset = per_channel(sums)
    mean_columns = per_column(shift.double() + offset)
    scale_columns = per_column(torch.rsqrt((per_channel(squares) - offset * offset).clamp_min(0) + eps))
    for start, stop in chunks:
        chunk = buffer[:, : stop - start].copy_(rows[:, start:stop]).sub_(mean_columns).mul_(scale_columns)
        if negative_slope != 1.0:
            F.leaky_relu_(chunk, negative_slope)
        rows[:, start:stop].copy_(chunk)
    return x


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
        num_voxels = y[0, 0].numel()
        # with xhat the normalised input and g its gradient:
        # dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)), and g * xhat == grad_y * y on both sides of zero
        grad_norm = torch.ops.aten.leaky_relu_backward(grad_y, y, slope, True) if slope != 1.0 else grad_y.clone()
        grad_mean = grad_norm.flatten(2).sum(2, dtype=inv_std.dtype) / num_voxels
        grad_dot = _sum_of_products(grad_y.flatten(2), y.flatten(2)) / num_voxels
        normalised = F.leaky_relu(y, 1.0 / slope) if slope != 1.0 else y  # undoes the activation: xhat
        if normalised.stride() != grad_norm.stride():  # the incoming gradient had another memory format
            normalised = torch.empty_like(grad_norm).copy_(normalised)
        rows, grad_mean, grad_dot, inv_std = _channel_rows(grad_norm, grad_mean, grad_dot, inv_std)
        normalised_rows = _channel_rows(normalised)[0]
        rows.sub_(grad_mean).addcmul_(normalised_rows, grad_dot, value=-1.0).mul_(inv_std)
        return grad_norm, None, None


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
