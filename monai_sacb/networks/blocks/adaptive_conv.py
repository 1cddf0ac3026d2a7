# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import itertools

import torch
from torch.nn import functional as F

__all__ = ["cluster_adaptive_conv"]


def _tap_offsets(spatial_dims: int) -> list[tuple[int, ...]]:
    """Kernel tap offsets in {0, 1, 2}^d, in the row-major order of a (3,) * d kernel's flattened taps."""
    return list(itertools.product(range(3), repeat=spatial_dims))


def _window(offset: tuple[int, ...], spatial_shape) -> tuple[slice, ...]:
    """Index of a channels-last padded grid (B, *S + 2, C) covering the taps at ``offset`` of every voxel."""
    return (slice(None),) + tuple(slice(o, o + s) for o, s in zip(offset, spatial_shape))


def _padded_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) -> (B, *S + 2, C), zero padded by one voxel, contiguous: taps become strided views."""
    return F.pad(x.movedim(1, -1), [0, 0] + [1, 1] * (x.ndim - 2))


def _tap_gain(gains: torch.Tensor, assignments: torch.Tensor, tap: int, spatial_shape) -> torch.Tensor:
    """(B, K, T) gains, (B, N) cluster index -> (B, *S, 1): each voxel's gain for one kernel tap."""
    return torch.gather(gains[:, :, tap], 1, assignments).view(gains.shape[0], *spatial_shape, 1)


def _plane_products(x_pad: torch.Tensor, taps: torch.Tensor, plane: int) -> torch.Tensor:
    """
    Channels-last products of every padded voxel with the kernel taps of one plane (the taps sharing the first
    offset), as one dense matrix product: (B, *S + 2, taps_per_plane * C_out).
    """
    per_plane = taps.shape[0] // 3
    plane_taps = taps[plane * per_plane : (plane + 1) * per_plane].flatten(0, 1)  # (P * C_out, C_in)
    return (x_pad.reshape(-1, x_pad.shape[-1]) @ plane_taps.t()).view(*x_pad.shape[:-1], -1)


def _forward(x: torch.Tensor, weight: torch.Tensor, gains: torch.Tensor, assignments: torch.Tensor) -> torch.Tensor:
    """
    out(p) = sum_t gain[c(p), t] * sum_i weight[:, i, t] x_i(p + offset_t - 1).

    Taps are visited one kernel plane at a time (the taps sharing the first offset): one matrix product gives
    that plane's per-tap products for every voxel, and each tap's products are shifted into place and accumulated with its per-voxel gain.
    This is one ordinary convolution's arithmetic, whatever the number of clusters, with at most
    (taps per plane) x C_out x N extra memory, released plane by plane. Work is done channels-last, where a
    shift is a strided view and the products are one dense matrix product.
    """
    spatial_shape = x.shape[2:]
    out_channels = weight.shape[0]
    taps = weight.reshape(out_channels, weight.shape[1], -1).permute(2, 0, 1)  # (T, C_out, C_in)
    offsets = _tap_offsets(x.ndim - 2)
    per_plane = len(offsets) // 3
    x_pad = _padded_channels_last(x)
    out = x.new_zeros(x.shape[0], *spatial_shape, out_channels)
    for plane in range(3):
        products = _plane_products(x_pad, taps, plane)
        for j in range(per_plane):
            tap = plane * per_plane + j
            shifted = products[_window(offsets[tap], spatial_shape)][..., j * out_channels : (j + 1) * out_channels]
            out.addcmul_(shifted, _tap_gain(gains, assignments, tap, spatial_shape))
    return out.movedim(-1, 1)


class _ClusterAdaptiveConv(torch.autograd.Function):
    """Saves only the inputs; the backward pass recomputes per-tap products plane by plane, like the forward."""

    @staticmethod
    def forward(ctx, x, weight, gains, assignments):
        with torch.autocast(x.device.type, enabled=False):
            weight_c, gains_c = weight.to(x.dtype), gains.to(x.dtype)
            ctx.save_for_backward(x, weight_c, gains_c, assignments)
            ctx.dtypes = (weight.dtype, gains.dtype)
            return _forward(x, weight_c, gains_c, assignments)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, gains, assignments = ctx.saved_tensors
        need_x, need_w, need_g = ctx.needs_input_grad[:3]
        with torch.autocast(x.device.type, enabled=False):
            spatial_shape = x.shape[2:]
            batch, in_channels = x.shape[:2]
            out_channels = weight.shape[0]
            grad_out = grad_out.to(x.dtype).movedim(1, -1).contiguous()  # (B, *S, C_out)
            taps = weight.reshape(out_channels, in_channels, -1).permute(2, 0, 1)  # (T, C_out, C_in)
            x_pad = _padded_channels_last(x)
            grad_x_pad = torch.zeros_like(x_pad) if need_x else None
            grad_taps = torch.zeros_like(taps) if need_w else None
            grad_gains = torch.zeros_like(gains) if need_g else None
            offsets = _tap_offsets(x.ndim - 2)
            per_plane = len(offsets) // 3
            for plane in range(3):
                products = _plane_products(x_pad, taps, plane) if need_g else None
                for j in range(per_plane):
                    tap = plane * per_plane + j
                    gain = _tap_gain(gains, assignments, tap, spatial_shape)
                    if need_g:
                        shifted = products[_window(offsets[tap], spatial_shape)]
                        shifted = shifted[..., j * out_channels : (j + 1) * out_channels]
                        grad_gain = (grad_out * shifted).sum(-1).reshape(batch, -1)
                        grad_gains[:, :, tap].scatter_add_(1, assignments, grad_gain)
                    if not (need_x or need_w):
                        continue
                    scaled = grad_out * gain  # the gradient reaching this tap's products
                    window = _window(offsets[tap], spatial_shape)
                    if need_x:
                        grad_x_pad[window] += torch.matmul(scaled, taps[tap])
                    if need_w:
                        grad_taps[tap] = scaled.reshape(-1, out_channels).t() @ x_pad[window].reshape(-1, in_channels)
            grad_x = grad_x_pad[_window((1,) * (x.ndim - 2), spatial_shape)].movedim(-1, 1) if need_x else None
            grad_weight = grad_taps.permute(1, 2, 0).reshape(weight.shape).to(ctx.dtypes[0]) if need_w else None
            grad_gains = grad_gains.to(ctx.dtypes[1]) if need_g else None
        return grad_x, grad_weight, grad_gains, None


def cluster_adaptive_conv(
    x: torch.Tensor, weight: torch.Tensor, gains: torch.Tensor, assignments: torch.Tensor
) -> torch.Tensor:
    """
    Spatially adaptive 3x3(x3) convolution whose kernel depends on each output voxel's cluster:
    ``out(p) = conv(x, weight * gains[c(p)].view(3, 3[, 3]))(p)`` (zero padding 1, stride 1, no bias),
    where ``c(p)`` is the cluster of voxel p and the gains scale the kernel's taps, broadcast over channels.

    It equals running one convolution per cluster and selecting each voxel's result, at the cost of a single
    convolution and without unfolding the input. The backward pass keeps only the inputs and recomputes what it
    needs tap by tap, so training memory does not grow with the number of clusters or taps.

    Args:
        x: (B, C_in, *S) input, 2 or 3 spatial dimensions.
        weight: (C_out, C_in, 3, 3[, 3]) shared kernel.
        gains: (B, K, T) per-cluster tap gains, T = 3 ** spatial_dims (row-major over the kernel's taps).
        assignments: (B, N) int64 cluster index of every voxel, N = prod(S) in row-major order; not differentiable.

    Returns:
        (B, C_out, *S) tensor in ``x``'s dtype.
    """
    spatial_dims = x.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"x must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(x.shape)}.")
    if tuple(weight.shape[1:]) != (x.shape[1],) + (3,) * spatial_dims:
        raise ValueError(f"weight must be (C_out, {x.shape[1]}{', 3' * spatial_dims}), got {tuple(weight.shape)}.")
    if gains.ndim != 3 or gains.shape[0] != x.shape[0] or gains.shape[2] != 3**spatial_dims:
        raise ValueError(f"gains must be (B={x.shape[0]}, K, {3 ** spatial_dims}), got {tuple(gains.shape)}.")
    if tuple(assignments.shape) != (x.shape[0], x[0, 0].numel()):
        raise ValueError(f"assignments must be (B, N={x[0, 0].numel()}), got {tuple(assignments.shape)}.")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or gains.requires_grad)
    if needs_grad and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        return _ClusterAdaptiveConv.apply(x, weight, gains, assignments)
    # plain tensor operations: what tracing and export record, and the cheaper path when no gradient is needed
    return _forward(x, weight.to(x.dtype), gains.to(x.dtype), assignments)
