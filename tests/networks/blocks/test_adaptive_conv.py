# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import monai_sacb.networks.blocks.adaptive_conv as adaptive_conv_module
from monai_sacb.networks import cluster_adaptive_conv

# (spatial shape, C_in, C_out, clusters) of the equality cases; C_in != C_out, batch 2
CASES = {2: ((5, 6), 3, 4, 3), 3: ((4, 5, 3), 3, 2, 4)}


def reference_adaptive_conv(x, weight, gains, assignments, bias=None):
    """One plain convolution per sample and cluster, with that cluster's tap gains, kept where the voxel is in it."""
    spatial_dims = x.ndim - 2
    conv = F.conv3d if spatial_dims == 3 else F.conv2d
    outputs = []
    for b in range(x.shape[0]):
        out = None
        for n in range(gains.shape[1]):
            kernel = weight * gains[b, n].view((1, 1) + (3,) * spatial_dims)
            result = conv(x[b : b + 1], kernel, padding=1)[0]  # (C_out, *S)
            if bias is not None:
                result = result + bias[b, n].view(-1, *(1,) * spatial_dims)
            mask = (assignments[b] == n).view(1, *x.shape[2:])
            out = torch.where(mask, result, torch.zeros_like(result) if out is None else out)
        outputs.append(out)
    return torch.stack(outputs)


def make_inputs(spatial_dims, seed=0, dtype=torch.float64):
    shape, c_in, c_out, clusters = CASES[spatial_dims]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, *shape, generator=generator, dtype=dtype)
    weight = torch.randn(c_out, c_in, *(3,) * spatial_dims, generator=generator, dtype=dtype)
    gains = torch.rand(2, clusters, 3**spatial_dims, generator=generator, dtype=dtype)
    n = torch.Size(shape).numel()
    assignments = torch.randint(0, clusters, (2, n), generator=generator)
    assignments[:, :clusters] = torch.arange(clusters)  # every cluster is used
    return x, weight, gains, assignments


@pytest.fixture(params=["patches", "stacked"])
def method(request, monkeypatch):
    """Both formulations; "patches" with one plane per slab, so that the tiny test grids span several slabs."""
    monkeypatch.setattr(adaptive_conv_module, "_PATCH_BYTES", 1)
    return request.param


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_forward_equals_reference(spatial_dims, method):
    x, weight, gains, assignments = make_inputs(spatial_dims)
    out = cluster_adaptive_conv(x, weight, gains, assignments, method=method)
    assert out.shape == (2, weight.shape[0], *x.shape[2:])
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference_adaptive_conv(x, weight, gains, assignments), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradients_equal_reference(spatial_dims, layout, method):
    x, weight, gains, assignments = make_inputs(spatial_dims, seed=1)
    if layout == "channels_last":
        x = channels_last(x)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    gains.requires_grad_(True)
    out = cluster_adaptive_conv(x, weight, gains, assignments, method=method)
    expected = reference_adaptive_conv(x, weight, gains, assignments)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    grads = torch.autograd.grad(out, (x, weight, gains), grad_out)
    ref_grads = torch.autograd.grad(expected, (x, weight, gains), grad_out)
    for name, grad, ref in zip(("x", "weight", "gains"), grads, ref_grads):
        assert grad.shape == ref.shape, name
        assert ref.abs().max() > 0, name
        torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_per_cluster_bias_forward_and_gradients(spatial_dims, method):
    x, weight, gains, assignments = make_inputs(spatial_dims, seed=8)
    generator = torch.Generator().manual_seed(8)
    bias = torch.randn(2, gains.shape[1], weight.shape[0], generator=generator, dtype=x.dtype)
    with torch.no_grad():
        plain = cluster_adaptive_conv(x, weight, gains, assignments, bias, method=method)
    tensors = [t.clone().requires_grad_(True) for t in (x, weight, gains, bias)]
    out = cluster_adaptive_conv(tensors[0], tensors[1], tensors[2], assignments, tensors[3], method=method)
    expected = reference_adaptive_conv(tensors[0], tensors[1], tensors[2], assignments, tensors[3])
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(plain, expected.detach(), rtol=1e-10, atol=1e-10)
    # the bias is not a no-op
    assert (expected - reference_adaptive_conv(x, weight, gains, assignments)).abs().max() > 0.1
    grad_out = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    grads = torch.autograd.grad(out, tensors, grad_out)
    ref_grads = torch.autograd.grad(expected, tensors, grad_out)
    for name, grad, ref in zip(("x", "weight", "gains", "bias"), grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradient_for_a_subset_of_inputs(spatial_dims, method):
    # only the gains need a gradient (e.g. frozen conv weight and input), then only the weight
    x, weight, gains, assignments = make_inputs(spatial_dims, seed=2)
    for wanted in ("gains", "weight", "x"):
        tensors = {"x": x.clone(), "weight": weight.clone(), "gains": gains.clone()}
        tensors[wanted].requires_grad_(True)
        out = cluster_adaptive_conv(tensors["x"], tensors["weight"], tensors["gains"], assignments, method=method)
        (grad,) = torch.autograd.grad(out.square().sum(), tensors[wanted])
        expected = reference_adaptive_conv(tensors["x"], tensors["weight"], tensors["gains"], assignments)
        (ref,) = torch.autograd.grad(expected.square().sum(), tensors[wanted])
        torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradcheck_tiny(spatial_dims, method):
    generator = torch.Generator().manual_seed(3)
    shape = (3, 4) if spatial_dims == 2 else (3, 2, 2)
    c_in, c_out, clusters = (2, 3, 2) if spatial_dims == 2 else (1, 2, 2)
    x = torch.randn(1, c_in, *shape, generator=generator, dtype=torch.float64, requires_grad=True)
    kernel = (c_out, c_in) + (3,) * spatial_dims
    weight = torch.randn(kernel, generator=generator, dtype=torch.float64, requires_grad=True)
    gains = torch.rand(1, clusters, 3**spatial_dims, generator=generator, dtype=torch.float64, requires_grad=True)
    assignments = torch.tensor([[n % clusters for n in range(torch.Size(shape).numel())]])
    bias = torch.randn(1, clusters, c_out, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, w, g: cluster_adaptive_conv(a, w, g, assignments, method=method),
        (x, weight, gains),
        eps=1e-6,
        atol=1e-6,
    )
    assert torch.autograd.gradcheck(
        lambda a, w, g, c: cluster_adaptive_conv(a, w, g, assignments, c, method=method),
        (x, weight, gains, bias),
        eps=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_no_grad_path_equals_reference(spatial_dims, layout, method):
    x, weight, gains, assignments = make_inputs(spatial_dims, seed=4)
    if layout == "channels_last":
        x = channels_last(x)
    expected = reference_adaptive_conv(x, weight, gains, assignments)
    # nothing requires grad
    plain = cluster_adaptive_conv(x, weight, gains, assignments, method=method)
    torch.testing.assert_close(plain, expected, rtol=1e-10, atol=1e-10)
    # inputs require grad, but grad mode is off
    with torch.no_grad():
        weight, gains = weight.requires_grad_(True), gains.requires_grad_(True)
        out = cluster_adaptive_conv(x, weight, gains, assignments, method=method)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_single_cluster_is_a_plain_convolution(method):
    x, weight, gains, _ = make_inputs(3, seed=5)
    ones = torch.ones(2, 1, 27, dtype=x.dtype)
    assignments = torch.zeros(2, x[0, 0].numel(), dtype=torch.int64)
    out = cluster_adaptive_conv(x, weight, ones, assignments, method=method)
    torch.testing.assert_close(out, F.conv3d(x, weight, padding=1), rtol=1e-10, atol=1e-10)


def test_float32_matches_float64_reference(method):
    x, weight, gains, assignments = make_inputs(3, seed=6)
    out = cluster_adaptive_conv(x.float(), weight.float(), gains.float(), assignments, method=method)
    assert out.dtype == torch.float32
    expected = reference_adaptive_conv(x, weight, gains, assignments)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["x", "weight", "gains", "assignments", "bias"])
def test_bad_shapes_raise_value_error(which):
    x, weight, gains, assignments = make_inputs(3)
    bad = {
        "bias": (x, weight, gains, assignments, torch.zeros(2, gains.shape[1], weight.shape[0] + 1, dtype=x.dtype)),
        "x": (x[0], weight, gains, assignments),  # no batch dimension
        "weight": (x, weight[:, :, :2], gains, assignments),  # 2x3x3 kernel
        "gains": (x, weight, gains[..., :9], assignments),  # 2D tap count for a 3D input
        "assignments": (x, weight, gains, assignments[:, :-1]),  # one voxel short
    }[which]
    with pytest.raises(ValueError):
        cluster_adaptive_conv(*bad)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN without bfloat16 on this CPU")
def test_cpu_bfloat16_autocast_takes_the_stacked_kernels_in_bfloat16():
    x, weight, gains, assignments = (t.float() if t.is_floating_point() else t for t in make_inputs(3, seed=7))
    bias = torch.randn(2, gains.shape[1], weight.shape[0], generator=torch.Generator().manual_seed(8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cluster_adaptive_conv(channels_last(x), weight, gains, assignments, bias)
        stacked = cluster_adaptive_conv(channels_last(x), weight, gains, assignments, bias, method="stacked")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, stacked, rtol=0, atol=0)
    expected = reference_adaptive_conv(x.double(), weight.double(), gains.double(), assignments, bias.double())
    torch.testing.assert_close(out.double(), expected, rtol=0.02, atol=0.05)


def test_unknown_method_raises_value_error():
    x, weight, gains, assignments = make_inputs(3)
    with pytest.raises(ValueError, match="method"):
        cluster_adaptive_conv(x, weight, gains, assignments, method="fast")
