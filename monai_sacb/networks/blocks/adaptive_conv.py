# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import torch

from monai_sacb.networks.blocks.conv import same_conv

__all__ = ["cluster_adaptive_conv"]


def cluster_adaptive_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    gains: torch.Tensor,
    assignments: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Spatially adaptive 3x3(x3) convolution whose kernel depends on each output voxel's cluster:
    ``out(p) = conv(x, weight * gains[c(p)].view(3, 3[, 3]))(p) + bias[c(p)]`` (zero padding 1, stride 1),
    where ``c(p)`` is the cluster of voxel p and the gains scale the kernel's taps, broadcast over channels.

    For each sample, the K cluster kernels run as one convolution with K x C_out output channels (channels-last,
    so each voxel's K x C_out values are contiguous) and each voxel then takes the row of its own cluster.
    No unfolded copy of the input is made: the K-fold output is the only temporary, autograd saves just the
    input, the kernels and the row index, and the dense convolution kernels do the work. (On CPU this beats a
    tap-by-tap formulation with a single convolution's arithmetic, which is bound by the memory traffic of its
    27 x C_out x N intermediate products.)

    Args:
        x: (B, C_in, *S) input, 2 or 3 spatial dimensions.
        weight: (C_out, C_in, 3, 3[, 3]) shared kernel.
        gains: (B, K, T) per-cluster tap gains, T = 3 ** spatial_dims (row-major over the kernel's taps).
        assignments: (B, N) int64 cluster index of every voxel, N = prod(S) in row-major order; not differentiable.
        bias: optional (B, K, C_out) per-cluster bias.

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

    taps = weight.reshape(1, 1, out_channels, in_channels, num_taps)
    kernels = (taps * gains.reshape(batch, num_clusters, 1, 1, num_taps)).reshape(
        batch, num_clusters * out_channels, in_channels, *weight.shape[2:]
    )
    layout = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    num_voxels = x[0, 0].numel()
    row_offsets = torch.arange(num_voxels, device=x.device) * num_clusters
    selected = []
    for b in range(batch):
        stacked = same_conv(
            x[b : b + 1].contiguous(memory_format=layout),
            kernels[b].contiguous(memory_format=layout),
            None if bias is None else bias[b].reshape(-1),
        )  # (1, K * C_out, *S), channels-last: each voxel's K x C_out values are contiguous
        rows = stacked.movedim(1, -1).reshape(num_voxels * num_clusters, out_channels)
        selected.append(rows.index_select(0, row_offsets + assignments[b]))
    return torch.stack(selected).view(batch, *spatial_shape, out_channels).movedim(-1, 1)
