# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from monai_sacb.networks.blocks.adaptive_conv import cluster_adaptive_conv, stacked_kernels_rows
from monai_sacb.networks.blocks.conv import _onednn_dtype
from monai_sacb.networks.blocks.encoder import conv_norm_act
from monai_sacb.networks.blocks.kmeans import KMeans
from monai_sacb.networks.utils import compiled_cpu_kernels

__all__ = ["SACBlock", "local_mean"]


def local_mean(x: torch.Tensor) -> torch.Tensor:
    """
    Mean of each channel over every voxel's 3x3(x3) neighbourhood, zero padded, divisor 27 (9 in 2D): the same
    as ``avg_pool(x, 3, stride=1, padding=1, count_include_pad=True)``, as a separable sum of shifted slices
    (several times faster on CPU: one new tensor per axis and in-place additions; no padded copy; defined on
    grids smaller than the window). (B, C, *S) -> (B, C, *S).
    """
    compiled = _compiled_local_mean(x)
    if compiled is not None:
        return compiled
    spatial_dims = x.ndim - 2
    total = x
    for axis in range(2, x.ndim):
        size = x.shape[axis]
        previous, total = total, total.clone()
        if size > 1:
            total.narrow(axis, 1, size - 1).add_(previous.narrow(axis, 0, size - 1))
            total.narrow(axis, 0, size - 1).add_(previous.narrow(axis, 1, size - 1))
    return total.div_(3**spatial_dims)


def _compiled_local_mean(x: torch.Tensor) -> torch.Tensor | None:
    """
    The local mean of 3D bfloat16 CPU features without gradient (the k-means descriptors of inference under
    bfloat16 autocast) from the compiled kernel
    (:py:func:`~monai_sacb.networks.blocks.numba_kernels.bfloat16_local_mean`): summed in float32 and rounded
    once, in about half the time; None where it does not apply (other dtypes, so that float32 results never
    depend on whether numba is installed; 2D; gradients; no kernels).
    """
    if x.ndim != 5 or x.dtype != torch.bfloat16:
        return None
    kernels = compiled_cpu_kernels(x)
    if kernels is None:
        return None
    from monai_sacb.networks.blocks.numba_kernels import bfloat16_local_mean

    return bfloat16_local_mean(x, kernels)


def _mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_features)
    )


class SACBlock(nn.Module):
    """
    Spatial-awareness convolution block of SACB-Net.

    1. ``x = proj_in(input)``: conv 3x3(x3), InstanceNorm, LeakyReLU(0.1).
    2. Local descriptor of every voxel: the mean of x over its 3x3(x3) neighbourhood (zero padding, divisor 27 or 9).
    3. k-means on the descriptors of each sample on its own (:py:class:`KMeans`; no gradient).
    4. Per cluster centroid m: tap gains ``a = sigmoid(MLP_k(m))`` (one per kernel tap) and a bias
       ``b = MLP_b(m)`` (one per channel); the cluster's kernel is the shared ``weight`` with its taps scaled by a.
    5. ``out(p) = conv(x, weight * a[c(p)])(p) + b[c(p)]`` (:py:func:`cluster_adaptive_conv`).
    6. Returns ``input + LeakyReLU(0.1)(out)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C, input and output channels.
        num_clusters: k-means clusters per sample (the paper uses 7). Does not change the parameter count.
        kmeans_iters: Lloyd iterations after k-means++ initialisation.
        kmeans_seed: seed of the k-means++ draws (fixed at construction: same input, same output).
        kmeans_max_points: centroids are fitted on an evenly spread subset of at most this many voxels, then
            every voxel is assigned (``None``: fit on all voxels, as the published code does).
        kernel_hidden: hidden width of MLP_k.
        bias_hidden: hidden width of MLP_b.

    Input and output: (B, C, *S).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        channels: int = 16,
        num_clusters: int = 7,
        kmeans_iters: int = 10,
        kmeans_seed: int = 0,
        kmeans_max_points: int | None = 16384,
        kernel_hidden: int = 128,
        bias_hidden: int = 64,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        num_taps = 3**spatial_dims
        self.proj_in = conv_norm_act(spatial_dims, channels, channels)
        self.kmeans = KMeans(num_clusters, kmeans_iters, kmeans_seed, kmeans_max_points)
        self.kernel_mlp = _mlp(channels, kernel_hidden, num_taps)
        self.bias_mlp = _mlp(channels, bias_hidden, channels)
        self.weight = nn.Parameter(torch.empty(channels, channels, *([3] * spatial_dims)))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.negative_slope = 0.1

    def cluster(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, *S) features -> assignments (B, N) and centroids (B, K, C) of their local descriptors."""
        descriptors = local_mean(x.detach())
        return self.kmeans(descriptors.flatten(2).transpose(1, 2))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(inputs)
        assignments, centroids = self.cluster(x)
        centroids = centroids.to(self.weight.dtype)  # k-means runs in float32; the MLPs follow the module
        gains = torch.sigmoid(self.kernel_mlp(centroids))  # (B, K, T)
        biases = self.bias_mlp(centroids)  # (B, K, C)
        fused = _compiled_block_output(inputs, x, self.weight, gains, assignments, biases, self.negative_slope)
        if fused is not None:
            return fused
        out = cluster_adaptive_conv(x, self.weight, gains, assignments, biases)
        return inputs + F.leaky_relu_(out, self.negative_slope)  # out is this block's own fresh tensor


def _compiled_block_output(inputs, x, weight, gains, assignments, biases, negative_slope) -> torch.Tensor | None:
    """
    ``inputs + leaky_relu(cluster_adaptive_conv(x, ...))`` for 3D bfloat16 CPU inference (the adaptive convolution
    in its "stacked" form under bfloat16 autocast): each sample's stacked convolution, then one compiled pass that
    gathers each voxel's cluster, activates and adds the input
    (:py:func:`~monai_sacb.networks.blocks.numba_kernels.bfloat16_select_activate_add`; the same bits as the eager
    gather, activation and addition, in about a quarter of their time); None where it does not apply.
    """
    if x.ndim != 5 or inputs.dtype != torch.bfloat16 or not inputs.is_contiguous(memory_format=torch.channels_last_3d):
        return None
    if _onednn_dtype(x, weight) != torch.bfloat16:
        return None
    kernels = compiled_cpu_kernels(inputs, x, weight, gains, biases)
    if kernels is None:
        return None
    from monai_sacb.networks.blocks.numba_kernels import bfloat16_select_activate_add

    out = torch.empty_like(inputs)
    for b, rows in enumerate(stacked_kernels_rows(x, weight, gains, biases)):
        bfloat16_select_activate_add(rows, assignments[b], inputs[b], negative_slope, out[b], kernels)
    return out
