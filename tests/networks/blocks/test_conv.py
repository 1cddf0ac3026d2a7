# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from monai_sacb.networks import SameConv2d, SameConv3d, same_conv


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 6, 5, 7), (2, 1, 4, 6, 5), (1, 8, 5, 4, 6), (2, 3, 4, 4, 4), (1, 1, 9, 7), (2, 4, 6, 5)],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_plain_convolution_values_and_gradients(shape, with_bias):
    """float32 through the oneDNN routes (incl. the unfolded one-channel input) against float64 F.conv."""
    generator = torch.Generator().manual_seed(0)
    spatial_dims = len(shape) - 2
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, shape[1], *(3,) * spatial_dims, generator=generator, dtype=torch.float64)
    bias = torch.randn(5, generator=generator, dtype=torch.float64) if with_bias else None
    conv = F.conv3d if spatial_dims == 3 else F.conv2d
    tensors = [t.requires_grad_(True) for t in (x, weight) + ((bias,) if with_bias else ())]
    expected = conv(x, weight, bias, padding=1)
    low = [t.detach().float().requires_grad_(True) for t in tensors]
    out = same_conv(low[0], low[1], low[2] if with_bias else None)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad(out, low, grad.float())
    ref_grads = torch.autograd.grad(expected, tensors, grad)
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)


def test_float64_is_plain_convolution():
    x, weight = torch.randn(1, 1, 4, 5, 6, dtype=torch.float64), torch.randn(2, 1, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(same_conv(x, weight), F.conv3d(x, weight, padding=1), rtol=0, atol=0)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN without bfloat16 on this CPU")
@pytest.mark.parametrize("shape", [(2, 8, 6, 5, 7), (1, 1, 6, 5, 7), (1, 4, 9, 10)])
def test_cpu_autocast_bfloat16_is_autocast_convolution(shape):
    """Under CPU bfloat16 autocast the oneDNN route computes what autocast's convolution computes, in bfloat16."""
    generator = torch.Generator().manual_seed(0)
    spatial_dims = len(shape) - 2
    x = torch.randn(shape, generator=generator)
    weight = torch.randn(5, shape[1], *(3,) * spatial_dims, generator=generator)
    bias = torch.randn(5, generator=generator)
    conv = F.conv3d if spatial_dims == 3 else F.conv2d
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = same_conv(x, weight, bias)
        from_bfloat16 = same_conv(x.bfloat16(), weight, bias)  # the output of a previous layer
        expected = conv(x, weight, bias, padding=1)
    assert out.dtype == from_bfloat16.dtype == expected.dtype == torch.bfloat16
    exact = conv(x.bfloat16().double(), weight.bfloat16().double(), bias.bfloat16().double(), padding=1)
    for result in (out, from_bfloat16, expected):
        torch.testing.assert_close(result.double(), exact, rtol=2**-7, atol=0.05)


@pytest.mark.parametrize("module, reference", [(SameConv3d, nn.Conv3d), (SameConv2d, nn.Conv2d)])
def test_modules_keep_nn_conv_parameters_and_keys(module, reference):
    torch.manual_seed(0)
    ours = module(2, 4)
    torch.manual_seed(0)
    plain = reference(2, 4, kernel_size=3, padding=1)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
    x = torch.randn(1, 2, *(6,) * (ours.weight.ndim - 2))
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)
