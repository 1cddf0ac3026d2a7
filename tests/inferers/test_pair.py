# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from unittest import mock

import pytest
import torch

from monai.networks.blocks import Warp

import monai_sacb.inferers.pair as pair_module
from monai_sacb.inferers import PairInferer, foreground_box, symmetric_ddf
from monai_sacb.networks import SACBNet, SACBNetBackbone


class _Constant(torch.nn.Module):
    """A 'network' that predicts the same ddf whatever the order of its inputs (a pure bias)."""

    def forward(self, pair):
        ddf = torch.zeros(pair.shape[0], 3, *pair.shape[2:])
        ddf[:, 0] = 1.5
        ddf[:, 2] = -0.5
        return ddf


class _Translation(torch.nn.Module):
    """Registers by a known translation: +t for (moving, fixed) = (a, b), -t for (b, a) (exact inverses)."""

    def __init__(self, reference):
        super().__init__()
        self.reference = reference

    def forward(self, pair):
        sign = torch.where(torch.isclose(pair[:, :1], self.reference).flatten(1).all(1), 1.0, -1.0)
        ddf = torch.zeros(pair.shape[0], 3, *pair.shape[2:])
        ddf[:, 1] = 2.0 * sign.view(-1, 1, 1, 1)
        return ddf


def test_outputs_equal_sacbnet_on_the_same_backbone():
    torch.manual_seed(0)
    backbone = SACBNetBackbone(base_channels=2, kmeans_iters=2).eval()
    moving, fixed = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        out = PairInferer()(torch.cat([moving, fixed], dim=1), backbone)
        warped, ddf = SACBNet(backbone=backbone)(moving, fixed)
    assert set(out) == {"warped_image", "ddf"}
    torch.testing.assert_close(out["ddf"], ddf)
    torch.testing.assert_close(out["warped_image"], warped)


def test_warped_image_is_monai_warp_of_the_moving_image_and_warped_once():
    moving, fixed = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 1, 8, 8, 8)
    with mock.patch.object(pair_module, "warp_with_ddf", wraps=pair_module.warp_with_ddf) as spy:
        out = PairInferer()(torch.cat([moving, fixed], dim=1), _Constant())
    assert spy.call_count == 1
    expected = Warp(mode="bilinear", padding_mode="border")(moving, out["ddf"])
    torch.testing.assert_close(out["warped_image"], expected)


def test_refine_gets_the_network_field_and_its_result_is_used():
    moving, fixed = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    seen = {}

    def refine(m, f, ddf):
        seen["args"] = (m, f, ddf.clone())
        return ddf + 1.0

    out = PairInferer(refine=refine)(torch.cat([moving, fixed], dim=1), _Constant())
    assert torch.equal(seen["args"][0], moving) and torch.equal(seen["args"][1], fixed)
    torch.testing.assert_close(out["ddf"], seen["args"][2] + 1.0)
    with pytest.raises(ValueError, match="refine must be callable"):
        PairInferer(refine=3)


def test_symmetric_inference_cancels_an_order_independent_bias():
    pair = torch.rand(2, 2, 8, 8, 8)
    plain = PairInferer()(pair, _Constant())["ddf"]
    symmetric = PairInferer(symmetric=True)(pair, _Constant())["ddf"]
    assert float(plain.abs().max()) == 1.5
    torch.testing.assert_close(symmetric, torch.zeros_like(symmetric), atol=1e-6, rtol=0)


def test_symmetric_inference_keeps_inverse_consistent_fields():
    moving, fixed = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    pair = torch.cat([moving, fixed], dim=1)
    out = PairInferer(symmetric=True)(pair, _Translation(moving))
    expected = torch.zeros_like(out["ddf"])
    expected[:, 1] = 2.0
    torch.testing.assert_close(out["ddf"], expected)
    torch.testing.assert_close(out["warped_image"], PairInferer()(pair, _Translation(moving))["warped_image"])


class _BothWays(_Translation):
    """_Translation with the backbone's forward_both_ways; records which entry point was used and under what."""

    def __init__(self, reference):
        super().__init__(reference)
        self.calls = []

    def forward(self, pair):
        self.calls.append(("forward", pair.shape[0], torch.is_autocast_enabled("cpu")))
        return super().forward(pair)

    def forward_both_ways(self, pair):
        self.calls.append(("both_ways", pair.shape[0], torch.is_autocast_enabled("cpu")))
        swapped = torch.cat([pair[:, 1:], pair[:, :1]], dim=1)
        return _Translation.forward(self, pair), _Translation.forward(self, swapped)


def test_symmetric_inference_uses_forward_both_ways_when_the_network_has_it():
    moving, fixed = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    pair = torch.cat([moving, fixed], dim=1)
    network = _BothWays(moving)
    out = PairInferer(symmetric=True)(pair, network)
    assert network.calls == [("both_ways", 1, False)]
    expected = PairInferer(symmetric=True)(pair, _Translation(moving))  # the batch-of-2B route
    torch.testing.assert_close(out["ddf"], expected["ddf"], rtol=0, atol=0)
    network.calls.clear()
    PairInferer()(pair, network)
    assert network.calls == [("forward", 1, False)]


def test_symmetric_inference_of_the_backbone_equals_the_batch_of_both_directions():
    torch.manual_seed(0)
    backbone = SACBNetBackbone(base_channels=2, kmeans_iters=2).eval()
    pair = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        out = PairInferer(symmetric=True)(pair, backbone)
        both = backbone(torch.cat([pair, pair.flip(1)], dim=0))
    # the same function; oneDNN's batch-size-dependent summation order leaves float32 rounding differences
    torch.testing.assert_close(out["ddf"], symmetric_ddf(both[:1], both[1:]), rtol=0, atol=1e-3)


def test_cpu_bfloat16_runs_only_the_network_under_autocast():
    moving, fixed = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    pair = torch.cat([moving, fixed], dim=1)
    network = _BothWays(moving)
    seen = {}

    def refine(m, f, ddf):
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        return ddf

    out = PairInferer(symmetric=True, refine=refine, cpu_bfloat16=True)(pair, network)
    assert network.calls == [("both_ways", 1, True)] and seen["autocast"] is False
    assert out["ddf"].dtype == torch.float32 and out["warped_image"].dtype == torch.float32
    network.calls.clear()
    PairInferer(cpu_bfloat16=False)(pair, network)
    assert network.calls == [("forward", 1, False)]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's own autocast stays in force
        PairInferer(cpu_bfloat16=False)(pair, network)
    assert network.calls[-1] == ("forward", 1, True)


def test_cpu_bfloat16_keeps_the_backbone_field_close():
    torch.manual_seed(0)
    backbone = SACBNetBackbone(base_channels=2, kmeans_iters=2).eval()
    pair = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        reference = PairInferer()(pair, backbone)["ddf"]
        low = PairInferer(cpu_bfloat16=True)(pair, backbone)["ddf"]
    assert low.dtype == torch.float32
    # bfloat16 features may move a few k-means assignments; the field stays close on average
    assert (low - reference).abs().mean() < 0.1 * reference.abs().mean()


def test_symmetric_ddf_of_exact_inverses_is_the_forward_field():
    forward = torch.zeros(1, 3, 8, 8, 8)
    forward[:, 0] = 1.0
    torch.testing.assert_close(symmetric_ddf(forward, -forward), forward)


def test_symmetric_ddf_of_equal_fields_is_zero():
    """An image registered to itself: the network's bias is the same both ways and cancels exactly."""
    import numpy as np

    from monai_sacb.transforms import random_velocity_ddf

    bias = random_velocity_ddf((24, 24, 24), ((8.0, 3.0),), rng=np.random.RandomState(1))[None]
    assert bias.norm(dim=1).max() > 1.0
    # zero up to the rounding of the sampling coordinates (0.3.0's composition at p + u_mf left ~0.5 voxel here)
    assert symmetric_ddf(bias, bias.clone()).abs().max() < 1e-5


def test_symmetric_ddf_of_smooth_inverses_is_the_forward_field():
    """A smooth invertible field and its numerical inverse: the average stays within a small fraction of a voxel
    of the forward field (the inverse is itself approximate), far closer than the first-order guess."""
    from monai_sacb.transforms import invert_ddf, random_velocity_ddf

    import numpy as np

    forward = random_velocity_ddf((24, 24, 24), ((8.0, 2.0),), rng=np.random.RandomState(0))[None]
    backward = invert_ddf(forward[0])[None]
    error = (symmetric_ddf(forward, backward) - forward).norm(dim=1)[:, 4:-4, 4:-4, 4:-4]
    size = forward.norm(dim=1)[:, 4:-4, 4:-4, 4:-4]
    first_order = (-backward - forward).norm(dim=1)[:, 4:-4, 4:-4, 4:-4]  # -u_fm taken as the inverse of u_fm
    assert size.max() > 1.0
    assert error.max() < 0.05 * size.max() and error.max() < 0.25 * first_order.max()
    # more steps do not move it: the iteration has converged
    torch.testing.assert_close(symmetric_ddf(forward, backward, 20), symmetric_ddf(forward, backward), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        symmetric_ddf(forward, backward, 0)


def test_odd_channel_count_is_refused():
    with pytest.raises(ValueError, match="even number of channels"):
        PairInferer()(torch.rand(1, 3, 8, 8, 8), _Constant())


def test_describe_names_what_the_inferer_adds():
    from monai_sacb.inferers import InstanceOptimization

    assert PairInferer().describe() == "SACB-Net"
    assert PairInferer(symmetric=True).describe("VoxelMorph") == "VoxelMorph, symmetric"
    assert PairInferer(cpu_bfloat16=True).describe() == "SACB-Net, bfloat16 on CPU"
    refined = PairInferer(symmetric=True, refine=InstanceOptimization(steps=[0, 50, 10]))
    assert refined.describe() == "SACB-Net, symmetric, instance optimisation [0, 50, 10] steps"
    assert PairInferer(refine=InstanceOptimization(steps=[0, 0, 0])).describe() == "SACB-Net"
    assert PairInferer(refine=lambda m, f, d: d).describe() == "SACB-Net, refined by function"


# --------------------------------------------------------------------------------------------------- foreground crop


def _block(shape=(64, 48, 32), low=(10, 5, 3), high=(20, 30, 9), batch=1, channels=2):
    image = torch.zeros(batch, channels, *shape)
    image[(slice(None), slice(None), *(slice(a, b) for a, b in zip(low, high)))] = 1.0
    return image


def test_foreground_box_rounds_to_multiples_of_16_around_the_foreground():
    # foreground 10..19, 5..29, 3..8; with 2 voxels of margin 8..21 (14 -> 16), 3..31 (29 -> 32), 1..10 (10 -> 16,
    # centred at -2, moved inside the image to 0)
    assert foreground_box(_block(), margin=2) == (slice(7, 23), slice(2, 34), slice(0, 16))
    assert foreground_box(_block()) == (slice(7, 23), slice(2, 34), slice(0, 16))  # margin 0: rounding alone
    # 4 voxels: 6..23 (18 -> 32, moved inside to 0), 1..33 (33 -> 48, the whole axis), 0..12 (13 -> 16)
    assert foreground_box(_block(), margin=4) == (slice(0, 32), slice(0, 48), slice(0, 16))
    # the box holds the foreground of every sample and channel
    image = _block(batch=2)
    image[1, 0, 50, 40, 20] = 3.0
    assert foreground_box(image, margin=2) == (slice(7, 55), slice(0, 48), slice(0, 32))
    # the background is each image's minimum, whatever its value (e.g. z-scored images)
    assert foreground_box(_block() * 2.0 - 0.7, margin=2) == foreground_box(_block(), margin=2)


def test_foreground_box_is_the_whole_grid_without_background():
    whole = (slice(0, 64), slice(0, 48), slice(0, 32))
    assert foreground_box(torch.rand(1, 2, 64, 48, 32)) == whole  # noise everywhere: nothing to crop
    assert foreground_box(torch.zeros(1, 2, 64, 48, 32)) == whole  # no foreground at all
    with pytest.raises(ValueError, match="margin"):
        foreground_box(torch.zeros(1, 2, 16, 16, 16), margin=-1)


def _mask_bounds(inputs, margin):
    """The foreground's bounds as foreground_box defines them, the plain way: a voxel mask and MONAI's box of it."""
    from monai.transforms.utils import generate_spatial_bounding_box

    spatial = tuple(inputs.shape[2:])
    minimum = inputs.flatten(2).amin(2).view(*inputs.shape[:2], *(1,) * len(spatial))
    mask = (inputs > minimum).flatten(0, 1).any(0, keepdim=True)
    if not bool(mask.any()):
        return tuple(slice(0, n) for n in spatial)
    lows, highs = generate_spatial_bounding_box(mask, lambda x: x, margin=margin, allow_smaller=True)
    return tuple(slice(low, high) for low, high in zip(lows, highs))


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_foreground_box_holds_exactly_the_foreground_mask(spatial_dims):
    # random blobs in random samples and channels on a per-image constant background, or noise everywhere;
    # k=1 leaves the bounds unrounded (the rounding is tested above)
    generator = torch.Generator().manual_seed(spatial_dims)

    def draw(low, high):
        return int(torch.randint(low, high, (1,), generator=generator))

    for trial in range(60):
        shape = [draw(1, 3), 2 * draw(1, 3)] + [draw(3, 40) for _ in range(spatial_dims)]
        image = torch.randn(*shape[:2], *[1] * spatial_dims, generator=generator).expand(shape).clone()
        for _ in range(draw(0, 3)):
            low = [draw(0, n) for n in shape[2:]]
            region = tuple(slice(a, a + draw(1, 6)) for a in low)
            image[(draw(0, shape[0]), draw(0, shape[1])) + region] += 0.1 + torch.rand(1, generator=generator).item()
        if trial % 7 == 0:
            image = torch.rand(shape, generator=generator)
        for margin in (0, 3):
            assert foreground_box(image, margin, k=1) == _mask_bounds(image, margin), (shape, margin)


class _Recorder(torch.nn.Module):
    """A 'network' that remembers the shapes it saw and predicts a field that varies along every axis."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, pair):
        self.shapes.append(tuple(pair.shape[2:]))
        grids = torch.meshgrid(*(torch.linspace(-1.0, 1.0, s) for s in pair.shape[2:]), indexing="ij")
        return torch.stack([0.5 * grids[0] + 0.3 * grids[2], 0.2 * grids[1], -0.4 * grids[0] * grids[1]])[None].expand(
            pair.shape[0], -1, -1, -1, -1
        )


def test_crop_foreground_registers_inside_the_box_and_extends_the_field_outside():
    inputs = _block() + 0.1 * torch.rand(1, 2, 64, 48, 32) * _block()
    net = _Recorder()
    out = PairInferer(crop_foreground=True, crop_margin=2)(inputs, net)
    assert net.shapes == [(16, 32, 16)]
    box = (slice(None), slice(None), slice(7, 23), slice(2, 34), slice(0, 16))
    inside = net(inputs[box])
    assert out["ddf"].shape == (1, 3, 64, 48, 32)
    torch.testing.assert_close(out["ddf"][box], inside)
    # outside the box the field takes its value at the nearest face of the box
    torch.testing.assert_close(out["ddf"][:, :, :7, 2:34, :16], inside[:, :, :1].expand(-1, -1, 7, -1, -1))
    torch.testing.assert_close(out["ddf"][:, :, 7:23, 34:, :16], inside[:, :, :, -1:].expand(-1, -1, -1, 14, -1))
    torch.testing.assert_close(out["ddf"][:, :, 7:23, 2:34, 16:], inside[:, :, :, :, -1:].expand(-1, -1, -1, -1, 16))
    # the moving image is warped on the whole grid
    expected = Warp(mode="bilinear", padding_mode="border")(inputs[:, :1], out["ddf"])
    torch.testing.assert_close(out["warped_image"], expected)
    # nothing to crop: the network sees the whole grid, as without the option
    net.shapes.clear()
    full = torch.rand(1, 2, 32, 32, 16)
    torch.testing.assert_close(PairInferer(crop_foreground=True)(full, net)["ddf"], PairInferer()(full, net)["ddf"])
    assert net.shapes == [(32, 32, 16), (32, 32, 16)]


def test_crop_foreground_undoes_background_padding_for_sacbnet():
    """A pair padded with background is registered exactly like the pair itself (the box is the original grid)."""
    torch.manual_seed(0)
    backbone = SACBNetBackbone(base_channels=2, kmeans_iters=2).eval()
    pair = torch.rand(1, 2, 32, 32, 16) + 0.1
    padded = torch.nn.functional.pad(pair, [16, 16, 0, 32, 16, 0])  # (48, 64, 48)
    inferer = PairInferer(symmetric=True, crop_foreground=True)
    with torch.no_grad():
        direct = PairInferer(symmetric=True)(pair, backbone)["ddf"]
        cropped = inferer(padded, backbone)["ddf"]
        uncropped = PairInferer(symmetric=True)(padded, backbone)["ddf"]
    original = (slice(None), slice(None), slice(16, 48), slice(0, 32), slice(16, 32))
    torch.testing.assert_close(cropped[original], direct)
    assert not torch.allclose(uncropped[original], direct, atol=1e-3)  # the background changes the network's field
    assert inferer.describe() == "SACB-Net, symmetric, cropped to the foreground"
    with pytest.raises(ValueError, match="crop_margin"):
        PairInferer(crop_margin=-2)
