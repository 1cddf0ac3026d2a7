# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch

from monai_sacb.networks.blocks import PyramidEncoder, conv_norm_act
from monai_sacb.networks.blocks import pair_stacking
from monai_sacb.networks.blocks.pair_stacking import (
    block_diagonal,
    stack_pair,
    stacked_conv_norm_act,
    unstack_pair,
    use_stacked_pair,
)
from monai_sacb.networks.utils import cpu_bfloat16_is_fast

CHANNELS_LAST = torch.channels_last_3d


def test_stack_and_unstack_are_inverse_and_channels_last():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 3, 4, 5, 6, generator=generator), torch.randn(2, 3, 4, 5, 6, generator=generator)
    stacked = stack_pair(first, second)
    assert stacked.shape == (2, 6, 4, 5, 6) and stacked.is_contiguous(memory_format=CHANNELS_LAST)
    assert torch.equal(stacked[:, :3], first) and torch.equal(stacked[:, 3:], second)
    batch = unstack_pair(stacked)
    assert batch.is_contiguous(memory_format=CHANNELS_LAST)
    assert torch.equal(batch, torch.cat([first, second]))


def test_block_diagonal_weight():
    weight = torch.randn(4, 3, 3, 3, 3)
    blocks = block_diagonal(weight)
    assert blocks.shape == (8, 6, 3, 3, 3)
    assert torch.equal(blocks[:4, :3], weight) and torch.equal(blocks[4:, 3:], weight)
    assert not blocks[:4, 3:].any() and not blocks[4:, :3].any()


@pytest.mark.parametrize("in_channels, out_channels", [(1, 4), (8, 8)])
def test_stacked_layer_equals_the_layer_on_the_batch(in_channels, out_channels):
    """Per channel norms make the stacked pair's normalisation each image's own: the same layer, to rounding."""
    torch.manual_seed(1)
    layer = conv_norm_act(3, in_channels, out_channels).to(memory_format=CHANNELS_LAST)
    generator = torch.Generator().manual_seed(2)
    first = torch.randn(2, in_channels, 8, 10, 12, generator=generator)
    second = 3 * torch.randn(2, in_channels, 8, 10, 12, generator=generator) + 1  # other statistics
    with torch.no_grad():
        stacked = stacked_conv_norm_act(layer, stack_pair(first, second))
        expected = layer(torch.cat([first, second]).contiguous(memory_format=CHANNELS_LAST))
    assert stacked.shape == (2, 2 * out_channels, 8, 10, 12)
    torch.testing.assert_close(unstack_pair(stacked), expected, rtol=1e-5, atol=1e-5)


def test_encoder_on_the_stacked_pair_equals_the_encoder_on_the_batch():
    torch.manual_seed(3)
    encoder = PyramidEncoder(3, 1).to(memory_format=CHANNELS_LAST)
    generator = torch.Generator().manual_seed(4)
    fixed, moving = torch.rand(1, 1, 32, 16, 48, generator=generator), torch.rand(1, 1, 32, 16, 48, generator=generator)
    with torch.no_grad():
        stacked = encoder.forward_stacked_pair(stack_pair(fixed, moving))
        expected = encoder(torch.cat([fixed, moving]).contiguous(memory_format=CHANNELS_LAST))
    assert stacked[0].shape == (1, 16, 32, 16, 48)  # [fixed | moving] at full resolution
    torch.testing.assert_close(unstack_pair(stacked[0]), expected[0], rtol=1e-5, atol=1e-5)
    for level, (features, reference) in enumerate(zip(stacked[1:], expected[1:]), start=1):
        assert features.shape == reference.shape == (2, encoder.levels[level][-1].conv.out_channels, *reference.shape[2:])
        torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-4)


def test_use_stacked_pair_only_in_bfloat16_cpu_inference_with_amx(monkeypatch):
    x = torch.zeros(1, 1, 2, 2, 2)
    monkeypatch.setattr(pair_stacking, "cpu_bfloat16_is_fast", lambda: True)
    with torch.no_grad():
        assert not use_stacked_pair(x)  # float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert use_stacked_pair(x)
            assert not use_stacked_pair(x[..., 0])  # 2D
        with torch.autocast("cpu", dtype=torch.float16):
            assert not use_stacked_pair(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_stacked_pair(x)  # autograd
    monkeypatch.setattr(pair_stacking, "cpu_bfloat16_is_fast", lambda: False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_stacked_pair(x)  # no AMX: the zero blocks would cost their arithmetic


@pytest.mark.skipif(not cpu_bfloat16_is_fast(), reason="needs a CPU with AMX and oneDNN bfloat16")
def test_stacked_layer_in_bfloat16_agrees_with_the_batch_to_bfloat16_rounding():
    torch.manual_seed(5)
    layer = conv_norm_act(3, 8, 8).to(memory_format=CHANNELS_LAST)
    generator = torch.Generator().manual_seed(6)
    first, second = torch.randn(1, 8, 16, 16, 16, generator=generator), torch.randn(1, 8, 16, 16, 16, generator=generator)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        stacked = stacked_conv_norm_act(layer, stack_pair(first, second).bfloat16())
        expected = layer(torch.cat([first, second]).bfloat16().contiguous(memory_format=CHANNELS_LAST))
    assert stacked.dtype == expected.dtype == torch.bfloat16
    difference = (unstack_pair(stacked).float() - expected.float()).abs()
    assert difference.max() <= 0.05 and difference.mean() < 1e-3  # a few values one bfloat16 step apart
