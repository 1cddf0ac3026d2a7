# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import copy

import pytest
import torch

from monai_sacb.networks.blocks import AvgPool2x, PyramidEncoder, conv_norm_act


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_conv_norm_act_float32_matches_float64_on_offset_features(memory_format):
    """Features whose mean is several standard deviations from zero (as after LeakyReLU) must still be
    normalised accurately in float32: a one-pass variance loses ~1e-3 here, which k-means then amplifies."""
    torch.manual_seed(0)
    block = conv_norm_act(3, 8, 8).to(memory_format=memory_format)
    with torch.no_grad():
        block[0].bias.fill_(3.0)  # a large per-channel offset before the normalisation
    x = (torch.rand(2, 8, 24, 20, 28) + 2.0).contiguous(memory_format=memory_format)
    with torch.no_grad():
        out32 = block(x)
        out64 = copy.deepcopy(block).double()(x.double())
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=2e-5)


def test_conv_norm_act_normalises_each_sample_and_channel():
    torch.manual_seed(1)
    block = conv_norm_act(3, 2, 4, negative_slope=1.0)  # slope 1: the activation is the identity
    with torch.no_grad():
        out = block(torch.randn(3, 2, 8, 8, 8) * 5 + 7)
    flat = out.flatten(2)
    torch.testing.assert_close(flat.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(-1, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)


def test_pyramid_encoder_shapes_and_widths():
    encoder = PyramidEncoder(spatial_dims=2, in_channels=1)
    with torch.no_grad():
        features = encoder(torch.rand(2, 1, 32, 48))
    assert [tuple(f.shape) for f in features] == [
        (2, 8, 32, 48),
        (2, 16, 16, 24),
        (2, 32, 8, 12),
        (2, 64, 4, 6),
        (2, 64, 2, 3),
    ]


@pytest.mark.parametrize("shape", [(2, 8, 6, 4, 10), (1, 3, 7, 5, 9), (2, 4, 6, 8), (1, 2, 5, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_avg_pool_2x_equals_avg_pool_and_keeps_layout(shape, channels_last):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    layout = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
    if channels_last:
        x = x.contiguous(memory_format=layout)
    x.requires_grad_(True)
    pool = torch.nn.functional.avg_pool3d if x.ndim == 5 else torch.nn.functional.avg_pool2d
    out, expected = AvgPool2x()(x), pool(x, 2)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    if channels_last:
        assert out.is_contiguous(memory_format=layout)
    grad = torch.randn(out.shape, dtype=out.dtype)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


@pytest.mark.parametrize("shape", [(2, 16, 10, 8, 12), (1, 3, 7, 5, 9), (2, 4, 2, 3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_bfloat16_pooling_is_the_rounded_exact_mean(shape, channels_last, monkeypatch):
    """bfloat16 features without gradient where numba is installed: the exact mean of each 2x2x2 cell rounded once
    to bfloat16 (odd sizes drop their last row, as avg_pool3d), in x's memory format. Float32 keeps the eager code."""
    pytest.importorskip("numba")
    from monai_sacb.networks.blocks import encoder as encoder_module

    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 3 + 1).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        out = AvgPool2x()(x)
        assert encoder_module._compiled_average_pool(x.float()) is None  # float32 must not depend on numba
        assert encoder_module._compiled_average_pool(x[..., 0]) is None  # 2D
    assert encoder_module._compiled_average_pool(x.clone().requires_grad_()) is None
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=layout)  # x's memory format, as eager
    assert torch.equal(out, torch.nn.functional.avg_pool3d(x.double(), 2).bfloat16())
    monkeypatch.setenv("MONAI_SACB_NUMBA", "0")
    eager = AvgPool2x()(x)  # three bfloat16 roundings: close, often not the same
    torch.testing.assert_close(eager.float(), out.float(), rtol=2**-6, atol=1e-2)
