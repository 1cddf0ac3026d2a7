# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import LocalNormalizedCrossCorrelationLoss
from monai.networks.layers import separable_filtering

from monai_sacb.losses import lncc as lncc_module
from monai_sacb.losses import LNCC_VARIANTS, FastLNCCLoss, FastLocalNormalizedCrossCorrelationLoss, local_box_sum

SHAPES = {2: (2, 1, 13, 11), 3: (2, 1, 9, 8, 7)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The volumes are tiny: one thread avoids waiting for a second one on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _pair(spatial_dims, dtype=torch.float64, seed=0, channels=1):
    gen = torch.Generator().manual_seed(seed)
    shape = list(SHAPES[spatial_dims])
    shape[1] = channels
    pred = torch.rand(shape, generator=gen, dtype=dtype)
    target = 0.6 * pred + 0.4 * torch.rand(shape, generator=gen, dtype=dtype)  # partly correlated
    return pred, target


def _structured_pair(spatial_dims, dtype=torch.float64):
    """Zero borders, constant blocks (dyadic values: exact sums in any order), a ramp and noise."""
    shape = SHAPES[spatial_dims]
    gen = torch.Generator().manual_seed(7)
    pred = torch.zeros(shape, dtype=dtype)
    target = torch.zeros(shape, dtype=dtype)
    inner = (slice(None), slice(None), *[slice(2, s - 2) for s in shape[2:]])
    pred[inner] = 0.5  # a constant block in a zero background
    target[inner] = 0.75
    first = (slice(None), slice(None), slice(2, 4))
    pred[first] = 1.0  # a constant step inside the block
    ramp = torch.linspace(0, 1, shape[-1], dtype=dtype)
    noisy = (slice(None), slice(None), slice(shape[2] - 4, shape[2] - 2))
    target[noisy] = ramp + 0.1 * torch.rand(target[noisy].shape, generator=gen, dtype=dtype)
    pred[1] = pred[1].flip(-1)  # the second batch item differs
    return pred, target


def _monai(spatial_dims, kernel_size, **kwargs):
    return LocalNormalizedCrossCorrelationLoss(
        spatial_dims=spatial_dims, kernel_size=kernel_size, kernel_type="rectangular", **kwargs
    )


def _grads(loss_fn, pred, target):
    pred = pred.detach().clone().requires_grad_(True)
    target = target.detach().clone().requires_grad_(True)
    value = loss_fn(pred, target)
    weights = torch.linspace(-1, 1, value.numel(), dtype=value.dtype).reshape(value.shape)
    grad_pred, grad_target = torch.autograd.grad((value * weights).sum(), (pred, target))
    return value.detach(), grad_pred, grad_target


def _close(a, b, rtol):
    scale = b.abs().max().clamp_min(1e-12)
    return ((a - b).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kernel_size", [1, 3, 5, 9])
def test_box_sum_equals_monai_separable_filtering(spatial_dims, kernel_size):
    x, _ = _pair(spatial_dims, channels=2)
    expected = separable_filtering(x, [torch.ones(kernel_size, dtype=x.dtype)] * spatial_dims)
    assert torch.allclose(local_box_sum(x, kernel_size), expected, rtol=0, atol=1e-12)


def test_box_sum_per_axis_sizes_and_float32_accuracy():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 10, 12, 14)
    out = local_box_sum(x, [3, 9, 5])
    weight = torch.ones(3, 1, 3, 9, 5, dtype=torch.float64)
    expected = F.conv3d(F.pad(x.double(), [2, 2, 4, 4, 1, 1]), weight, groups=3)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out.double(), expected, rtol=0, atol=2e-5)
    # spatial_dims selects trailing dims of any layout
    y = torch.rand(6, 5)
    expected_1d = F.conv1d(y[:, None], torch.ones(1, 1, 3), padding=1)[:, 0]
    assert torch.allclose(local_box_sum(y, 3, spatial_dims=1), expected_1d)
    with pytest.raises(ValueError, match="odd"):
        local_box_sum(x, 4)
    with pytest.raises(ValueError, match="one per spatial dim"):
        local_box_sum(x, [3, 3])


def test_box_sum_paths_agree(monkeypatch):
    # CPU float32/float64 uses banded matrix products; other devices, reduced-precision matmul settings and long
    # axes use shifted additions: all give the window sums
    x, _ = _pair(3, channels=2)
    expected = separable_filtering(x, [torch.ones(5, dtype=x.dtype)] * 3)
    assert lncc_module._matmul_is_exact(x) and lncc_module._matmul_is_exact(x.float())
    assert not lncc_module._matmul_is_exact(x.half())
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # may allow bfloat16 products on the CPU
        assert not lncc_module._matmul_is_exact(x.float()) and lncc_module._matmul_is_exact(x)
    finally:
        torch.set_float32_matmul_precision(previous)
    monkeypatch.setattr(lncc_module, "_MATMUL_MAX_LENGTH", 8)  # axes of 9 use additions, 8 and 7 products
    assert torch.allclose(local_box_sum(x, 5), expected, rtol=0, atol=1e-12)
    monkeypatch.setattr(lncc_module, "_matmul_is_exact", lambda _: False)
    assert torch.allclose(local_box_sum(x, 5), expected, rtol=0, atol=1e-12)
    for spatial_dims in (2, 3):
        pred, target = _structured_pair(spatial_dims)
        ref = _grads(_monai(spatial_dims, 3), pred, target)
        out = _grads(FastLNCCLoss(spatial_dims, 3), pred, target)
        assert torch.allclose(out[0], ref[0], rtol=1e-10) and _close(out[1], ref[1], 1e-9)


@pytest.mark.parametrize(
    "spatial_dims, kernel_size, reduction",
    [(2, 3, "mean"), (2, 5, "none"), (2, 9, "sum"), (3, 3, "none"), (3, 5, "sum"), (3, 9, "mean")],
)
def test_values_and_gradients_equal_monai_float64(spatial_dims, kernel_size, reduction):
    for make in (_pair, _structured_pair):
        pred, target = make(spatial_dims)
        ref_value, ref_gp, ref_gt = _grads(_monai(spatial_dims, kernel_size, reduction=reduction), pred, target)
        value, gp, gt = _grads(FastLNCCLoss(spatial_dims, kernel_size, reduction=reduction), pred, target)
        assert value.shape == ref_value.shape
        assert torch.allclose(value, ref_value, rtol=1e-10, atol=1e-12)
        assert _close(gp, ref_gp, 1e-9)
        assert _close(gt, ref_gt, 1e-9)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kernel_size", [3, 9])
def test_values_and_gradients_equal_monai_float32(spatial_dims, kernel_size):
    for make in (_pair, _structured_pair):
        pred, target = make(spatial_dims, dtype=torch.float32)
        ref_value, ref_gp, _ = _grads(_monai(spatial_dims, kernel_size), pred, target)
        value, gp, _ = _grads(FastLNCCLoss(spatial_dims, kernel_size), pred, target)
        assert value.dtype == torch.float32
        assert abs(value.item() - ref_value.item()) <= 1e-5
        assert _close(gp, ref_gp, 1e-5)
        ref_map = _monai(spatial_dims, kernel_size, reduction="none")(pred, target)
        fast_map = FastLNCCLoss(spatial_dims, kernel_size, reduction="none")(pred, target)
        assert torch.allclose(fast_map, ref_map, rtol=0, atol=1e-5)


def test_structured_inputs_hit_clamped_and_exact_regions():
    # the structured pair has zero and constant windows (clamped variances, ncc 0) and correlated ones
    pred, target = _structured_pair(3)
    ncc = -FastLNCCLoss(3, 3, reduction="none")(pred, target)
    assert (ncc == 0).any() and (ncc > 0.5).any()
    reference = -_monai(3, 3, reduction="none")(pred, target)
    # windows of zeros and dyadic constants have exact sums in any order: the same zeros as MONAI
    assert torch.equal(ncc == 0, reference == 0)
    assert torch.allclose(ncc, reference, rtol=1e-10, atol=1e-12)


def test_smoothing_constants_channels_and_kernel_larger_than_image():
    pred, target = _pair(3, channels=3)
    for kwargs in ({"smooth_nr": 1e-3, "smooth_dr": 1e-3}, {"kernel_size": 11}):
        kernel_size = kwargs.pop("kernel_size", 5)
        ref = _grads(_monai(3, kernel_size, **kwargs), pred, target)
        out = _grads(FastLNCCLoss(3, kernel_size, **kwargs), pred, target)
        assert torch.allclose(out[0], ref[0], rtol=1e-10)
        assert _close(out[1], ref[1], 1e-9) and _close(out[2], ref[2], 1e-9)


def test_every_variant_is_accepted_and_reaches_minus_one():
    assert LNCC_VARIANTS == ("monai", "sacb")
    pred, _ = _pair(3)
    for variant in LNCC_VARIANTS:
        loss = FastLNCCLoss(3, 3, variant=variant.upper())  # case-insensitive
        assert loss.variant == variant
        assert loss(pred, pred).item() == pytest.approx(-1.0, abs=1e-3)


def test_identical_images_give_minus_one():
    pred, _ = _pair(3)
    assert FastLNCCLoss(3, 3)(pred, pred).item() == pytest.approx(-1.0, abs=1e-6)
    assert FastLNCCLoss(3, 3, variant="sacb")(pred, pred).item() == pytest.approx(-1.0, abs=1e-3)


def test_gradcheck_tiny_float64():
    gen = torch.Generator().manual_seed(3)
    pred = torch.rand(1, 2, 4, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 2, 4, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    for variant in ("monai", "sacb"):
        for reduction in ("mean", "none"):
            loss = FastLNCCLoss(3, 3, reduction=reduction, variant=variant, smooth_nr=1e-4)
            assert torch.autograd.gradcheck(loss, (pred, target))
    # one input without gradient: only the other's is computed
    pred2d, target2d = pred[..., 0].detach(), target[..., 0].detach()
    assert torch.autograd.gradcheck(FastLNCCLoss(2, 3), (pred2d.requires_grad_(True), target2d))
    assert torch.autograd.gradcheck(FastLNCCLoss(2, 3), (pred2d.detach(), target2d.requires_grad_(True)))


def _sacb_reference(pred, target, kernel_size):
    """The published NCC with plain convolutions (zero padding), written out independently."""
    spatial_dims = pred.ndim - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial_dims - 1]
    channels = pred.shape[1]
    weight = torch.ones((channels, 1) + (kernel_size,) * spatial_dims, dtype=pred.dtype)

    def box(x):
        return conv(x, weight, padding=kernel_size // 2, groups=channels)

    win = float(kernel_size**spatial_dims)
    i_sum, j_sum = box(target), box(pred)
    i2_sum, j2_sum, ij_sum = box(target * target), box(pred * pred), box(target * pred)
    u_i, u_j = i_sum / win, j_sum / win
    cross = ij_sum - u_j * i_sum - u_i * j_sum + u_i * u_j * win
    i_var = i2_sum - 2 * u_i * i_sum + u_i * u_i * win
    j_var = j2_sum - 2 * u_j * j_sum + u_j * u_j * win
    cc = cross * cross / (i_var * j_var + 1e-5)
    return -torch.mean(cc)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kernel_size", [3, 9])
def test_sacb_variant_equals_conv_reference(spatial_dims, kernel_size):
    for make in (_pair, _structured_pair):
        pred, target = make(spatial_dims)
        ref_value, ref_gp, ref_gt = _grads(lambda p, t: _sacb_reference(p, t, kernel_size), pred, target)
        value, gp, gt = _grads(FastLNCCLoss(spatial_dims, kernel_size, variant="sacb"), pred, target)
        assert torch.allclose(value, ref_value, rtol=1e-10, atol=1e-12)
        assert _close(gp, ref_gp, 1e-8) and _close(gt, ref_gt, 1e-8)
    pred, target = _pair(spatial_dims, dtype=torch.float32)
    value = FastLNCCLoss(spatial_dims, kernel_size, variant="sacb")(pred, target)
    assert abs(value.item() - _sacb_reference(pred.double(), target.double(), kernel_size).item()) <= 1e-5


def test_sacb_and_monai_variants_differ_only_at_tiny_variances():
    pred, target = _pair(3)
    monai_value = FastLNCCLoss(3, 5)(pred, target)
    sacb_value = FastLNCCLoss(3, 5, variant="sacb")(pred, target)
    assert sacb_value.item() == pytest.approx(monai_value.item(), rel=1e-3)
    # a constant target: away from the zero-padded border its local variance is exactly 0 and cross is 0 up
    # to rounding; MONAI's formula clamps the variance, the published one adds 1e-5: both give ncc ~ 0
    flat = torch.full_like(target, 0.5)
    interior = (slice(None), slice(None), *[slice(2, s - 2) for s in flat.shape[2:]])
    monai_map = FastLNCCLoss(3, 5, reduction="none")(pred, flat)
    sacb_map = FastLNCCLoss(3, 5, reduction="none", variant="sacb")(pred, flat)
    assert monai_map[interior].abs().max() < 1e-20 and sacb_map[interior].abs().max() < 1e-20
    assert monai_map.min() < -0.1  # the border windows see the step to the zero padding


def test_gradient_only_for_target():
    pred, target = _pair(2)
    target.requires_grad_(True)
    FastLNCCLoss(2, 5, variant="sacb")(pred, target).backward()
    ref_target = target.detach().clone().requires_grad_(True)
    _sacb_reference(pred, ref_target, 5).backward()
    assert _close(target.grad, ref_target.grad, 1e-9)


def test_gradient_only_for_pred_and_mixed_dtypes():
    pred, target = _pair(3, dtype=torch.float32)
    fast_pred, ref_pred = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    FastLNCCLoss(3, 3)(fast_pred, target).backward()
    _monai(3, 3)(ref_pred, target).backward()
    assert target.grad is None
    assert _close(fast_pred.grad, ref_pred.grad, 1e-5)
    value = FastLNCCLoss(3, 3)(pred.double(), target)  # promoted to float64
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(_monai(3, 3)(pred.double(), target.double()).item(), abs=1e-12)


def test_autocast_keeps_the_inputs_precision():
    pred, target = _pair(3, dtype=torch.float32)
    expected = FastLNCCLoss(3, 5)(pred, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = FastLNCCLoss(3, 5)(pred, target)
    assert value.dtype == torch.float32 and value.item() == expected.item()


def test_introspection_mirrors_monai():
    loss = FastLocalNormalizedCrossCorrelationLoss()
    assert loss.kernel_size == 9 and loss.kernel_type == "rectangular" and loss.variant == "monai"
    assert torch.equal(loss.kernel, torch.ones(9))
    assert loss.kernel_vol.item() == 729.0
    assert FastLNCCLoss is FastLocalNormalizedCrossCorrelationLoss
    assert "kernel_size=9" in repr(loss)


def test_bad_arguments_raise():
    loss = FastLNCCLoss(spatial_dims=3, kernel_size=3)
    x = torch.rand(1, 1, 6, 6, 6)
    with pytest.raises(ValueError, match=r"target has shape .* different from pred.*same grid"):
        loss(x, torch.rand(1, 1, 6, 6, 5))
    with pytest.raises(ValueError, match=r"3 spatial dims.*spatial_dims=2"):
        loss(x[0], x[0])
    with pytest.raises(ValueError, match=r"odd.*use 5 instead"):
        FastLNCCLoss(kernel_size=4)
    with pytest.raises(ValueError, match="odd"):
        FastLNCCLoss(kernel_size=0)
    with pytest.raises(ValueError, match="spatial_dims"):
        FastLNCCLoss(spatial_dims=4)
    with pytest.raises(ValueError, match="unknown variant 'voxelmorph'"):
        FastLNCCLoss(variant="voxelmorph")
    with pytest.raises(ValueError, match="monai_lncc"):
        FastLNCCLoss(kernel_type="gaussian")
    with pytest.raises(ValueError):
        FastLNCCLoss(reduction="max")
    with pytest.raises(TypeError, match="floating point"):
        loss(x.long(), x.long())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel_size", [3, 9])
def test_cuda_float32_values_and_gradients_equal_monai_float64(kernel_size):
    """On a GPU (where MONAI's float32 convolutions may use TF32), against MONAI's float64 result there."""
    gen = torch.Generator().manual_seed(3)
    pred = torch.rand(2, 1, 40, 48, 36, generator=gen)
    target = 0.6 * pred + 0.4 * torch.rand(2, 1, 40, 48, 36, generator=gen)
    pred, target = pred.cuda(), target.cuda()
    ref_value, ref_gp, _ = _grads(_monai(3, kernel_size), pred.double(), target.double())
    value, gp, _ = _grads(FastLNCCLoss(3, kernel_size), pred, target)
    assert value.device.type == "cuda" and value.dtype == torch.float32
    assert abs(value.item() - ref_value.item()) <= 1e-5
    assert _close(gp.double(), ref_gp, 1e-5)
    cpu_value, cpu_gp, _ = _grads(FastLNCCLoss(3, kernel_size), pred.cpu(), target.cpu())
    assert abs(value.item() - cpu_value.item()) <= 1e-6 and _close(gp.cpu(), cpu_gp, 1e-5)
