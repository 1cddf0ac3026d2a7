# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PairDDFWrapper"]


class PairDDFWrapper(nn.Module):
    """
    Give any two-input registration network the bundle's single-input form: ``forward(pair) -> ddf``, where
    ``pair`` is ``cat([moving, fixed], dim=1)`` of shape (B, 2C, *S) and ``ddf`` is (B, spatial_dims, *S) in voxels.

    The wrapped network is called as ``network(moving, fixed)`` and may return the ddf or a ``(warped, ddf)`` pair,
    like :py:class:`monai.networks.nets.VoxelMorph`. This is how a peer network is trained and evaluated by the
    same bundle configs as SACBNet, e.g. ``--network_def "{'_target_': 'monai_sacb.networks.PairDDFWrapper',
    'network': {'_target_': 'monai.networks.nets.VoxelMorph'}}"``.

    Args:
        network: the registration network.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        """(B, 2C, *S) [moving, fixed] -> ddf (B, spatial_dims, *S) in voxels."""
        if pair.shape[1] % 2:
            raise ValueError(
                f"expecting cat([moving, fixed], dim=1) with an even number of channels, got shape {tuple(pair.shape)}."
            )
        channels = pair.shape[1] // 2
        out = self.network(pair[:, :channels], pair[:, channels:])
        return out[1] if isinstance(out, (tuple, list)) else out
