# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import Warp

from monai_sacb.networks.blocks.warp import warp_with_ddf

pytestmark = pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp")


@pytest.fixture(params=[1, 3])
def threads(request):
    """One thread, and three: a single 3D sample is then cut into slabs along a first axis of 6 or 12."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.mark.parametrize("shape", [(1, 4, 6, 5, 7), (2, 3, 12, 4, 5), (1, 1, 6, 8, 4), (2, 2, 9, 7)])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_equals_monai_warp_values_and_gradients(shape, padding_mode, threads):
    generator = torch.Generator().manual_seed(0)
    spatial_dims = len(shape) - 2
    image = torch.randn(shape, generator=generator, dtype=torch.float64)
    if shape[1] > 1:  # channels-last input, as inside SACBNet
        image = image.contiguous(memory_format=torch.channels_last_3d if spatial_dims == 3 else torch.channels_last)
    ddf = torch.randn(shape[0], spatial_dims, *shape[2:], generator=generator, dtype=torch.float64) * 2
    image.requires_grad_(True)
    ddf.requires_grad_(True)
    out = warp_with_ddf(image, ddf, padding_mode)
    expected = Warp(mode="bilinear", padding_mode=padding_mode)(image, ddf)
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grad = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    grads = torch.autograd.grad(out, (image, ddf), grad)
    ref_grads = torch.autograd.grad(expected, (image, ddf), grad)
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_padding_mode_matters_and_identity_is_exact():
    image = torch.rand(1, 2, 6, 6, 6)
    zero = torch.zeros(1, 3, 6, 6, 6)
    torch.testing.assert_close(warp_with_ddf(image, zero), image, rtol=0, atol=1e-6)
    outside = torch.full((1, 3, 6, 6, 6), 10.0)
    assert warp_with_ddf(image, outside, "zeros").abs().max() == 0
    assert warp_with_ddf(image, outside, "border").abs().min() > 0


def test_bad_ddf_shape_raises_value_error():
    with pytest.raises(ValueError, match="ddf must be"):
        warp_with_ddf(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 2, 4, 4, 4))
