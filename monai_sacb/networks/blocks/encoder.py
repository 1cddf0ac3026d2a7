# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from monai_sacb.networks.blocks.conv import SameConv2d, SameConv3d
from monai_sacb.networks.blocks.norm_act import InstanceNormLeakyReLU
from monai_sacb.networks.blocks.pair_stacking import stacked_conv_norm_act, unstack_pair
from monai_sacb.networks.utils import compiled_cpu_kernels

__all__ = ["conv_norm_act", "AvgPool2x", "PyramidEncoder"]


def conv_norm_act(spatial_dims: int, in_channels: int, out_channels: int, negative_slope: float = 0.1) -> nn.Sequential:
    """
    3x3(x3) convolution (stride 1, padding 1, bias) -> InstanceNorm (no affine) -> LeakyReLU, as
    ``nn.Sequential(conv=..., adn=...)`` (the state-dict keys of MONAI's ``Convolution``).

    The norm and activation are one :py:class:`InstanceNormLeakyReLU` working in the convolution's output
    memory: on CPU, allocating fresh tensors (page faults) costs more than the arithmetic of these narrow
    layers, and PyTorch's faster channels-last GroupNorm is not accurate enough here (k-means amplifies
    its ~1e-3 float32 error into 0.5-voxel ddf differences in a trained network).
    """
    conv = (SameConv3d if spatial_dims == 3 else SameConv2d)(in_channels, out_channels)
    return nn.Sequential(OrderedDict(conv=conv, adn=InstanceNormLeakyReLU(negative_slope, inplace=True)))


class AvgPool2x(nn.Module):
    """
    ``avg_pool(x, kernel_size=2, stride=2)`` over every spatial axis (odd sizes drop their last row, as
    avg_pool does), as a sum of the even and odd slices, one axis after the other. Keeps x's memory format:
    PyTorch's CPU ``avg_pool3d`` returns contiguous output for channels-last input and takes 8x longer
    (40 ms against 5 ms for two 8-channel 80x96x112 volumes on 2 threads).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compiled = _compiled_average_pool(x)
        if compiled is not None:
            return compiled
        out = x
        for axis in range(2, x.ndim):
            size = out.shape[axis] - out.shape[axis] % 2
            even = [slice(None)] * x.ndim
            odd = [slice(None)] * x.ndim
            even[axis], odd[axis] = slice(0, size, 2), slice(1, size, 2)
            out = out[tuple(even)] + out[tuple(odd)]
        return out.mul_(0.5 ** (x.ndim - 2))


def _compiled_average_pool(x: torch.Tensor) -> torch.Tensor | None:
    """
    The pooling of 3D bfloat16 CPU features without gradient (inference under bfloat16 autocast) from the compiled
    kernel (:py:func:`~monai_sacb.networks.blocks.numba_kernels.bfloat16_average_pool_twice`): one pass, the mean
    rounded once (the eager bfloat16 code rounds after each of its three additions); None elsewhere (float32
    results never depend on whether numba is installed).
    """
    if x.ndim != 5 or x.dtype != torch.bfloat16:
        return None
    kernels = compiled_cpu_kernels(x)
    if kernels is None:
        return None
    from monai_sacb.networks.blocks.numba_kernels import bfloat16_average_pool_twice

    return bfloat16_average_pool_twice(x, kernels)


class PyramidEncoder(nn.Module):
    """
    The SACB-Net feature pyramid: five levels, each 2x coarser than the one before (average pooling).

    With base width c and the default ``channels=(2c, 4c, 8c, 16c, 16c)``:
    level 1 (full resolution) conv in->c, c->2c, 2c->2c; levels 2-5: AvgPool(2) then two convolutions to
    that level's width (pooling by :py:class:`AvgPool2x`). Every convolution is :py:func:`conv_norm_act`.
    Moving and fixed images share it;
    InstanceNorm works per sample, so both can go through as one batch.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input image.
        channels: output widths of the five levels.
        first_channels: width of the first convolution (c).

    Returns from ``forward``:
        a list of five (B, channels[l], *S / 2^l) tensors, finest first; spatial sizes must be divisible by 16.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32, 64, 64),
        first_channels: int = 4,
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"channels must give the widths of 5 levels, got {channels}.")
        self.levels = nn.ModuleList(
            [
                nn.Sequential(
                    conv_norm_act(spatial_dims, in_channels, first_channels),
                    conv_norm_act(spatial_dims, first_channels, channels[0]),
                    conv_norm_act(spatial_dims, channels[0], channels[0]),
                )
            ]
        )
        for previous, width in zip(channels[:-1], channels[1:]):
            self.levels.append(
                nn.Sequential(
                    AvgPool2x(),
                    conv_norm_act(spatial_dims, previous, width),
                    conv_norm_act(spatial_dims, width, width),
                )
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features

    def forward_stacked_pair(self, pair: torch.Tensor) -> list[torch.Tensor]:
        """
        ``forward`` of two images stacked along channels, pair (B, 2 * in_channels, *S) ``[first | second]``: the
        full-resolution level runs on the stacked pair (:py:mod:`~monai_sacb.networks.blocks.pair_stacking`) and is
        returned stacked, (B, 2 * channels[0], *S); the coarser levels as ``forward`` returns them for the batch
        ``[first; second]``, (2B, channels[l], *S / 2^l).
        """
        x = pair
        for layer in self.levels[0]:
            x = stacked_conv_norm_act(layer, x)
        features = [x]
        pool, *layers = self.levels[1]
        x = unstack_pair(pool(x))  # pooling acts on each channel alone: pooled, then unstacked at 1/8 the size
        for layer in layers:
            x = layer(x)
        features.append(x)
        for level in self.levels[2:]:
            x = level(x)
            features.append(x)
        return features
