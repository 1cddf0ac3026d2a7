# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import itertools
from unittest import mock

import pytest
import torch
from monai.networks.blocks import Warp
from torch.nn import functional as F

from monai_sacb.networks import SimilarityMatching, similarity_matching_flow
from monai_sacb.networks.blocks import matching as matching_module
from monai_sacb.networks.blocks.numba_kernels import numba_kernels

try:
    import numba  # noqa: F401

    HAS_NUMBA = True
except ImportError:
    HAS_NUMBA = False

pytestmark = pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp")


def reference_flow(moving, fixed):
    """The unfold formulation: (B, N, 3^d, C) neighbourhoods of moving, dot with fixed, softmax, mean offset."""
    spatial_dims = fixed.ndim - 2
    batch, channels = fixed.shape[:2]
    spatial = fixed.shape[2:]
    offsets = list(itertools.product((-1, 0, 1), repeat=spatial_dims))  # ij order
    padded = F.pad(moving, [1, 1] * spatial_dims)
    if spatial_dims == 2:
        columns = F.unfold(padded, kernel_size=3)  # (B, C * 9, N), kernel positions row-major per channel
        neighbourhood = columns.view(batch, channels, 9, -1).permute(0, 3, 2, 1)  # (B, N, 9, C)
    else:
        shifts = []
        for offset in offsets:
            index = tuple(slice(1 + o, 1 + o + s) for o, s in zip(offset, spatial))
            shifts.append(padded[(slice(None), slice(None)) + index].flatten(2))  # (B, C, N)
        neighbourhood = torch.stack(shifts, dim=2).permute(0, 3, 2, 1)  # (B, N, 27, C)
    centre = fixed.flatten(2).transpose(1, 2).unsqueeze(-1)  # (B, N, C, 1)
    scores = (neighbourhood @ centre).squeeze(-1)  # (B, N, 3^d)
    prob = scores.softmax(-1)
    vectors = torch.tensor(offsets, dtype=prob.dtype)  # (3^d, d)
    flow = prob @ vectors  # (B, N, d)
    return flow.transpose(1, 2).reshape(batch, spatial_dims, *spatial)


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (2, 6, 4, 5, 3), (1, 3, 6, 6, 6)])
def test_equals_unfold_reference(shape):
    generator = torch.Generator().manual_seed(0)
    moving = torch.randn(shape, generator=generator, dtype=torch.float64)
    fixed = torch.randn(shape, generator=generator, dtype=torch.float64)
    flow = similarity_matching_flow(moving, fixed)
    spatial_dims = len(shape) - 2
    assert flow.shape == (shape[0], spatial_dims, *shape[2:])
    assert flow.dtype == torch.float64  # at least float32: float64 stays float64
    expected = reference_flow(moving, fixed)
    # the flow is not trivially zero and not saturated everywhere
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(flow, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(SimilarityMatching()(moving, fixed), flow)
    flow32 = similarity_matching_flow(moving.float(), fixed.float())
    assert flow32.dtype == torch.float32
    torch.testing.assert_close(flow32.double(), expected, rtol=1e-4, atol=1e-4)


def _one_hot_labels(spatial_shape, shift_axis=None):
    """
    Scaled one-hot features (1, 3^d, *S) whose label at p is the row-major index of (p mod 3): any 3x3(x3)
    window holds each label once. With shift_axis, the label pattern is moved by +1 voxel along that axis.
    """
    grids = torch.meshgrid(*[torch.arange(s) for s in spatial_shape], indexing="ij")
    label = torch.zeros(spatial_shape, dtype=torch.int64)
    for axis, grid in enumerate(grids):
        coordinate = grid - 1 if axis == shift_axis else grid
        label = label * 3 + coordinate.remainder(3)
    features = F.one_hot(label, 3 ** len(spatial_shape)).movedim(-1, 0).float()
    return 10.0 * features.unsqueeze(0)


@pytest.mark.parametrize("spatial_shape", [(7, 6), (6, 5, 4)])
def test_known_shift(spatial_shape):
    spatial_dims = len(spatial_shape)
    fixed = _one_hot_labels(spatial_shape)
    for axis in range(spatial_dims):
        # moving(q) = fixed(q - e_axis), so warped(p) = moving(p + ddf(p)) = fixed(p) needs ddf = +e_axis
        moving = _one_hot_labels(spatial_shape, shift_axis=axis)
        flow = similarity_matching_flow(moving, fixed)
        inside = [slice(None)] * spatial_dims
        inside[axis] = slice(0, spatial_shape[axis] - 1)  # where p + e_axis is still on the grid
        expected = torch.zeros(spatial_dims, *spatial_shape)
        expected[axis] = 1.0
        region = (slice(None), slice(None)) + tuple(inside)
        torch.testing.assert_close(flow[region], expected.unsqueeze(0)[region], atol=1e-5, rtol=0)
        # and monai's Warp with that flow brings moving onto fixed
        warped = Warp(mode="bilinear", padding_mode="zeros")(moving, flow)
        torch.testing.assert_close(warped[region], fixed[region], atol=1e-3, rtol=0)


def test_identical_peaked_features_give_zero_flow():
    fixed = _one_hot_labels((5, 4, 6))
    flow = similarity_matching_flow(fixed, fixed)
    torch.testing.assert_close(flow, torch.zeros_like(flow), atol=1e-5, rtol=0)


def test_bfloat16_and_autocast_computed_in_float32():
    generator = torch.Generator().manual_seed(2)
    moving = torch.randn(1, 4, 6, 5, 4, generator=generator).bfloat16()
    fixed = torch.randn(1, 4, 6, 5, 4, generator=generator).bfloat16()
    expected = similarity_matching_flow(moving.float(), fixed.float())
    flow = similarity_matching_flow(moving, fixed)
    assert flow.dtype == torch.float32
    torch.testing.assert_close(flow, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = similarity_matching_flow(moving.float(), fixed.float())
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, expected)


def test_gradients_equal_reference():
    generator = torch.Generator().manual_seed(3)
    moving = torch.randn(2, 3, 5, 4, 3, generator=generator, requires_grad=True)
    fixed = torch.randn(2, 3, 5, 4, 3, generator=generator, requires_grad=True)
    grads = torch.autograd.grad(similarity_matching_flow(moving, fixed).square().sum(), (moving, fixed))
    ref_grads = torch.autograd.grad(reference_flow(moving, fixed).square().sum(), (moving, fixed))
    for grad, ref in zip(grads, ref_grads):
        assert ref.abs().max() > 0
        torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (2, 6, 4, 5, 3), (1, 16, 6, 8, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_self_match_equals_reference(shape, channels_last):
    """The same tensor as moving and fixed computes half the products and mirrors the rest."""
    features = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last_3d if len(shape) == 5 else torch.channels_last)
    expected = reference_flow(features, features)
    assert expected.abs().max() > 0.1  # the plain matching moves features that match themselves
    torch.testing.assert_close(similarity_matching_flow(features, features), expected, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the CPU kernel path, writing into one score buffer
        torch.testing.assert_close(similarity_matching_flow(features, features), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 6, 7, 5, 4)])
@pytest.mark.parametrize("self_match", [False, True])
def test_cpu_kernel_in_slabs_equals_the_plain_formulation(shape, self_match):
    # the CPU kernel computes the scores a few slices of the first spatial axis at a time (7 = 3 + 3 + 1 here):
    # the same products and channel sums, so the same bits as the plain formulation
    generator = torch.Generator().manual_seed(6)
    layout = torch.channels_last_3d if len(shape) == 5 else torch.channels_last
    fixed = torch.randn(shape, generator=generator).contiguous(memory_format=layout)
    moving = fixed if self_match else torch.randn(shape, generator=generator).contiguous(memory_format=layout)
    slab = 3 * fixed[:, :, :1].numel()
    with torch.no_grad():
        with mock.patch.object(matching_module, "_SLAB_ELEMENTS", slab):
            fast = similarity_matching_flow(moving, fixed)
        with mock.patch.object(matching_module, "use_cpu_kernels", return_value=False):
            plain = similarity_matching_flow(moving, fixed)
    assert plain.abs().max() > 0.1
    assert torch.equal(fast, plain)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("shape", [(2, 16, 6, 7, 9), (1, 3, 5, 4, 3), (1, 64, 1, 1, 1), (2, 1, 3, 1, 2), (1, 5, 2, 6, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("self_match", [False, True])
@pytest.mark.parametrize("subtract_self_match", [False, True])
def test_compiled_bfloat16_flow_equals_references(shape, channels_last, self_match, subtract_self_match, monkeypatch):
    """The compiled kernel's flow of bfloat16 features: every offset in its place (grids down to one voxel, where
    every neighbour is off the grid; one-voxel-wide rows, where every column is a first and a last one), equal to
    the float64 unfold reference and to the eager float32 code up to float32 rounding."""
    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    generator = torch.Generator().manual_seed(7)
    fixed = torch.randn(shape, generator=generator).bfloat16()
    moving = fixed if self_match else (torch.randn(shape, generator=generator) * 1.5 - 0.5).bfloat16()
    if channels_last:
        fixed = fixed.contiguous(memory_format=torch.channels_last_3d)
        moving = fixed if self_match else moving.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        flow = matching_module._compiled_flow(moving, fixed, subtract_self_match)
        assert flow is not None and flow.dtype == torch.float32 and flow.shape == (shape[0], 3, *shape[2:])
        expected = reference_flow(moving.double(), fixed.double())
        if subtract_self_match:
            expected = expected - reference_flow(fixed.double(), fixed.double())
        torch.testing.assert_close(flow.double(), expected, rtol=0, atol=2e-5)
        if shape[2:] != (1, 1, 1) and not (self_match and subtract_self_match):  # one voxel: no neighbour, no flow
            assert expected.abs().max() > 0.05
        monkeypatch.setenv("MONAI_SACB_NUMBA", "0")
        eager = similarity_matching_flow(moving, fixed, subtract_self_match=subtract_self_match)
    torch.testing.assert_close(flow, eager, rtol=0, atol=1e-5)
    if self_match and subtract_self_match:
        assert torch.equal(flow, torch.zeros_like(flow))  # the same arithmetic both ways: exactly zero


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_compiled_softmax_exp_is_within_one_ulp():
    """The kernel's polynomial exp of the shifted scores (x <= 0) against float64, over its whole range."""
    import numpy as np

    from monai_sacb.networks.blocks import numba_kernels as kernels_module

    values = np.concatenate([np.linspace(-87, 0, 1501), -np.geomspace(1e-7, 1, 500), [0.0, -0.5 * np.log(2)]])
    values = values.astype(np.float32)
    result = np.array([kernels_module._exp_of_nonpositive(v) for v in values], dtype=np.float64)
    expected = np.exp(values.astype(np.float64))
    assert np.all(np.abs(result - expected) <= 2.0**-23 * expected)  # measured: 0.56 ulp at most
    assert 0 < kernels_module._exp_of_nonpositive(np.float32(-200)) <= 1.0001 * np.exp(-87)  # clamped, still tiny


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_compiled_self_match_subtraction_is_exactly_zero_for_equal_features(monkeypatch):
    """Features equal to fixed (another tensor, as a warped moving image equal to the fixed one gives) move nothing."""
    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    fixed = torch.randn(1, 8, 6, 7, 5, generator=torch.Generator().manual_seed(9)).bfloat16()
    with torch.no_grad():
        flow = similarity_matching_flow(fixed.clone(), fixed, subtract_self_match=True)
        assert similarity_matching_flow(fixed.clone(), fixed).abs().max() > 0.05  # the bias that is subtracted
    assert torch.equal(flow, torch.zeros_like(flow))


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_compiled_flow_applies_to_3d_bfloat16_inference_only(monkeypatch):
    """float32 results must not depend on numba being installed; gradients and 2D take the eager code."""
    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    assert numba_kernels() is not None
    features = torch.randn(1, 4, 4, 5, 6, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert matching_module._compiled_flow(features.bfloat16(), features.bfloat16(), False) is not None
        assert matching_module._compiled_flow(features, features, False) is None
        assert matching_module._compiled_flow(features.bfloat16(), features, False) is None
        assert matching_module._compiled_flow(features[..., 0].bfloat16(), features[..., 0].bfloat16(), False) is None
    tracked = features.bfloat16().requires_grad_()
    assert matching_module._compiled_flow(tracked, tracked, False) is None
    monkeypatch.setenv("MONAI_SACB_NUMBA", "0")
    with torch.no_grad():
        assert matching_module._compiled_flow(features.bfloat16(), features.bfloat16(), False) is None


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 4, 4, 5, 3)])
def test_subtract_self_match_equals_the_difference(shape):
    generator = torch.Generator().manual_seed(10)
    moving, fixed = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    flow = similarity_matching_flow(moving, fixed, subtract_self_match=True)
    expected = similarity_matching_flow(moving, fixed) - similarity_matching_flow(fixed, fixed)
    assert similarity_matching_flow(fixed, fixed).abs().max() > 0.05
    assert torch.equal(flow, expected)
    assert torch.equal(similarity_matching_flow(fixed, fixed, subtract_self_match=True), torch.zeros_like(flow))


def test_self_match_gradients_equal_reference():
    features = torch.randn(2, 3, 5, 4, 3, generator=torch.Generator().manual_seed(5), requires_grad=True)
    grad = torch.autograd.grad(similarity_matching_flow(features, features).square().sum(), features)[0]
    ref = torch.autograd.grad(reference_flow(features, features).square().sum(), features)[0]
    assert ref.abs().max() > 0
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5)


def test_module_has_no_parameters():
    assert list(SimilarityMatching().parameters()) == []


def test_shape_mismatch_raises_value_error():
    with pytest.raises(ValueError, match="shape"):
        similarity_matching_flow(torch.zeros(1, 4, 6, 6, 6), torch.zeros(1, 4, 6, 6, 5))
