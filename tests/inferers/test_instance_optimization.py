# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from monai_sacb.inferers import (
    InstanceOptimization,
    finetune_network,
    level_shape,
    refine_ddf,
    resize_ddf,
    resize_image,
)
from monai_sacb.inferers.instance_optimization import _box_smooth
from monai_sacb.losses import RegistrationLoss
from monai_sacb.metrics import compute_label_dice, percent_folding
from monai_sacb.networks.blocks import ddf_sampling_grid, warp_with_ddf

# small and quick: two levels, a few dozen steps
FAST = {"levels": (2, 1), "steps": (40, 10), "lr": 0.1}


def coords(shape, dtype=torch.float32):
    """(1, len(shape), *shape) voxel coordinates, channel i = index along axis i."""
    axes = [torch.arange(n, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def blob(shape):
    """(1, 1, *shape) smooth image: an off-centre ellipsoid blob plus a fainter second one, values in [0, ~1]."""
    p = coords(shape)
    size = torch.tensor(shape, dtype=torch.float32).view(1, -1, *([1] * len(shape)))
    x = p / (size - 1)  # in [0, 1]
    centre1 = torch.tensor([0.45, 0.5, 0.55][: len(shape)]).view(1, -1, *([1] * len(shape)))
    centre2 = torch.tensor([0.7, 0.35, 0.4][: len(shape)]).view(1, -1, *([1] * len(shape)))
    radii = torch.tensor([0.22, 0.18, 0.2][: len(shape)]).view(1, -1, *([1] * len(shape)))
    r1 = (((x - centre1) / radii) ** 2).sum(1, keepdim=True)
    r2 = (((x - centre2) / 0.1) ** 2).sum(1, keepdim=True)
    return torch.exp(-r1 ** 2) + 0.5 * torch.exp(-r2)


def smooth_field(shape, amplitude=2.0, phase=0.0):
    """(1, D, *shape) smooth displacement in voxels, one sine period over the grid, at most ``amplitude``."""
    p = coords(shape)
    size = torch.tensor(shape, dtype=torch.float32).view(1, -1, *([1] * len(shape)))
    x = p / (size - 1)
    channels = []
    for i in range(len(shape)):
        j = (i + 1) % len(shape)
        channels.append(amplitude * torch.sin(2 * math.pi * x[:, j] + phase + i) * torch.sin(math.pi * x[:, i]))
    return torch.stack(channels, 1)


def make_pair(shape, amplitude=2.0, phase=0.0):
    moving = blob(shape)
    true_ddf = smooth_field(shape, amplitude, phase)
    fixed = warp_with_ddf(moving, true_ddf, padding_mode="border")
    return moving, fixed, true_ddf


def warp_label(label, ddf):
    return F.grid_sample(label.float(), ddf_sampling_grid(ddf), mode="nearest", align_corners=True).long()


def dice(moving_label, fixed_label, ddf):
    return compute_label_dice(warp_label(moving_label, ddf), fixed_label).mean().item()


def full_loss(moving, fixed, ddf):
    loss = RegistrationLoss(reg_weight=1.0, spatial_dims=moving.ndim - 2)
    return loss(warp_with_ddf(moving, ddf, padding_mode="border"), fixed, ddf).item()


@pytest.fixture(scope="module")
def pair3d():
    return make_pair((24, 24, 24), amplitude=2.5)


@pytest.fixture(scope="module")
def refined3d(pair3d):
    moving, fixed, _ = pair3d
    io = InstanceOptimization(**FAST)
    return io, io(moving, fixed)


# ---------------------------------------------------------------------------------------------- level geometry


def test_level_shape():
    assert level_shape((80, 96, 80), 4) == (20, 24, 20)
    assert level_shape((81, 97, 7), 2) == (41, 49, 4)
    assert level_shape((16, 16), 1) == (16, 16)
    with pytest.raises(ValueError, match="factor"):
        level_shape((16, 16), 0)


def test_resize_ddf_constant_field_scales_by_grid_ratio():
    ddf = torch.ones(1, 3, 17, 33, 9) * torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1, 1, 1)
    coarse = resize_ddf(ddf, (5, 9, 3))
    expected = torch.tensor([2.0 * 4 / 16, -1.0 * 8 / 32, 0.5 * 2 / 8]).view(1, 3, 1, 1, 1).expand_as(coarse)
    torch.testing.assert_close(coarse, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(resize_ddf(coarse, (17, 33, 9)), ddf, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(20, 24, 18), (21, 16, 19), (30, 22)])
def test_resize_ddf_affine_round_trip_is_exact(shape):
    torch.manual_seed(0)
    spatial_dims = len(shape)
    matrix = torch.randn(spatial_dims, spatial_dims, dtype=torch.float64) * 0.1
    offset = torch.randn(spatial_dims, dtype=torch.float64)
    p = coords(shape, torch.float64)
    ddf = torch.einsum("ij,bj...->bi...", matrix, p) + offset.view(1, -1, *([1] * spatial_dims))
    for factor in (2, 4):
        small = level_shape(shape, factor)
        coarse = resize_ddf(ddf, small)
        # the coarse field is the same affine map in coarse voxels: u_c(q) = u(q * s) / s, s = (N - 1) / (n - 1)
        s = torch.tensor([(n - 1) / (m - 1) for n, m in zip(shape, small)], dtype=torch.float64)
        q = coords(small, torch.float64)
        fine_positions = q * s.view(1, -1, *([1] * spatial_dims))
        expected = torch.einsum("ij,bj...->bi...", matrix, fine_positions) + offset.view(1, -1, *([1] * spatial_dims))
        expected = expected / s.view(1, -1, *([1] * spatial_dims))
        torch.testing.assert_close(coarse, expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(resize_ddf(coarse, shape), ddf, rtol=0, atol=1e-10)


def test_coarse_warp_matches_fine_warp():
    """A field on the coarse grid warps the coarse image as its upsampling warps the fine image (linear image)."""
    shape = (21, 17, 25)
    p = coords(shape, torch.float64)
    image = (1.0 + 0.3 * p[:, :1] - 0.2 * p[:, 1:2] + 0.1 * p[:, 2:3])  # linear: interpolation is exact
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64).view(1, 3, 1, 1, 1)
    ddf = -0.1 * (p - centre)  # a 10 % zoom about the centre: every sample stays inside the grid
    small = (6, 5, 7)
    coarse_image = F.interpolate(image, size=small, mode="trilinear", align_corners=True)
    coarse_warp = warp_with_ddf(coarse_image, resize_ddf(ddf, small))
    fine_warp_sampled = F.interpolate(warp_with_ddf(image, ddf), size=small, mode="trilinear", align_corners=True)
    torch.testing.assert_close(coarse_warp, fine_warp_sampled, rtol=0, atol=1e-10)


def test_resize_image_keeps_a_constant_and_has_the_level_shape():
    image = torch.full((2, 1, 18, 22, 13), 3.0)
    out = resize_image(image, 4)
    assert out.shape == (2, 1, *level_shape((18, 22, 13), 4))
    torch.testing.assert_close(out, torch.full_like(out, 3.0))
    assert resize_image(image, 1) is image


@pytest.mark.parametrize("shape", [(1, 3, 7, 5, 9), (2, 2, 6, 11), (1, 3, 3, 4, 3)])
def test_box_smooth_equals_avg_pool_without_padding_counts(shape):
    torch.manual_seed(1)
    field = torch.randn(shape, dtype=torch.float64)
    pool = F.avg_pool2d if len(shape) == 4 else F.avg_pool3d
    expected = field
    for _ in range(3):
        expected = pool(expected, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    torch.testing.assert_close(_box_smooth(field, 3), expected, rtol=0, atol=1e-12)
    assert _box_smooth(field, 0) is field
    constant = torch.full(shape, 2.5)
    torch.testing.assert_close(_box_smooth(constant, 4), constant)


def test_box_smooth_gradient_is_the_avg_pool_gradient():
    torch.manual_seed(2)
    field = torch.randn(1, 3, 7, 5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1, 3, 7, 5, 6, dtype=torch.float64)
    expected = field
    for _ in range(4):
        expected = F.avg_pool3d(expected, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    (grad,) = torch.autograd.grad((_box_smooth(field, 4) * weight).sum(), field)
    (reference,) = torch.autograd.grad((expected * weight).sum(), field)
    torch.testing.assert_close(grad, reference, rtol=0, atol=1e-12)


def test_box_smooth_on_two_voxels_averages_them():
    field = torch.tensor([[[1.0, 3.0], [5.0, 9.0]]])  # (1, 1, 2, 2): an axis of 2 voxels is averaged
    torch.testing.assert_close(_box_smooth(field[None], 1)[0], torch.full((1, 2, 2), 4.5))


# ------------------------------------------------------------------------------------------------ refinement


def test_refinement_lowers_the_loss(pair3d, refined3d):
    moving, fixed, _ = pair3d
    io, ddf = refined3d
    assert ddf.shape == (1, 3, 24, 24, 24)
    assert not ddf.requires_grad
    before, after = full_loss(moving, fixed, torch.zeros_like(ddf)), full_loss(moving, fixed, ddf)
    assert after < before - 0.05, (before, after)
    # the recorded history: one list per level, decreasing over each level
    assert len(io.last_losses) == 2 and [len(h) for h in io.last_losses] == [41, 11]
    assert all(h[-1] < h[0] for h in io.last_losses)


def test_refinement_raises_dice_and_does_not_fold(pair3d, refined3d):
    moving, fixed, _ = pair3d
    _, ddf = refined3d
    moving_label, fixed_label = (moving > 0.5).long(), (fixed > 0.5).long()
    before, after = dice(moving_label, fixed_label, torch.zeros_like(ddf)), dice(moving_label, fixed_label, ddf)
    assert before < 0.85 and after > before + 0.05, (before, after)
    assert percent_folding(ddf).item() < 0.1


def test_refinement_approaches_the_true_field(pair3d, refined3d):
    moving, fixed, true_ddf = pair3d
    _, ddf = refined3d
    inside = (moving > 0.2) | (fixed > 0.2)  # the field is only observable where the image has structure
    err_before = true_ddf.norm(dim=1, keepdim=True)[inside].mean()
    err_after = (ddf - true_ddf).norm(dim=1, keepdim=True)[inside].mean()
    assert err_after < 0.6 * err_before, (err_before, err_after)


def test_initial_ddf_is_kept_where_it_is_good(pair3d):
    """Started from the true field, a refinement stays near it (the parameter is a residual, not a new field)."""
    moving, fixed, true_ddf = pair3d
    io = InstanceOptimization(levels=(2, 1), steps=(10, 5), lr=0.05)
    from_true, from_zero = io(moving, fixed, true_ddf), io(moving, fixed)
    inside = (moving > 0.2) | (fixed > 0.2)
    err_true = (from_true - true_ddf).norm(dim=1, keepdim=True)[inside].mean()
    err_zero = (from_zero - true_ddf).norm(dim=1, keepdim=True)[inside].mean()
    # not exactly the true field: the regularised loss has its minimum elsewhere (lower than the true field's)
    assert err_true < 0.5 and err_true < 0.4 * err_zero, (err_true, err_zero)
    assert full_loss(moving, fixed, from_true) < full_loss(moving, fixed, true_ddf)


def test_zero_steps_returns_the_initial_ddf(pair3d):
    moving, fixed, true_ddf = pair3d
    out = InstanceOptimization(steps=0)(moving, fixed, true_ddf)
    assert torch.equal(out, true_ddf)
    assert out is not true_ddf
    zeros = InstanceOptimization(levels=(2, 1), steps=(0, 0))(moving, fixed)
    assert torch.equal(zeros, torch.zeros(1, 3, 24, 24, 24))


def test_batch_equals_samples_one_by_one():
    shape = (20, 20, 20)
    m1, f1, _ = make_pair(shape, amplitude=2.0)
    m2, f2, _ = make_pair(shape, amplitude=1.5, phase=1.0)
    init = torch.cat([torch.zeros(1, 3, *shape), 0.3 * smooth_field(shape, 1.0)])
    io = InstanceOptimization(levels=(2, 1), steps=(20, 5))
    batch = io(torch.cat([m1, m2]), torch.cat([f1, f2]), init)
    one = io(m1, f1, init[:1])
    two = io(m2, f2, init[1:])
    torch.testing.assert_close(batch, torch.cat([one, two]), rtol=0, atol=1e-5)
    assert not torch.allclose(one, two)


def test_deterministic(pair3d):
    moving, fixed, _ = pair3d
    io = InstanceOptimization(levels=(2, 1), steps=(10, 3))
    assert torch.equal(io(moving, fixed), io(moving, fixed))


def test_2d_refinement():
    shape = (40, 36)
    moving, fixed, _ = make_pair(shape, amplitude=2.5)
    moving_label, fixed_label = (moving > 0.5).long(), (fixed > 0.5).long()
    ddf = refine_ddf(moving, fixed, levels=(4, 2, 1), steps=(40, 30, 10))
    assert ddf.shape == (1, 2, *shape)
    zero = torch.zeros_like(ddf)
    assert full_loss(moving, fixed, ddf) < full_loss(moving, fixed, zero) - 0.05
    assert dice(moving_label, fixed_label, ddf) > dice(moving_label, fixed_label, zero) + 0.05
    assert percent_folding(ddf).item() < 0.1


def test_works_under_no_grad_and_inference_mode(pair3d):
    moving, fixed, _ = pair3d
    io = InstanceOptimization(levels=(2,), steps=(5,))
    reference = io(moving, fixed)
    with torch.no_grad():
        a = io(moving, fixed)
    with torch.inference_mode():
        b = io(moving.clone(), fixed.clone(), torch.zeros(1, 3, 24, 24, 24))
    torch.testing.assert_close(a, reference, rtol=0, atol=0)
    torch.testing.assert_close(b, reference, rtol=0, atol=0)
    assert not a.requires_grad and not b.requires_grad


def test_custom_loss_float64_and_progress(pair3d):
    moving, fixed, _ = pair3d
    calls = []

    def mse_loss(warped, fixed_level, ddf):
        calls.append(tuple(warped.shape))
        return F.mse_loss(warped, fixed_level) + 0.1 * (ddf**2).mean()

    io = InstanceOptimization(levels=(4, 1), steps=(3, 2), loss=mse_loss, progress=True, padding_mode="zeros")
    out = io(moving.double(), fixed.double())
    assert out.dtype == torch.float64
    assert calls[0] == (1, 1, 6, 6, 6) and calls[-1] == (1, 1, 24, 24, 24)
    assert len(calls) == 3 + 1 + 2 + 1  # steps plus one final evaluation per level


def test_smoothing_keeps_the_field_smoother(pair3d):
    moving, fixed, _ = pair3d
    kwargs = {"levels": (2, 1), "steps": (20, 10), "lr": 0.1}
    rough = InstanceOptimization(smoothing=0, **kwargs)(moving, fixed)
    smooth = InstanceOptimization(smoothing=4, **kwargs)(moving, fixed)

    def roughness(ddf):
        return sum((torch.diff(ddf, dim=d) ** 2).mean() for d in (2, 3, 4)).item()

    assert roughness(smooth) < roughness(rough)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(pair3d):
    moving, fixed, _ = pair3d
    io = InstanceOptimization(levels=(2, 1), steps=(10, 3))
    cpu = io(moving, fixed)
    gpu = io(moving.cuda(), fixed.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-3)


def test_the_deterministic_gpu_warp_optimises_like_the_default(pair3d, monkeypatch):
    """The gather-based warp a GPU takes under torch.use_deterministic_algorithms(True), forced on the CPU, leads
    the optimisation where grid_sample does (to the tolerance CUDA is held to against the CPU)."""
    import monai_sacb.networks.blocks.warp as warp_module

    moving, fixed, _ = pair3d
    io = InstanceOptimization(levels=(2, 1), steps=(10, 3))
    default = io(moving, fixed)
    calls = []

    def forced(*tensors):
        calls.append(1)
        return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)

    monkeypatch.setattr(warp_module, "deterministic_backward_needed", forced)
    gathered = io(moving, fixed)
    assert len(calls) >= 13  # a warp per step
    torch.testing.assert_close(gathered, default, rtol=0, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_under_deterministic_algorithms_repeats_bitwise(pair3d, monkeypatch):
    import os

    monkeypatch.setitem(os.environ, "CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    moving, fixed, _ = pair3d
    io = InstanceOptimization(levels=(2, 1), steps=(10, 3))
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        first, second = io(moving.cuda(), fixed.cuda()), io(moving.cuda(), fixed.cuda())
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(first, second)
    torch.testing.assert_close(first.cpu(), io(moving, fixed), rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "moving_shape, fixed_shape, ddf_shape, kwargs, match",
    [
        ((1, 1, 16, 16, 16), (1, 1, 16, 16, 17), None, {}, "same shape"),
        ((1, 1, 16, 16, 16), (1, 1, 16, 16, 16), (1, 2, 16, 16, 16), {}, "ddf must have shape"),
        ((1, 1, 16, 16, 16), (1, 1, 16, 16, 16), (2, 3, 16, 16, 16), {}, "ddf must have shape"),
        ((1, 1, 16), (1, 1, 16), None, {}, r"\(B, C, H, W\)"),
        ((1, 1, 16, 16, 1), (1, 1, 16, 16, 1), None, {}, ">= 2"),
        ((1, 1, 16, 16, 6), (1, 1, 16, 16, 6), None, {"levels": (8, 1), "steps": 1}, "smaller factors"),
    ],
)
def test_bad_shapes_raise(moving_shape, fixed_shape, ddf_shape, kwargs, match):
    ddf = None if ddf_shape is None else torch.zeros(ddf_shape)
    with pytest.raises(ValueError, match=match):
        InstanceOptimization(**kwargs)(torch.rand(moving_shape), torch.rand(fixed_shape), ddf)


@pytest.mark.parametrize("which", ["moving", "fixed", "ddf"])
def test_non_finite_inputs_raise(which):
    inputs = {"moving": torch.rand(1, 1, 8, 8, 8), "fixed": torch.rand(1, 1, 8, 8, 8)}
    inputs["ddf"] = torch.zeros(1, 3, 8, 8, 8)
    inputs[which][0, 0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=f"{which} contains NaN"):
        InstanceOptimization(levels=(1,), steps=1)(inputs["moving"], inputs["fixed"], inputs["ddf"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"levels": ()}, "levels"),
        ({"levels": (4, 0)}, "levels"),
        ({"levels": (2.5,)}, "levels"),
        ({"levels": (4, 2, 1), "steps": (10, 5)}, "one per level"),
        ({"steps": -1}, "steps must be >= 0"),
        ({"steps": "abc"}, r"steps must be one whole number or one per level \(3\), got 'abc'"),
        ({"steps": (10, 2.5, 1)}, r"steps must be one whole number or one per level \(3\), got \(10, 2.5, 1\)"),
        ({"steps": 2.5}, "steps must be one whole number"),
        ({"lr": "0.1"}, "lr must be one number"),
        ({"lr": (0.1, None, 0.1)}, "lr must be one number"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"reg_weight": -1.0}, "reg_weight"),
        ({"padding_mode": "edge"}, "padding_mode"),
        ({"loss": "lncc"}, "callable"),
        ({"smoothing": -1}, "smoothing"),
        ({"smoothing": 1.5}, "smoothing"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InstanceOptimization(**kwargs)


# -------------------------------------------------------------------------------------------- network mode


class TinyNet(nn.Module):
    """moving, fixed -> (warped, ddf): one convolution, small initial output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(2, 3, 3, padding=1)
        nn.init.normal_(self.conv.weight, std=1e-3)
        nn.init.zeros_(self.conv.bias)

    def forward(self, moving, fixed):
        ddf = self.conv(torch.cat([moving, fixed], 1))
        return warp_with_ddf(moving, ddf), ddf


def test_finetune_network_lowers_the_loss_and_keeps_the_network(pair3d):
    moving, fixed, _ = pair3d
    net = TinyNet()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        start = net(moving, fixed)[1]
    ddf = finetune_network(net, moving, fixed, steps=10, lr=1e-2)
    assert ddf.shape == (1, 3, 24, 24, 24) and not ddf.requires_grad
    assert full_loss(moving, fixed, ddf) < full_loss(moving, fixed, start) - 0.01
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())
    torch.testing.assert_close(finetune_network(net, moving, fixed, steps=0), start)
