# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from monai_sacb.networks.blocks.conv import _onednn_dtype, same_conv
from monai_sacb.networks.utils import channels_last_format, use_cpu_kernels

__all__ = ["cluster_adaptive_conv"]


def _stacked_kernels_conv(x, weight, gains, assignments, bias):
    """One convolution per sample with the K cluster kernels stacked (K x C_out channels), then a row gather."""
    batch, out_channels, spatial_shape = x.shape[0], weight.shape[0], x.shape[2:]
    row_offsets = torch.arange(x[0, 0].numel(), device=x.device) * gains.shape[1]
    selected = [
        rows.reshape(-1, out_channels).index_select(0, row_offsets + assignments[b])
        for b, rows in enumerate(stacked_kernels_rows(x, weight, gains, bias))
    ]
    return torch.stack(selected).view(batch, *spatial_shape, out_channels).movedim(-1, 1)


def stacked_kernels_rows(x, weight, gains, bias):
    """
    The "stacked" form's convolutions, sample by sample: (N, K * C_out) rows per sample, each voxel's row holding
    its outputs under the K cluster kernels (``conv(x, weight * gains[k]) + bias[k]`` in columns k * C_out onwards).
    """
    spatial_dims = x.ndim - 2
    batch, in_channels = x.shape[:2]
    out_channels, num_taps, num_clusters = weight.shape[0], 3**spatial_dims, gains.shape[1]
    # the stacked kernels are built with channels innermost, the layout the channels-last convolution takes, so
    # that they are not copied into it afterwards
    taps = weight.movedim(1, -1).reshape(1, 1, out_channels, num_taps, in_channels)
    kernels = (taps * gains.reshape(batch, num_clusters, 1, num_taps, 1)).reshape(
        batch, num_clusters * out_channels, *weight.shape[2:], in_channels
    ).movedim(-1, 2)
    layout = channels_last_format(spatial_dims)
    for b in range(batch):
        stacked = same_conv(
            x[b : b + 1].contiguous(memory_format=layout),
            kernels[b].contiguous(memory_format=layout),
            None if bias is None else bias[b].reshape(-1),
        )  # (1, K * C_out, *S), channels-last: each voxel's K x C_out values are contiguous
        yield stacked.movedim(1, -1).reshape(-1, num_clusters * out_channels)


# patches of this many bytes are built at a time: large enough for few Python-level steps, small enough to be
# reused from the allocator's free list instead of fresh (page-faulting) memory
_PATCH_BYTES = 8 * 2**20


def _padded_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(C, *S) -> (*(S + 2), C): zero-padded by one voxel on every side, channels innermost."""
    spatial_dims = x.ndim - 1
    padded = x.new_zeros((*(size + 2 for size in x.shape[1:]), x.shape[0]))
    padded[(slice(1, -1),) * spatial_dims] = x.movedim(0, -1)
    return padded


def _tap_view(padded: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """
    Overlapping view (stop - start, *S[1:], 3, ..., 3, C) of a padded (*(S + 2), C) tensor: element
    [p, k, c] is the input at voxel p + k - 1 (p counted from slab ``start`` along the first axis), i.e. the
    im2col patches of a 3x3(x3) convolution with zero padding 1, without copying.
    """
    spatial_strides = padded.stride()[:-1]
    interior = tuple(size - 2 for size in padded.shape[:-1])
    shape = (stop - start, *interior[1:], *([3] * len(interior)), padded.shape[-1])
    offset = padded.storage_offset() + start * spatial_strides[0]
    return padded.as_strided(shape, (*spatial_strides, *spatial_strides, padded.stride()[-1]), offset)


def _slabs(spatial_shape: tuple[int, ...], taps_times_channels: int, element_size: int) -> list[tuple[int, int]]:
    """Splits the first spatial axis into slabs whose patches fit in _PATCH_BYTES."""
    plane_bytes = math.prod(spatial_shape[1:]) * taps_times_channels * element_size
    step = max(1, _PATCH_BYTES // plane_bytes)
    return [(start, min(start + step, spatial_shape[0])) for start in range(0, spatial_shape[0], step)]


def _tap_offsets(tap: int, spatial_dims: int) -> tuple[int, ...]:
    """Row-major tap index -> kernel offsets, e.g. 5 -> (0, 1, 2) in 3D."""
    offsets = []
    for _ in range(spatial_dims):
        tap, k = divmod(tap, 3)
        offsets.append(k)
    return tuple(reversed(offsets))


def _plan(x: torch.Tensor, weight: torch.Tensor) -> tuple[tuple[int, ...], torch.Tensor, list[tuple[int, int]], int]:
    """Spatial shape, (T * C_in, C_out) kernel matrix (row t * C_in + c), slabs and voxels per first-axis plane."""
    out_channels, in_channels = weight.shape[:2]
    spatial_shape = tuple(x.shape[2:])
    num_taps = 3 ** len(spatial_shape)
    kernel = weight.reshape(out_channels, in_channels, num_taps).permute(2, 1, 0).reshape(-1, out_channels)
    slabs = _slabs(spatial_shape, num_taps * in_channels, x.element_size())
    return spatial_shape, kernel, slabs, math.prod(spatial_shape[1:])


def _gains_per_voxel(gains: torch.Tensor, assignments: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """(K, T) gains of one sample, (N,) clusters -> (*S, 3, ..., 3, 1), broadcastable against _tap_view."""
    return gains.index_select(0, assignments).view(*spatial_shape, *([3] * len(spatial_shape)), 1)


def _scaled_patches(view: torch.Tensor, gains: torch.Tensor, buffer: torch.Tensor, count: int) -> torch.Tensor:
    """The gain-scaled patches of a slab of ``count`` voxels, written into ``buffer``: (count, T * C_in)."""
    scaled = buffer[:count]
    torch.mul(view, gains, out=scaled.view(view.shape))
    return scaled.view(count, -1)


class _PatchAdaptiveConv(torch.autograd.Function):
    """
    out(p) = W_flat @ (gains[c(p)] * patch(p)) + bias[c(p)]: the per-voxel tap gains scale the im2col patch,
    then one matrix product with the shared kernel, slab by slab. One convolution's arithmetic (not K), a
    patch buffer of bounded size, and autograd saving only the inputs (patches are rebuilt in backward).
    """

    @staticmethod
    def forward(ctx, x, weight, gains, assignments, bias):  # type: ignore[override]
        spatial_shape, kernel, slabs, plane = _plan(x, weight)
        batch, out_channels = x.shape[0], weight.shape[0]
        patches = x.new_empty(((slabs[0][1] - slabs[0][0]) * plane, kernel.shape[0]))
        layout = channels_last_format(len(spatial_shape))
        out = torch.empty((batch, out_channels, *spatial_shape), dtype=x.dtype, device=x.device, memory_format=layout)
        for b in range(batch):
            padded = _padded_channels_last(x[b])
            voxel_gains = _gains_per_voxel(gains[b], assignments[b], spatial_shape)
            rows = out[b].movedim(0, -1).view(-1, out_channels)  # channels-last: one row per voxel
            if bias is not None:
                rows.copy_(bias[b].index_select(0, assignments[b]))
            for start, stop in slabs:
                count = (stop - start) * plane
                scaled = _scaled_patches(_tap_view(padded, start, stop), voxel_gains[start:stop], patches, count)
                target = rows[start * plane : stop * plane]
                if bias is None:
                    torch.mm(scaled, kernel, out=target)
                else:
                    target.addmm_(scaled, kernel)
        ctx.save_for_backward(x, weight, gains, assignments)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, gains, assignments = ctx.saved_tensors
        need_x, need_weight, need_gains, _, need_bias = ctx.needs_input_grad
        spatial_shape, kernel, slabs, plane = _plan(x, weight)
        batch, in_channels, out_channels = x.shape[0], x.shape[1], weight.shape[0]
        spatial_dims, num_clusters = len(spatial_shape), gains.shape[1]
        num_taps = 3**spatial_dims
        buffer_shape = ((slabs[0][1] - slabs[0][0]) * plane, kernel.shape[0])
        patches, grad_patches = x.new_empty(buffer_shape), x.new_empty(buffer_shape)
        grad_rows = grad_out.movedim(1, -1).reshape(batch, -1, out_channels)
        grad_x = torch.empty_like(x) if need_x else None
        grad_kernel = torch.zeros_like(kernel) if need_weight else None
        grad_gains = torch.zeros_like(gains) if need_gains else None
        grad_bias = x.new_zeros((batch, num_clusters, out_channels)) if need_bias else None
        taps = [_tap_offsets(t, spatial_dims) for t in range(num_taps)]
        for b in range(batch):
            padded = _padded_channels_last(x[b])
            voxel_gains = _gains_per_voxel(gains[b], assignments[b], spatial_shape)
            # (N, K) one-hot: per-cluster sums as matrix products, deterministic on every device
            membership = F.one_hot(assignments[b], num_clusters).to(x.dtype)
            grad_padded = torch.zeros_like(padded) if need_x else None
            grad_voxel_gains = x.new_empty((grad_rows.shape[1], num_taps)) if need_gains else None
            for start, stop in slabs:
                count = (stop - start) * plane
                view = _tap_view(padded, start, stop)
                grad_slab = grad_rows[b, start * plane : stop * plane]
                if need_weight:
                    scaled = _scaled_patches(view, voxel_gains[start:stop], patches, count)
                    grad_kernel.addmm_(scaled.t(), grad_slab)
                if not (need_x or need_gains):
                    continue
                grad_scaled = grad_patches[:count]
                torch.mm(grad_slab, kernel.t(), out=grad_scaled.view(count, -1))
                grad_scaled = grad_scaled.view(view.shape)
                if need_gains:  # d out / d gain of tap t at p = <grad of the scaled patch, the unscaled patch>
                    products = patches[:count].view(view.shape)
                    torch.mul(grad_scaled, view, out=products)
                    rows = grad_voxel_gains[start * plane : stop * plane]
                    torch.sum(products.view(count, num_taps, in_channels), -1, out=rows)
                if need_x:  # scatter each tap's share back onto the input voxel it came from
                    grad_scaled.mul_(voxel_gains[start:stop])
                    for tap in taps:
                        window = (slice(start + tap[0], stop + tap[0]),) + tuple(
                            slice(k, k + size) for k, size in zip(tap[1:], spatial_shape[1:])
                        )
                        grad_padded[window].add_(grad_scaled[(Ellipsis, *tap, slice(None))])
            if need_x:
                grad_x[b] = grad_padded[(slice(1, -1),) * spatial_dims].movedim(-1, 0)
            if need_gains:
                grad_gains[b] = membership.t() @ grad_voxel_gains
            if need_bias:
                grad_bias[b] = membership.t() @ grad_rows[b]
        grad_weight = None
        if need_weight:
            grad_weight = grad_kernel.view(num_taps, in_channels, out_channels).permute(2, 1, 0).reshape(weight.shape)
        return grad_x, grad_weight, grad_gains, None, grad_bias


def cluster_adaptive_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    gains: torch.Tensor,
    assignments: torch.Tensor,
    bias: torch.Tensor | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """
    Spatially adaptive 3x3(x3) convolution whose kernel depends on each output voxel's cluster:
    ``out(p) = conv(x, weight * gains[c(p)].view(3, 3[, 3]))(p) + bias[c(p)]`` (zero padding 1, stride 1),
    where ``c(p)`` is the cluster of voxel p and the gains scale the kernel's taps, broadcast over channels.

    Two exact formulations (``method``):

    - ``"stacked"``, the plain reference: per sample, the K cluster kernels run as one convolution with
      K x C_out output channels and each voxel takes the row of its own cluster: K times the arithmetic, but in
      the dense convolution kernels GPUs run fastest (not measured here: no GPU). Also what tracing and ONNX
      export record.
    - ``"patches"``, the CPU kernel: each voxel's im2col patch (a zero-copy overlapping view) is scaled by its
      cluster's tap gains and multiplied by the shared kernel, a slab of voxels at a time: one convolution's
      arithmetic, a patch buffer of bounded size, patches rebuilt in backward instead of saved. The faster on
      CPU: at SACB-Net's levels 2-4 (K = 7), 1.4-2.3x forward and up to 3x forward+backward on 2 threads.
    - ``"auto"``: "patches" where :py:func:`~monai_sacb.networks.utils.use_cpu_kernels` allows it (on CPU, not
      exporting or compiling), "stacked" elsewhere, and also on CPU under ``torch.autocast("cpu",
      dtype=torch.bfloat16)`` where oneDNN computes the stacked convolution in bfloat16: with AMX it took a
      quarter of the float32 patches' time at SACB-Net's level 2 (2 x 16 x 48 x 56 x 48, 2 threads), K times
      the arithmetic notwithstanding.

    Args:
        x: (B, C_in, *S) input, 2 or 3 spatial dimensions.
        weight: (C_out, C_in, 3, 3[, 3]) shared kernel.
        gains: (B, K, T) per-cluster tap gains, T = 3 ** spatial_dims (row-major over the kernel's taps).
        assignments: (B, N) int64 cluster index of every voxel, N = prod(S) in row-major order; not differentiable.
        bias: optional (B, K, C_out) per-cluster bias.
        method: "auto", "patches" or "stacked" (see above).

    Returns:
        (B, C_out, *S) tensor.
    """
    spatial_dims = x.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"x must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(x.shape)}.")
    batch, in_channels, *spatial_shape = x.shape
    out_channels = weight.shape[0]
    num_taps = 3**spatial_dims
    if tuple(weight.shape[1:]) != (in_channels,) + (3,) * spatial_dims:
        raise ValueError(f"weight must be (C_out, {in_channels}{', 3' * spatial_dims}), got {tuple(weight.shape)}.")
    if gains.ndim != 3 or gains.shape[0] != batch or gains.shape[2] != num_taps:
        raise ValueError(f"gains must be (B={batch}, K, {num_taps}), got {tuple(gains.shape)}.")
    num_clusters = gains.shape[1]
    if tuple(assignments.shape) != (batch, x[0, 0].numel()):
        raise ValueError(f"assignments must be (B, N={x[0, 0].numel()}), got {tuple(assignments.shape)}.")
    if bias is not None and tuple(bias.shape) != (batch, num_clusters, out_channels):
        raise ValueError(f"bias must be (B={batch}, K={num_clusters}, C_out={out_channels}), got {tuple(bias.shape)}.")

    if method not in ("auto", "patches", "stacked"):
        raise ValueError(f'method must be "auto", "patches" or "stacked", got {method!r}.')
    if method == "auto":
        method = "patches" if use_cpu_kernels(x) and _onednn_dtype(x, weight) != torch.bfloat16 else "stacked"
    if method == "stacked":
        return _stacked_kernels_conv(x, weight, gains, assignments, bias)
    dtype = torch.promote_types(x.dtype, weight.dtype)
    with torch.autocast(x.device.type, enabled=False):
        return _PatchAdaptiveConv.apply(
            x.to(dtype),
            weight.to(dtype),
            gains.to(dtype),
            assignments,
            None if bias is None else bias.to(dtype),
        )
