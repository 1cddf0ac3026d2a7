# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import VoxelMorph

from monai_sacb.networks import PairDDFWrapper, SACBNet, SACBNetBackbone


def test_wrapped_voxelmorph_returns_its_ddf():
    torch.manual_seed(0)
    net = VoxelMorph(spatial_dims=3).eval()
    moving, fixed = torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected = net(moving, fixed)[1]
        ddf = PairDDFWrapper(net)(torch.cat([moving, fixed], dim=1))
    assert torch.equal(ddf, expected)


def test_wrapped_sacbnet_equals_its_backbone():
    torch.manual_seed(0)
    net = SACBNet(spatial_dims=2, kmeans_iters=2).eval()
    single = SACBNetBackbone(spatial_dims=2, kmeans_iters=2).eval()
    single.load_state_dict(net.backbone.state_dict())
    pair = torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(PairDDFWrapper(net)(pair), single(pair))


def test_a_network_returning_only_the_ddf_and_odd_channels():
    wrapper = PairDDFWrapper(lambda_net := _Difference())
    pair = torch.rand(1, 4, 8, 8)
    assert torch.equal(wrapper(pair), pair[:, :2] - pair[:, 2:])
    assert lambda_net.calls == 1
    with pytest.raises(ValueError, match="even number of channels"):
        wrapper(torch.rand(1, 3, 8, 8))


class _Difference(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, moving, fixed):
        self.calls += 1
        return moving - fixed
