# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import warnings
from unittest import mock

import pytest
import torch
from monai.networks.blocks import Warp

from monai_sacb.networks import SACBNet, SACBNetBackbone
from monai_sacb.networks.blocks import warp_with_ddf
from monai_sacb.networks.nets import sacbnet as sacbnet_module
from monai_sacb.networks.utils import cpu_bfloat16_is_fast

pytestmark = pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp")

DEFAULT_PARAMETERS = 1_105_591


def _count(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _net(seed=0, **kwargs):
    torch.manual_seed(seed)
    return SACBNet(**kwargs)


# ---------------------------------------------------------------------------------------------------- parameters


def test_default_parameter_count():
    assert _count(SACBNet()) == DEFAULT_PARAMETERS
    assert _count(SACBNetBackbone()) == DEFAULT_PARAMETERS
    assert sum(p.numel() for p in SACBNet().parameters()) == DEFAULT_PARAMETERS  # nothing frozen


@pytest.mark.parametrize("num_clusters", [1, 3, 5, 11])
def test_num_clusters_does_not_change_parameter_count(num_clusters):
    assert _count(SACBNet(num_clusters=num_clusters)) == DEFAULT_PARAMETERS


def test_2d_parameter_count_does_not_depend_on_num_clusters():
    counts = {k: _count(SACBNet(spatial_dims=2, num_clusters=k)) for k in (2, 7, 11)}
    assert len(set(counts.values())) == 1, counts
    count_2d = counts[7]
    # 3x3 kernels instead of 3x3x3: fewer parameters than 3D, but the MLPs keep it well above zero
    assert 0 < count_2d < DEFAULT_PARAMETERS
    assert count_2d > 0.3 * DEFAULT_PARAMETERS


def test_bad_spatial_dims():
    with pytest.raises(ValueError, match="spatial_dims"):
        SACBNet(spatial_dims=4)


# -------------------------------------------------------------------------------------------------------- shapes

SHAPE_CASES = [
    # spatial_dims, batch, in_channels, spatial shape, num_clusters
    (3, 1, 1, (32, 48, 16), 3),
    (3, 2, 2, (32, 48, 16), 5),
    (3, 2, 1, (32, 32, 32), 7),
    (3, 1, 2, (32, 32, 32), 7),
    (2, 1, 2, (32, 48), 3),
    (2, 2, 1, (32, 48), 6),
    (2, 2, 2, (64, 48), 7),
    (2, 1, 1, (64, 48), 7),
]


@pytest.mark.parametrize("spatial_dims, batch, in_channels, spatial, num_clusters", SHAPE_CASES)
def test_output_shapes(spatial_dims, batch, in_channels, spatial, num_clusters, image_pair):
    net = _net(spatial_dims=spatial_dims, in_channels=in_channels, num_clusters=num_clusters)
    moving, fixed = image_pair((batch, in_channels, *spatial))
    with torch.no_grad():
        warped, ddf = net(moving, fixed)
    assert warped.shape == (batch, in_channels, *spatial)
    assert ddf.shape == (batch, spatial_dims, *spatial)
    assert warped.dtype == ddf.dtype == torch.float32
    assert torch.isfinite(warped).all() and torch.isfinite(ddf).all()
    assert ddf.abs().max() > 0


@pytest.mark.parametrize(
    "spatial_dims, batch, in_channels, spatial", [(3, 2, 2, (32, 16, 32)), (3, 1, 4, (16, 32, 16)), (2, 2, 4, (32, 48))]
)
def test_backbone_returns_only_the_ddf(spatial_dims, batch, in_channels, spatial, image_pair):
    torch.manual_seed(0)
    backbone = SACBNetBackbone(spatial_dims=spatial_dims, in_channels=in_channels, num_clusters=3, kmeans_iters=2)
    moving, fixed = image_pair((batch, in_channels // 2, *spatial))
    with torch.no_grad():
        ddf = backbone(torch.cat([moving, fixed], dim=1))
    assert isinstance(ddf, torch.Tensor)
    assert ddf.shape == (batch, spatial_dims, *spatial) and ddf.dtype == torch.float32
    assert torch.isfinite(ddf).all() and ddf.abs().max() > 0


@pytest.mark.parametrize("spatial_dims, spatial", [(3, (32, 48, 16)), (2, (32, 48))])
def test_default_config_runs_on_small_non_cubic_inputs(spatial_dims, spatial, image_pair):
    net = _net(spatial_dims=spatial_dims)
    moving, fixed = image_pair((1, 1, *spatial))
    with torch.no_grad():
        warped, ddf = net(moving, fixed)
    assert ddf.shape == (1, spatial_dims, *spatial)


def test_batch_samples_are_independent(image_pair):
    net = _net(num_clusters=3)
    moving, fixed = image_pair((2, 1, 32, 48, 16), seed=1)
    with torch.no_grad():
        _, ddf = net(moving, fixed)
        _, ddf_second = net(moving[1:], fixed[1:])
    torch.testing.assert_close(ddf[1:], ddf_second, rtol=1e-4, atol=1e-4)


def test_forward_both_ways_equals_two_forward_passes(image_pair):
    backbone = _net(num_clusters=3).backbone.eval()
    moving, fixed = image_pair((2, 1, 32, 48, 16), seed=3)
    with torch.no_grad():
        forward, backward = backbone.forward_both_ways(torch.cat([moving, fixed], dim=1))
        expected_forward = backbone(torch.cat([moving, fixed], dim=1))
        expected_backward = backbone(torch.cat([fixed, moving], dim=1))
    torch.testing.assert_close(forward, expected_forward, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backward, expected_backward, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(forward, backward)
    with pytest.raises(ValueError, match="divisible by 16"):
        backbone.forward_both_ways(torch.rand(1, 2, 20, 16, 16))


# --------------------------------------------------------------------------------------------------- determinism


def test_same_input_same_weights_bitwise_same_output(image_pair):
    net = _net(num_clusters=7)
    moving, fixed = image_pair((2, 1, 32, 32, 32), seed=2)
    with torch.no_grad():
        first = net(moving, fixed)
        second = net(moving.clone(), fixed.clone())
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
    # a second network with the same weights (e.g. restored from a checkpoint) agrees bitwise too
    other = SACBNet(num_clusters=7)
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        third = other(moving, fixed)
    assert torch.equal(first[1], third[1])


# ------------------------------------------------------------------------------------------ subtract_self_estimate


def _reference_ddf(backbone, moving, fixed, subtract_self, weight=1.0):
    """The decoder written out plainly (no in-place reuse, one head call per estimate), for comparison."""
    from torch.nn import functional as F

    from monai_sacb.networks.blocks import similarity_matching_flow

    batch = moving.shape[0]
    pyramid = backbone.encoder(torch.cat([fixed, moving], dim=0))
    mode = "trilinear" if moving.ndim == 5 else "bilinear"
    flow = None
    for level in range(len(pyramid) - 1, 0, -1):
        features = pyramid[level]
        if flow is not None:
            features = torch.cat([features[:batch], warp_with_ddf(features[batch:], flow)], dim=0)
        features = backbone.sac_blocks[level - 1](features)
        increment = similarity_matching_flow(features[batch:], features[:batch])
        if subtract_self:
            increment = increment - weight * similarity_matching_flow(features[:batch], features[:batch])
        flow = increment if flow is None else warp_with_ddf(flow, increment) + increment
        flow = F.interpolate(2 * flow, scale_factor=2, mode=mode, align_corners=True)
    features = torch.cat([pyramid[0][:batch], warp_with_ddf(pyramid[0][batch:], flow)], dim=0)
    features = backbone.refine(features)
    increment = backbone.head(torch.cat([features[:batch], features[batch:]], dim=1))
    if subtract_self:
        increment = increment - weight * backbone.head(torch.cat([features[:batch], features[:batch]], dim=1))
    return warp_with_ddf(flow, increment) + increment


@pytest.mark.parametrize("subtract_self", [False, True])
@pytest.mark.parametrize("spatial_dims, spatial", [(3, (32, 48, 16)), (2, (64, 48))])
def test_ddf_equals_the_plain_reference(subtract_self, spatial_dims, spatial, image_pair):
    net = _net(spatial_dims=spatial_dims, num_clusters=3, subtract_self_estimate=subtract_self).eval()
    moving, fixed = image_pair((2, 1, *spatial), seed=21)
    with torch.no_grad():
        _, ddf = net(moving, fixed)
        expected = _reference_ddf(net.backbone, moving, fixed, subtract_self)
    torch.testing.assert_close(ddf, expected, rtol=1e-4, atol=1e-4)
    assert expected.abs().max() > 0.1  # a field that registers something, not a trivial zero


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_self_estimate_weight_scales_the_subtraction_in_training_mode_only(weight, image_pair):
    net = _net(num_clusters=3, subtract_self_estimate=True)
    backbone = net.backbone
    moving, fixed = image_pair((1, 1, 32, 48, 16), seed=24)
    pair = torch.cat([moving, fixed], dim=1)
    backbone.self_estimate_weight = weight
    with torch.no_grad():
        backbone.train()
        trained = backbone(pair)
        expected = _reference_ddf(backbone, moving, fixed, True, weight)
        backbone.eval()
        evaluated = backbone(pair)
        whole = _reference_ddf(backbone, moving, fixed, True)
        plain = _reference_ddf(backbone, moving, fixed, False)
    torch.testing.assert_close(trained, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(evaluated, whole, rtol=1e-4, atol=1e-4)  # eval mode: always the whole estimate
    if weight == 0.0:
        torch.testing.assert_close(trained, plain, rtol=1e-4, atol=1e-4)  # the paper's network
    assert (trained - evaluated).abs().max() > 0.05


@pytest.mark.parametrize("spatial_dims, spatial", [(3, (32, 48, 16)), (2, (64, 48))])
def test_subtract_self_estimate_keeps_an_image_registered_to_itself_in_place(spatial_dims, spatial, image_pair):
    torch.manual_seed(22)
    plain = SACBNetBackbone(spatial_dims=spatial_dims, num_clusters=3).eval()
    referenced = SACBNetBackbone(spatial_dims=spatial_dims, num_clusters=3, subtract_self_estimate=True).eval()
    referenced.load_state_dict(plain.state_dict())  # no parameters of its own: the same state dict
    image, other = image_pair((2, 1, *spatial), seed=22)
    with torch.no_grad():
        assert plain(torch.cat([image, image], dim=1)).abs().max() > 0.5  # the plain matching's bias
        assert referenced(torch.cat([image, image], dim=1)).abs().max() < 1e-4
        # bfloat16 rounds the self estimate's folded first convolution differently from the pair's (1/128 near 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert referenced(torch.cat([image, image], dim=1)).abs().max() < 0.05
        # and it still registers different images
        assert referenced(torch.cat([other, image], dim=1)).abs().mean() > 0.05
    assert _count(referenced) == _count(plain)


@pytest.mark.parametrize("subtract_self, training", [(False, False), (True, False), (True, True)])
def test_full_resolution_on_the_stacked_pair_gives_the_batch_ddf(subtract_self, training, image_pair, monkeypatch):
    """The layout of bfloat16 CPU inference with AMX (pair_stacking.py), taken here in float32 where it computes the
    same function as the batch layout up to rounding: both directions, the self-estimate and its training weight
    (the head's last convolution then holds [w, -weight * w] and the bias (1 - weight) * b)."""
    net = _net(num_clusters=3, subtract_self_estimate=subtract_self).backbone.train(training)
    net.self_estimate_weight = 0.3
    moving, fixed = image_pair((2, 1, 32, 48, 16), seed=25)
    pair = torch.cat([moving, fixed], dim=1)
    with torch.no_grad():
        expected, expected_back = net(pair), net.forward_both_ways(pair)[1]
        calls = []
        monkeypatch.setattr(sacbnet_module, "use_stacked_pair", lambda x: calls.append(x.shape) or True)
        stacked, stacked_back = net(pair), net.forward_both_ways(pair)[1]
    assert len(calls) == 2
    for result, reference in ((stacked, expected), (stacked_back, expected_back)):
        # float32 sums in another order: a few voxels 1e-4 apart, the k-means assignments unchanged
        torch.testing.assert_close(result, reference, rtol=1e-3, atol=1e-3)
        assert (result - reference).abs().mean() < 2e-5
    assert expected.abs().max() > 0.1


@pytest.mark.skipif(not cpu_bfloat16_is_fast(), reason="needs a CPU with AMX and oneDNN bfloat16")
def test_bfloat16_cpu_inference_runs_the_stacked_pair_and_agrees_with_the_batch(bundle_state_dict, monkeypatch):
    net = SACBNetBackbone(subtract_self_estimate=True).eval()
    net.load_state_dict(bundle_state_dict)
    moving, fixed = _smooth_pair((48, 64, 48))
    pair = torch.cat([moving, fixed], dim=1)
    calls = []
    stacked_encoder = net.encoder.forward_stacked_pair
    monkeypatch.setattr(net.encoder, "forward_stacked_pair", lambda x: calls.append(x.shape) or stacked_encoder(x))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stacked = net(pair)
            monkeypatch.setattr(sacbnet_module, "use_stacked_pair", lambda x: False)
            batch = net(pair)
        float32 = net(pair)
    assert calls == [(1, 2, 48, 64, 48)]
    # the two layouts differ by bfloat16 rounding: about as much as bfloat16 differs from float32
    rounding = (batch - float32).abs().mean()
    assert (stacked - batch).abs().mean() < 2 * rounding < 0.2 * float32.abs().mean()
    assert (stacked - float32).abs().mean() < 2 * rounding


@pytest.mark.parametrize("shape", [(1, 3, 5, 6, 5), (2, 3, 1, 4, 3), (1, 3, 20, 24, 20)])
def test_flow_upsampling_of_bfloat16_inference_is_pytorchs(shape, monkeypatch):
    """Under CPU bfloat16 autocast (no gradient, numba installed) the float32 flows are upsampled by a compiled
    kernel: F.interpolate's values (its fused multiply-adds included: the same bits on the CPUs seen); float32
    inference keeps F.interpolate itself."""
    pytest.importorskip("numba")
    from monai_sacb.networks.blocks import numba_kernels

    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    calls = []
    original = numba_kernels.float32_upsample_twice
    monkeypatch.setattr(numba_kernels, "float32_upsample_twice", lambda *a: calls.append(1) or original(*a))
    net = SACBNetBackbone()
    flow = torch.randn(shape, generator=torch.Generator().manual_seed(4)) * 3
    expected = torch.nn.functional.interpolate(2 * flow, scale_factor=2, mode="trilinear", align_corners=True)
    with torch.no_grad():
        assert torch.equal(net._upsample(flow), expected) and not calls
        with torch.autocast("cpu", dtype=torch.bfloat16):
            upsampled = net._upsample(flow)
    assert calls == [1] and upsampled.dtype == torch.float32
    torch.testing.assert_close(upsampled, expected, rtol=3e-7, atol=1e-6)  # a few float32 steps at most
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net._upsample(flow.requires_grad_())  # autograd: F.interpolate
    assert calls == [1]


@pytest.mark.parametrize("name", ["subtract_self_estimate", "allow_nonfinite"])
def test_flags_refuse_strings(name):
    with pytest.raises(ValueError, match=f"network_def#{name} False"):
        SACBNetBackbone(**{name: "false"})  # what a command line's lower-case false arrives as
    assert getattr(SACBNetBackbone(**{name: True}), name) is True


def test_subtract_self_estimate_both_ways_and_gradients(image_pair):
    net = _net(num_clusters=3, subtract_self_estimate=True)
    moving, fixed = image_pair((1, 1, 32, 48, 16), seed=23)
    backbone = net.backbone
    with torch.no_grad():
        forward, backward = backbone.forward_both_ways(torch.cat([moving, fixed], dim=1))
        torch.testing.assert_close(forward, backbone(torch.cat([moving, fixed], dim=1)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(backward, backbone(torch.cat([fixed, moving], dim=1)), rtol=1e-5, atol=1e-5)
    warped, ddf = net(moving, fixed)
    ((warped - fixed).square().mean() + 0.1 * ddf.square().mean()).backward()
    # the last convolution's bias adds the same to both head estimates and cancels in their difference: its
    # gradient is zero up to rounding; every other parameter gets one
    largest = {n: 0.0 if p.grad is None else float(p.grad.abs().max()) for n, p in net.named_parameters()}
    assert largest.pop("backbone.head.2.bias") < 1e-6 * max(largest.values())
    missing = [n for n, value in largest.items() if not value > 0]
    assert not missing, f"parameters without a gradient: {missing}"


# ----------------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("spatial_dims, spatial", [(3, (32, 32, 32)), (2, (64, 48))])
def test_gradients_reach_every_parameter(spatial_dims, spatial, image_pair):
    net = _net(spatial_dims=spatial_dims)
    moving, fixed = image_pair((2, 1, *spatial), seed=3)
    warped, ddf = net(moving, fixed)
    smoothness = sum(ddf.diff(dim=d).square().mean() for d in range(2, ddf.ndim))
    loss = (warped - fixed).square().mean() + 0.1 * smoothness
    loss.backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    not_finite = [n for n, p in net.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"parameters with non-finite gradients: {not_finite}"
    zero = [n for n, p in net.named_parameters() if not (p.grad.abs().max() > 0)]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


def test_input_gradients(image_pair):
    net = _net(num_clusters=3)
    moving, fixed = image_pair((1, 1, 32, 48, 16), seed=4)
    moving.requires_grad_(True)
    fixed.requires_grad_(True)
    warped, ddf = net(moving, fixed)
    (warped.mean() + ddf.square().mean()).backward()
    assert moving.grad.abs().max() > 0 and fixed.grad.abs().max() > 0


# ---------------------------------------------------------------------------------------------------------- warp


@pytest.mark.parametrize("padding_mode", [None, "border", "zeros"])
def test_warped_is_monai_warp_of_moving(padding_mode, image_pair):
    kwargs = {} if padding_mode is None else {"warp_padding_mode": padding_mode}
    net = _net(num_clusters=3, **kwargs)
    moving, fixed = image_pair((2, 1, 32, 48, 16), seed=5)
    with torch.no_grad():
        warped, ddf = net(moving, fixed)
    expected = Warp(mode="bilinear", padding_mode=padding_mode or "border")(moving, ddf)
    torch.testing.assert_close(warped, expected, rtol=1e-6, atol=1e-6)
    # the ddf reaches outside the grid, so the padding mode matters and the check above has teeth
    other_mode = "border" if padding_mode == "zeros" else "zeros"
    other = Warp(mode="bilinear", padding_mode=other_mode)
    assert (other(moving, ddf) - warped).abs().max() > 1e-3


def test_warped_is_monai_warp_2d(image_pair):
    net = _net(spatial_dims=2, in_channels=2, warp_padding_mode="zeros")
    moving, fixed = image_pair((2, 2, 64, 48), seed=6)
    with torch.no_grad():
        warped, ddf = net(moving, fixed)
    torch.testing.assert_close(warped, Warp(mode="bilinear", padding_mode="zeros")(moving, ddf), rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------------------------------- errors


def test_size_not_divisible_by_16(image_pair):
    net = SACBNet()
    moving, fixed = image_pair((1, 1, 32, 32, 24))
    with pytest.raises(ValueError, match="divisible by 16") as info:
        net(moving, fixed)
    assert "DivisiblePad" in str(info.value)  # says how to fix it
    with pytest.raises(ValueError, match="divisible by 16"):
        SACBNet(spatial_dims=2)(*image_pair((1, 1, 40, 32)))


def test_moving_fixed_shape_mismatch(image_pair):
    net = SACBNet()
    moving, _ = image_pair((1, 1, 32, 32, 32))
    _, fixed = image_pair((1, 1, 32, 32, 48))
    with pytest.raises(ValueError, match="same shape") as info:
        net(moving, fixed)
    assert "resample" in str(info.value).lower()
    with pytest.raises(ValueError, match="same shape"):
        net(moving, torch.cat([fixed[..., :32]] * 2))  # batch sizes differ


@pytest.mark.parametrize("which", ["moving", "fixed"])
def test_wrong_channel_count(which):
    net = SACBNet(in_channels=1)
    good = torch.rand(1, 1, 32, 32, 32)
    bad = torch.rand(1, 2, 32, 32, 32)
    args = (bad, good) if which == "moving" else (good, bad)
    with pytest.raises(ValueError, match=which) as info:
        net(*args)
    assert "in_channels=1" in str(info.value) and "(B, 1, H, W, D)" in str(info.value)


def test_wrong_ndim():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W, D\)"):
        SACBNet()(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        SACBNet(spatial_dims=2)(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32))


def test_non_finite_input_is_refused_with_a_count(image_pair):
    net = _net(num_clusters=3, kmeans_iters=2)
    moving, fixed = image_pair((1, 1, 32, 32, 32), seed=20)
    moving[0, 0, 3, 4, 5] = float("nan")
    with pytest.raises(ValueError, match=r"moving holds 1 non-finite values \(1 NaN, 0 infinite") as info:
        net(moving, fixed)
    assert "allow_nonfinite=True" in str(info.value) and "nan_to_num" in str(info.value)
    fixed[0, 0, :2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"fixed holds 2 non-finite values \(0 NaN, 2 infinite"):
        net(torch.nan_to_num(moving), fixed)
    with pytest.raises(ValueError, match=r"moving holds 1 non-finite"):  # the backbone checks the same
        SACBNetBackbone(num_clusters=3, kmeans_iters=2)(torch.cat([moving, fixed], dim=1))
    # float64 values beyond the float32 range become infinite in the network's dtype: refused too
    big = torch.full((1, 1, 32, 32, 32), 1e300, dtype=torch.float64)
    with pytest.raises(ValueError, match="32768 non-finite values"):
        net(big, big)
    # the option lets them through (the caller then owns the NaN output)
    lenient = _net(num_clusters=3, kmeans_iters=2, allow_nonfinite=True)
    with torch.no_grad():
        _, ddf = lenient(moving, torch.nan_to_num(fixed))
    assert torch.isnan(ddf).float().mean() > 0.9  # one NaN voxel spoils (nearly) the whole field


def test_empty_batch_is_refused(image_pair):
    moving, fixed = image_pair((0, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="empty batch"):
        SACBNet(num_clusters=3)(moving, fixed)
    with pytest.raises(ValueError, match="empty batch"):
        SACBNetBackbone(num_clusters=3)(torch.cat([moving, fixed], dim=1))


@pytest.mark.parametrize(
    "moving_dtype, fixed_dtype",
    [(torch.int16, torch.float32), (torch.float16, torch.float32), (torch.float64, torch.float64),
     (torch.float32, torch.float64), (torch.uint8, torch.int32), (torch.bool, torch.float16)],
)
def test_input_dtypes_are_converted_to_the_weights_dtype(moving_dtype, fixed_dtype):
    net = _net(num_clusters=3, kmeans_iters=2)
    generator = torch.Generator().manual_seed(21)
    # values exactly representable in every dtype of the test (small integers; 0/1 for bool)
    top = 2 if torch.bool in (moving_dtype, fixed_dtype) else 100
    moving = torch.randint(0, top, (1, 1, 32, 32, 32), generator=generator)
    fixed = torch.randint(0, top, (1, 1, 32, 32, 32), generator=generator)
    with torch.no_grad():
        ref_warped, ref_ddf = net(moving.float(), fixed.float())
        warped, ddf = net(moving.to(moving_dtype), fixed.to(fixed_dtype))
    assert warped.dtype == ddf.dtype == torch.float32
    assert torch.equal(ddf, ref_ddf) and torch.equal(warped, ref_warped)


def test_complex_input_is_refused(image_pair):
    moving, fixed = image_pair((1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="real-valued.*complex64"):
        SACBNet(num_clusters=3)(moving.to(torch.complex64), fixed)


# ----------------------------------------------------------------------------------------- backbone and wrapper


def test_backbone_keys_are_the_wrappers_under_backbone(image_pair):
    net = _net(num_clusters=3, in_channels=2)
    backbone = SACBNetBackbone(num_clusters=3, in_channels=4)
    assert list(net.state_dict()) == [f"backbone.{key}" for key in backbone.state_dict()]
    assert {key.split(".")[0] for key in backbone.state_dict()} == {"encoder", "sac_blocks", "refine", "head"}
    backbone.load_state_dict(net.backbone.state_dict())  # strict
    moving, fixed = image_pair((2, 2, 32, 48, 16), seed=7)
    with torch.no_grad():
        expected = net(moving, fixed)[1]
        ddf = backbone(torch.cat([moving, fixed], dim=1))
    assert ddf.shape == (2, 3, 32, 48, 16)
    assert torch.equal(ddf, expected)


def test_bundle_checkpoint_loads_into_the_backbone_and_the_wrapper(bundle_state_dict):
    state_dict = bundle_state_dict
    backbone = SACBNetBackbone()
    backbone.load_state_dict(state_dict)  # strict: the shipped plain state dict has exactly these keys
    net = SACBNet()
    net.backbone.load_state_dict(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(net.state_dict()[f"backbone.{key}"], value)


def test_warped_is_warp_with_ddf_of_the_backbones_ddf(image_pair):
    net = _net(num_clusters=3, kmeans_iters=2)
    moving, fixed = image_pair((1, 1, 32, 32, 32), seed=14)
    with torch.no_grad():
        warped, ddf = net(moving, fixed)
        expected_ddf = net.backbone(torch.cat([moving, fixed], dim=1))
    assert torch.equal(ddf, expected_ddf)
    assert torch.equal(warped, warp_with_ddf(moving, expected_ddf, padding_mode="border"))


def test_the_wrapper_warps_the_moving_image_exactly_once(image_pair):
    net = _net(num_clusters=3, kmeans_iters=2).eval()
    moving, fixed = image_pair((1, 1, 32, 32, 32), seed=15)
    pair = torch.cat([moving, fixed], dim=1)
    with torch.no_grad(), mock.patch.object(sacbnet_module, "warp_with_ddf", wraps=warp_with_ddf) as spy:
        net.backbone(pair)
        backbone_calls = spy.call_count  # feature and flow warps inside the network
        spy.reset_mock()
        net(moving, fixed)
    assert spy.call_count == backbone_calls + 1
    last = spy.call_args_list[-1]
    assert torch.equal(last.args[0], moving)
    assert last.kwargs == {"padding_mode": "border"}


class _FixedDDF(torch.nn.Module):
    """A stand-in backbone: returns one fixed ddf and records its inputs."""

    def __init__(self, ddf):
        super().__init__()
        self.ddf = ddf
        self.inputs = []

    def forward(self, pair):
        self.inputs.append(pair)
        return self.ddf


def test_a_given_backbone_is_called_once_and_its_ddf_warps_once():
    ddf = torch.zeros(2, 2, 8, 6)
    ddf[:, 1] = 1.0  # one voxel along the last axis
    backbone = _FixedDDF(ddf)
    net = SACBNet(backbone=backbone, warp_padding_mode="zeros")
    moving, fixed = torch.rand(2, 3, 8, 6), torch.rand(2, 3, 8, 6)
    with mock.patch.object(sacbnet_module, "warp_with_ddf", wraps=warp_with_ddf) as spy:
        warped, out = net(moving, fixed)
    assert len(backbone.inputs) == 1 and torch.equal(backbone.inputs[0], torch.cat([moving, fixed], dim=1))
    assert spy.call_count == 1 and out is ddf
    torch.testing.assert_close(warped[..., :-1], moving[..., 1:], rtol=0, atol=1e-5)
    assert warped[..., -1].abs().max() < 1e-5  # zero padding beyond the last column
    with pytest.raises(ValueError, match="same shape"):
        net(moving, fixed[:, :2])  # a foreign backbone: no channel rule, but moving and fixed must match
    with pytest.raises(ValueError, match=r"must return a ddf of shape \(2, 2, 8, 6\)"):
        SACBNet(backbone=_FixedDDF(ddf[:, :1]))(moving, fixed)


def test_given_backbone_overrides_the_architecture_arguments():
    backbone = SACBNetBackbone(spatial_dims=2, in_channels=4, num_clusters=3)
    net = SACBNet(backbone, spatial_dims=3, in_channels=1, num_clusters=9)
    assert net.backbone is backbone and (net.spatial_dims, net.in_channels) == (2, 2)
    with pytest.raises(ValueError, match=r"in_channels=2\) expects moving of shape \(B, 2, H, W\)"):
        net(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))


def test_backbone_bad_channel_count():
    backbone = SACBNetBackbone()
    with pytest.raises(ValueError, match=r"\(B, 2, H, W, D\), cat\(\[moving, fixed\], dim=1\)"):
        backbone(torch.rand(1, 1, 32, 32, 32))
    with pytest.raises(ValueError):
        backbone(torch.rand(1, 3, 32, 32, 32))
    with pytest.raises(ValueError):
        backbone(torch.rand(1, 2, 32, 32))
    for odd in (1, 3):
        with pytest.raises(ValueError, match="must be even"):
            SACBNetBackbone(in_channels=odd)


def test_jit_trace_of_the_backbone(image_pair):
    torch.manual_seed(8)
    backbone = SACBNetBackbone(num_clusters=3).eval()
    moving, fixed = image_pair((1, 1, 32, 48, 16), seed=8)
    pair = torch.cat([moving, fixed], dim=1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(backbone, pair, check_trace=False)
        eager = backbone(pair)
        out = traced(pair)
        # the trace records PyTorch's own instance_norm and convolution instead of the fused in-place norm and
        # oneDNN calls of eager CPU mode: the same function, equal up to float32 rounding
        torch.testing.assert_close(out, eager, rtol=0, atol=1e-3)
        # the trace is not specialised to the values of the example input
        other = torch.cat(image_pair((1, 1, 32, 48, 16), seed=9), dim=1)
        traced_other = traced(other)
        torch.testing.assert_close(traced_other, backbone(other), rtol=0, atol=1e-3)
        assert not torch.allclose(traced_other, eager)


# ------------------------------------------------------------------------------------------------- dtype, device


@pytest.mark.parametrize("spatial_dims, spatial", [(3, (32, 32, 32)), (2, (64, 48))])
def test_autocast_bfloat16(spatial_dims, spatial, image_pair):
    net = _net(spatial_dims=spatial_dims)
    moving, fixed = image_pair((2, 1, *spatial), seed=10)
    with torch.no_grad():
        _, ddf32 = net(moving, fixed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            warped, ddf = net(moving, fixed)
    assert ddf.dtype == torch.float32
    assert ddf.shape == ddf32.shape and warped.shape == moving.shape
    assert torch.isfinite(ddf).all() and torch.isfinite(warped).all()
    # bfloat16 features can move a few k-means assignments; the field stays close on average
    error = (ddf - ddf32).abs().mean()
    assert error < 0.25 * ddf32.abs().mean(), (error, ddf32.abs().mean())
    cosine = torch.nn.functional.cosine_similarity(ddf.flatten(), ddf32.flatten(), dim=0)
    assert cosine > 0.9


def test_float64_after_a_first_forward(image_pair):
    net = _net(num_clusters=3)
    moving, fixed = image_pair((1, 1, 32, 48, 16), seed=11)
    with torch.no_grad():
        _, ddf32 = net(moving, fixed)  # fills the Warp reference-grid caches in float32
        net.to(torch.float64)
        warped, ddf = net(moving.double(), fixed.double())
    assert ddf.dtype == torch.float64 and warped.dtype == torch.float64
    torch.testing.assert_close(ddf.float(), ddf32, rtol=1e-3, atol=1e-3)


def test_new_sizes_after_a_first_forward(image_pair):
    net = _net(num_clusters=3)
    with torch.no_grad():
        net(*image_pair((1, 1, 32, 48, 16)))
        moving, fixed = image_pair((2, 1, 32, 32, 32), seed=12)
        warped, ddf = net(moving, fixed)
        fresh = SACBNet(num_clusters=3)
        fresh.load_state_dict(net.state_dict())
        assert torch.equal(fresh(moving, fixed)[1], ddf)
    assert ddf.shape == (2, 3, 32, 32, 32)


def _smooth_pair(shape, device="cpu"):
    from monai_sacb.transforms.deformation import random_smooth_ddf

    axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    fixed = (1 - sum(a**2 for a in axes) / 2).clamp_min(0)[None, None]  # a smooth blob with edges
    fixed = fixed + 0.3 * torch.sin(4 * axes[0])[None, None] * (fixed > 0)
    moving = warp_with_ddf(fixed, random_smooth_ddf(shape, 3.0, 16, rng=0)[None])
    return moving.to(device), fixed.to(device)


def _training_step(net, moving, fixed):
    warped, ddf = net(moving, fixed)
    loss = (warped - fixed).square().mean() + ddf.square().mean()
    return float(loss.detach()), torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))])


def test_the_formulation_run_off_the_cpu_gives_the_cpu_kernels_ddf(bundle_state_dict):
    """The shipped network with every CPU kernel switched off (what a GPU, tracing and export run) registers a
    smooth pair like the CPU kernels do: the two formulations compute the same function, up to rounding."""
    import sys

    net = SACBNetBackbone(subtract_self_estimate=True).eval()
    net.load_state_dict(bundle_state_dict)
    moving, fixed = _smooth_pair((48, 64, 48))
    pair = torch.cat([moving, fixed], dim=1)
    modules = [
        module for name, module in sys.modules.items()
        if name.startswith("monai_sacb.networks") and hasattr(module, "use_cpu_kernels")
    ]
    with torch.no_grad():
        cpu_kernels = net(pair)
        patches = [mock.patch.object(m, "use_cpu_kernels", return_value=False) for m in modules]
        for patch in patches:
            patch.start()
        try:
            plain = net(pair)
        finally:
            for patch in patches:
                patch.stop()
    assert len(modules) >= 6 and float(cpu_kernels.abs().max()) > 0.5  # every block's module; a field that moves
    difference = (plain - cpu_kernels).norm(dim=1)
    # measured: mean 2.5e-6, largest 2.1e-5 voxel (a k-means assignment flipped by rounding could move a few voxels)
    assert float(difference.mean()) < 1e-4 and float((difference > 1e-2).float().mean()) < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_moved_to_cuda_after_a_first_forward(image_pair):
    net = _net(num_clusters=3)
    moving, fixed = image_pair((1, 1, 32, 48, 16), seed=13)
    with torch.no_grad():
        _, ddf_cpu = net(moving, fixed)
        net.cuda()
        _, ddf = net(moving.cuda(), fixed.cuda())
    assert ddf.device.type == "cuda"
    assert (ddf.cpu() - ddf_cpu).abs().mean() < 0.05 * ddf_cpu.abs().mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_step_with_the_fused_norm_equals_pytorchs_norm(bundle_state_dict, saved_storages):
    """A training step on the GPU takes the fused norm (less saved for backward) and computes what PyTorch's
    instance_norm + leaky_relu compute: in float32 the same loss and gradients up to rounding; under float16
    autocast gradients as close to float32's as PyTorch's own norm gives."""
    import monai_sacb.networks.blocks.norm_act as norm_act

    net = SACBNet(subtract_self_estimate=True).cuda().train()
    net.backbone.load_state_dict(bundle_state_dict)
    moving, fixed = _smooth_pair((48, 64, 48), "cuda")

    def step(fused: bool, amp: bool):
        with mock.patch.object(norm_act, "_saves_memory_in_training", wraps=norm_act._saves_memory_in_training) as f:
            if not fused:
                f.side_effect, f.return_value = None, False
            with saved_storages() as storages, torch.autocast("cuda", enabled=amp):
                warped, ddf = net(moving, fixed)
            loss = (warped.float() - fixed).square().mean() + ddf.float().square().mean()
            grads = torch.autograd.grad(loss, list(net.parameters()))
            assert f.call_count >= 19  # every norm of the network asked
        return float(loss.detach()), torch.cat([g.flatten().float() for g in grads]), sum(storages.values())

    fused_loss, fused_grad, fused_bytes = step(fused=True, amp=False)
    loss, grad, plain_bytes = step(fused=False, amp=False)
    relative = float((fused_grad - grad).norm()) / float(grad.norm())
    assert abs(fused_loss - loss) <= 1e-3 * abs(loss), (fused_loss, loss)
    assert relative <= 1e-2, relative
    assert fused_bytes < 0.75 * plain_bytes, (fused_bytes, plain_bytes)
    _, fused_amp_grad, fused_amp_bytes = step(fused=True, amp=True)
    _, amp_grad, amp_bytes = step(fused=False, amp=True)
    fused_error, error = float((fused_amp_grad - grad).norm()), float((amp_grad - grad).norm())
    assert fused_error <= 1.5 * error + 1e-3 * float(grad.norm()), (fused_error, error, float(grad.norm()))
    assert fused_amp_bytes < 0.75 * amp_bytes, (fused_amp_bytes, amp_bytes)


def test_the_deterministic_gpu_formulations_train_like_the_default(bundle_state_dict, monkeypatch):
    """The gathers and index selections a GPU takes under torch.use_deterministic_algorithms(True), forced on the
    CPU, give a training step the loss and gradients of grid_sample and interpolate."""
    import monai_sacb.networks.blocks.warp as warp_module

    net = SACBNet(subtract_self_estimate=True).train()
    net.backbone.load_state_dict(bundle_state_dict)
    moving, fixed = _smooth_pair((32, 48, 32))
    loss, grad = _training_step(net, moving, fixed)
    calls = []

    def forced(*tensors):
        calls.append(len(tensors))
        return torch.is_grad_enabled()

    monkeypatch.setattr(warp_module, "deterministic_backward_needed", forced)
    monkeypatch.setattr(sacbnet_module, "deterministic_backward_needed", forced)
    forced_loss, forced_grad = _training_step(net, moving, fixed)
    assert len(calls) >= 10  # every warp and upsampling of the decoder asked
    assert abs(forced_loss - loss) <= 1e-5 * abs(loss)
    assert float((forced_grad - grad).norm()) <= 1e-3 * float(grad.norm())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_under_deterministic_algorithms_repeats_bitwise(bundle_state_dict, monkeypatch):
    """monai.utils.set_determinism(..., use_deterministic_algorithms=True) on a GPU: a training step runs (PyTorch's
    grid_sample, interpolate and cumsum would refuse) and repeats bit for bit."""
    import os

    monkeypatch.setitem(os.environ, "CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    net = SACBNet(subtract_self_estimate=True).cuda().train()
    net.backbone.load_state_dict(bundle_state_dict)
    moving, fixed = _smooth_pair((48, 64, 48), "cuda")
    default_loss, default_grad = _training_step(net, moving, fixed)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        (loss, grad), (again_loss, again_grad) = _training_step(net, moving, fixed), _training_step(net, moving, fixed)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert loss == again_loss and torch.equal(grad, again_grad)
    assert abs(loss - default_loss) <= 1e-3 * abs(default_loss)
    assert float((grad - default_grad).norm()) <= 1e-2 * float(default_grad.norm())
