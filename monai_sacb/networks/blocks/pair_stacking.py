# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
The two images of a pair through a layer they share, side by side along channels instead of one after the other
along the batch: ``[fixed | moving]``, (B, 2C, *S), convolved with block-diagonal weights. The same function as the
batch [fixed; moving], (2B, C, *S) (instance norms are per channel, so per image either way), for the one place
where it is faster: bfloat16 inference on a CPU with AMX, whose oneDNN convolutions with 4-16 channels cost about as
much per call as with twice as many input channels (measured at 80x96x80 on 2 threads: 8 -> 8 channels for two
images in a batch 6.8 ms, 16 -> 16 with block-diagonal weights for the pair 5.6-5.8 ms; the first convolution, 1 ->
4 channels, 4.7 -> 2.2-2.6 ms). The zero blocks add exact zeros; the convolutions' float32 sums run in another order,
so results agree to bfloat16 rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from monai_sacb.networks.blocks.conv import same_conv
from monai_sacb.networks.utils import channels_last_format, cpu_bfloat16_is_fast, use_cpu_kernels

__all__ = ["use_stacked_pair", "stack_pair", "unstack_pair", "block_diagonal", "stacked_conv_norm_act"]


def use_stacked_pair(x: torch.Tensor) -> bool:
    """
    Whether SACB-Net runs its full-resolution layers on the stacked pair: 3D inference (no autograd) on the CPU
    (:py:func:`~monai_sacb.networks.utils.use_cpu_kernels`) under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
    where AMX makes bfloat16 fast (:py:func:`~monai_sacb.networks.utils.cpu_bfloat16_is_fast`). Elsewhere the
    batch layout runs: in float32, or without AMX, the zero blocks would cost their arithmetic.
    """
    return (
        x.ndim == 5
        and not torch.is_grad_enabled()
        and use_cpu_kernels(x)
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and cpu_bfloat16_is_fast()
    )


def stack_pair(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) and (B, C, *S) -> (B, 2C, *S) ``[first | second]``, channels-last."""
    layout = channels_last_format(first.ndim - 2)
    return torch.cat([first, second], dim=1).contiguous(memory_format=layout)


def unstack_pair(x: torch.Tensor) -> torch.Tensor:
    """(B, 2C, *S) ``[first | second]`` -> (2B, C, *S) ``[first; second]``, channels-last."""
    batch, channels = x.shape[0], x.shape[1] // 2
    shape = (2 * batch, channels, *x.shape[2:])
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=channels_last_format(x.ndim - 2))
    out[:batch].copy_(x[:, :channels])
    out[batch:].copy_(x[:, channels:])
    return out


def block_diagonal(weight: torch.Tensor) -> torch.Tensor:
    """A convolution's weight (C_out, C_in, *k) -> (2 C_out, 2 C_in, *k) applying it to each half of a stacked pair."""
    out_channels, in_channels = weight.shape[:2]
    blocks = weight.new_zeros((2 * out_channels, 2 * in_channels, *weight.shape[2:]))
    blocks[:out_channels, :in_channels] = weight
    blocks[out_channels:, in_channels:] = weight
    return blocks.contiguous(memory_format=channels_last_format(weight.ndim - 2))


def stacked_conv_norm_act(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """
    A :py:func:`~monai_sacb.networks.blocks.conv_norm_act` layer (``conv`` with a bias, then ``adn``) applied to
    both halves of a stacked pair x (B, 2 C_in, *S) -> (B, 2 C_out, *S).
    """
    conv = layer.conv
    bias = None if conv.bias is None else torch.cat([conv.bias, conv.bias])
    return layer.adn(same_conv(x, block_diagonal(conv.weight), bias))
