# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from monai_sacb.networks import SACBlock, batched_kmeans, kmeans_init_draws, local_mean


def _count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _expected_count(channels, spatial_dims):
    taps = 3**spatial_dims
    proj_in = channels * channels * taps + channels  # conv with bias, norm without affine
    kernel_mlp = (channels * 128 + 128) + (128 * 128 + 128) + (128 * taps + taps)
    bias_mlp = (channels * 64 + 64) + (64 * 64 + 64) + (64 * channels + channels)
    weight = channels * channels * taps  # no bias: the per-cluster bias comes from bias_mlp
    return proj_in + kernel_mlp + bias_mlp + weight


@pytest.mark.parametrize("spatial_dims, channels", [(3, 16), (3, 64), (2, 32)])
def test_parameter_count_follows_spec_and_ignores_num_clusters(spatial_dims, channels):
    counts = {k: _count(SACBlock(spatial_dims, channels, num_clusters=k)) for k in (3, 7, 11)}
    assert set(counts.values()) == {_expected_count(channels, spatial_dims)}, counts


@pytest.mark.parametrize("shape", [(2, 8, 6, 5, 4), (1, 8, 6, 7), (2, 6, 3, 3, 3)])
def test_shape_and_determinism(shape):
    torch.manual_seed(0)
    block = SACBlock(len(shape) - 2, shape[1], num_clusters=5)
    x = torch.randn(shape)
    out = block(x)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert torch.equal(out, block(x.clone()))


@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 6), (1, 2, 7, 5), (1, 2, 1, 2, 1), (2, 1, 2, 1)])
def test_local_mean_is_zero_padded_average_pool(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spatial_dims = x.ndim - 2
    pool = F.avg_pool3d if spatial_dims == 3 else F.avg_pool2d
    # explicit zero padding: avg_pool's own padding is limited to half the window on tiny grids
    expected = pool(F.pad(x, [1, 1] * spatial_dims), 3, stride=1)
    if min(shape[2:]) >= 2:
        torch.testing.assert_close(expected, pool(x, 3, stride=1, padding=1, count_include_pad=True))
    out = local_mean(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 16, 9, 8, 7), (1, 3, 1, 2, 1), (2, 64, 3, 1, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_bfloat16_local_mean_is_the_rounded_exact_mean(shape, channels_last, monkeypatch):
    """bfloat16 features (inference under bfloat16 autocast) where numba is installed: float32 sums rounded once, so
    the exact mean rounded to bfloat16 (the eager bfloat16 code rounds after each axis and matches it about half
    the time)."""
    pytest.importorskip("numba")
    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3 + 2).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    exact = F.avg_pool3d(F.pad(x.double(), [1, 1] * 3), 3, stride=1)
    with torch.no_grad():
        out = local_mean(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape and out.stride() == x.stride()
    # float32 sums of 27 bfloat16 values are exact or nearly, so the one rounding is to the nearest bfloat16
    assert (out == exact.bfloat16()).float().mean() > 0.999
    torch.testing.assert_close(out.double(), exact, rtol=2**-8, atol=0)
    monkeypatch.setenv("MONAI_SACB_NUMBA", "0")
    torch.testing.assert_close(local_mean(x).double(), exact, rtol=2**-6, atol=1e-2)  # the eager bfloat16 code


def test_compiled_local_mean_only_for_3d_bfloat16_without_gradient(monkeypatch):
    pytest.importorskip("numba")
    from monai_sacb.networks.blocks import sac as sac_module

    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    x = torch.randn(1, 4, 5, 6, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert sac_module._compiled_local_mean(x.bfloat16()) is not None
        assert sac_module._compiled_local_mean(x) is None  # float32 results must not depend on numba
        assert sac_module._compiled_local_mean(x[..., 0].bfloat16()) is None
    assert sac_module._compiled_local_mean(x.bfloat16().requires_grad_()) is None
    monkeypatch.setenv("MONAI_SACB_NUMBA", "0")
    assert sac_module._compiled_local_mean(x.bfloat16()) is None


@pytest.mark.parametrize("shape", [(2, 16, 8, 6, 10), (1, 8, 5, 4, 3)])
def test_compiled_bfloat16_block_output_has_the_eager_bits(shape, monkeypatch):
    """Under CPU bfloat16 autocast without gradient, the gather of each voxel's cluster, the activation and the
    residual addition run as one compiled pass: the same bits as the eager gather, leaky_relu_ and addition."""
    pytest.importorskip("numba")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bfloat16 convolutions on this CPU")
    from monai_sacb.networks.blocks import sac as sac_module

    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    torch.manual_seed(4)
    block = SACBlock(3, shape[1], num_clusters=5).eval()
    inputs = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last_3d)
    calls = []
    compiled = sac_module._compiled_block_output
    monkeypatch.setattr(sac_module, "_compiled_block_output", lambda *a: calls.append(compiled(*a)) or calls[-1])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused = block(inputs)
        assert calls and calls[-1] is not None
        monkeypatch.setattr(sac_module, "_compiled_block_output", lambda *a: None)
        eager = block(inputs)
    assert fused.dtype == eager.dtype == torch.bfloat16
    assert fused.is_contiguous(memory_format=torch.channels_last_3d)
    assert (fused < inputs).float().mean() > 0.1  # negative outputs: the activation's slope is exercised
    assert torch.equal(fused.view(torch.int16), eager.view(torch.int16))


def test_compiled_block_output_only_for_3d_bfloat16_channels_last_inference(monkeypatch):
    pytest.importorskip("numba")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bfloat16 convolutions on this CPU")
    from monai_sacb.networks.blocks import sac as sac_module

    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    block = SACBlock(3, 4, num_clusters=3).eval()
    x = torch.randn(1, 4, 4, 5, 6, generator=torch.Generator().manual_seed(2))
    weight, gains = block.weight, torch.rand(1, 3, 27)
    assignments, biases = torch.zeros(1, 120, dtype=torch.int64), torch.zeros(1, 3, 4)

    def output(inputs):
        return sac_module._compiled_block_output(inputs, inputs, weight, gains, assignments, biases, 0.1)

    channels_last = x.bfloat16().contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert output(channels_last) is not None
        assert output(x.contiguous(memory_format=torch.channels_last_3d)) is None  # float32: never numba-dependent
        assert output(x.bfloat16()) is None  # contiguous: not rows of whole voxels
    with torch.no_grad():
        assert output(channels_last) is None  # no autocast: the convolution does not compute in bfloat16
    monkeypatch.setenv("MONAI_SACB_NUMBA", "0")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert output(channels_last) is None


def _spec_block_forward(block, inputs, num_clusters, iters=10, seed=0):
    """The block written out from the design spec, with the block's own parameters."""
    spatial_dims = inputs.ndim - 2
    x = block.proj_in(inputs)
    pool = F.avg_pool3d if spatial_dims == 3 else F.avg_pool2d
    descriptors = pool(x, 3, stride=1, padding=1, count_include_pad=True).flatten(2).transpose(1, 2)
    assignments, centroids = batched_kmeans(descriptors, num_clusters, iters, kmeans_init_draws(num_clusters, seed))
    gains = torch.sigmoid(block.kernel_mlp(centroids))  # (B, K, taps)
    biases = block.bias_mlp(centroids)  # (B, K, C)
    conv = F.conv3d if spatial_dims == 3 else F.conv2d
    outputs = []
    for b in range(x.shape[0]):
        out = torch.zeros_like(x[b])
        for n in range(num_clusters):
            kernel = block.weight * gains[b, n].view((1, 1) + (3,) * spatial_dims)
            result = conv(x[b : b + 1], kernel, padding=1)[0] + biases[b, n].view(-1, *(1,) * spatial_dims)
            out = torch.where((assignments[b] == n).view(1, *x.shape[2:]), result, out)
        outputs.append(out)
    return inputs + F.leaky_relu(torch.stack(outputs), 0.1)


@pytest.mark.parametrize("shape", [(2, 6, 6, 5, 4), (2, 5, 7, 6)])
def test_equals_spec_composition(shape):
    torch.manual_seed(1)
    block = SACBlock(len(shape) - 2, shape[1], num_clusters=4, kmeans_seed=3)
    inputs = torch.randn(shape)
    out = block(inputs)
    expected = _spec_block_forward(block, inputs, 4, seed=3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(2)
    block = SACBlock(3, 8, num_clusters=3)
    inputs = torch.randn(2, 8, 5, 4, 4, requires_grad=True)
    block(inputs).square().mean().backward()
    assert inputs.grad is not None and inputs.grad.abs().max() > 0
    missing = [n for n, p in block.named_parameters() if p.grad is None or not (p.grad.abs().max() > 0)]
    assert not missing, f"parameters without a gradient: {missing}"


def test_state_dict_round_trip_reproduces_output():
    torch.manual_seed(3)
    block = SACBlock(2, 6, num_clusters=4, kmeans_seed=5)
    copy = SACBlock(2, 6, num_clusters=4, kmeans_seed=5)
    assert "kmeans.init_draws" not in block.state_dict()  # the seed's draws are rebuilt, not saved
    copy.load_state_dict(block.state_dict())
    inputs = torch.randn(2, 6, 8, 8)
    assert torch.equal(block(inputs), copy(inputs))


def test_bad_spatial_dims():
    with pytest.raises(ValueError, match="spatial_dims"):
        SACBlock(spatial_dims=1)


def test_runs_in_float64():
    torch.manual_seed(4)
    block = SACBlock(3, 6, num_clusters=3).double()
    inputs = torch.randn(1, 6, 4, 4, 4, dtype=torch.float64)
    out = block(inputs)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), block.float()(inputs.float()), rtol=1e-4, atol=1e-4)
