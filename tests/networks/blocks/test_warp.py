# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import Warp
from torch.nn import functional as F

from monai_sacb.networks.blocks.warp import ddf_sampling_grid, warp_with_ddf

pytestmark = pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp")


@pytest.mark.parametrize("shape", [(1, 4, 6, 5, 7), (2, 3, 12, 4, 5), (1, 1, 6, 8, 4), (2, 2, 9, 7)])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_equals_monai_warp_values_and_gradients(shape, padding_mode, threads):
    generator = torch.Generator().manual_seed(0)
    spatial_dims = len(shape) - 2
    image = torch.randn(shape, generator=generator, dtype=torch.float64)
    if shape[1] > 1:  # channels-last input, as inside SACBNet
        image = image.contiguous(memory_format=torch.channels_last_3d if spatial_dims == 3 else torch.channels_last)
    ddf = torch.randn(shape[0], spatial_dims, *shape[2:], generator=generator, dtype=torch.float64) * 2
    image.requires_grad_(True)
    ddf.requires_grad_(True)
    out = warp_with_ddf(image, ddf, padding_mode)
    expected = Warp(mode="bilinear", padding_mode=padding_mode)(image, ddf)
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grad = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    grads = torch.autograd.grad(out, (image, ddf), grad)
    ref_grads = torch.autograd.grad(expected, (image, ddf), grad)
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 3, 8, 6, 5), (2, 2, 5, 7), (1, 1, 4, 1, 3)])
def test_grid_without_gradient_equals_the_differentiable_one(shape):
    # inference builds the sampling grid in two passes; the arithmetic, and so every bit, is the same
    generator = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        ddf = torch.randn(shape[0], len(shape) - 2, *shape[2:], generator=generator, dtype=dtype) * 3
        with torch.no_grad():
            fast = ddf_sampling_grid(ddf)
        assert torch.equal(fast, ddf_sampling_grid(ddf.clone().requires_grad_(True)).detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_out_receives_the_warp_even_when_it_is_the_image(dtype, threads):
    generator = torch.Generator().manual_seed(2)
    image = torch.randn(1, 4, 6, 8, 5, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    ddf = torch.randn(1, 3, 6, 8, 5, generator=generator) * 2
    expected = warp_with_ddf(image, ddf)
    assert warp_with_ddf(image, ddf, out=image) is image
    assert torch.equal(image, expected) and image.is_contiguous(memory_format=torch.channels_last_3d)
    with pytest.raises(ValueError, match="out must have"):
        warp_with_ddf(image, ddf, out=torch.empty(1, 3, 6, 8, 5))


def test_padding_mode_matters_and_identity_is_exact():
    image = torch.rand(1, 2, 6, 6, 6)
    zero = torch.zeros(1, 3, 6, 6, 6)
    torch.testing.assert_close(warp_with_ddf(image, zero), image, rtol=0, atol=1e-6)
    outside = torch.full((1, 3, 6, 6, 6), 10.0)
    assert warp_with_ddf(image, outside, "zeros").abs().max() == 0
    assert warp_with_ddf(image, outside, "border").abs().min() > 0


def test_bad_ddf_shape_raises_value_error():
    with pytest.raises(ValueError, match="ddf must be"):
        warp_with_ddf(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 2, 4, 4, 4))


@pytest.mark.parametrize("shape", [(1, 2, 6, 5, 7), (2, 1, 12, 4, 5), (2, 3, 9, 7)])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_nearest_equals_monai_warp(shape, padding_mode, threads):
    generator = torch.Generator().manual_seed(1)
    spatial_dims = len(shape) - 2
    image = torch.randn(shape, generator=generator)
    ddf = torch.randn(shape[0], spatial_dims, *shape[2:], generator=generator) * 3
    out = warp_with_ddf(image, ddf, padding_mode, mode="nearest")
    expected = Warp(mode="nearest", padding_mode=padding_mode)(image, ddf)
    assert torch.equal(out, expected)
    # every output value is one of the input's (or the zero padding): nothing is interpolated
    assert set(out.unique().tolist()) <= set(image.unique().tolist()) | {0.0}


def test_bicubic_2d_equals_monai_warp():
    generator = torch.Generator().manual_seed(2)
    image = torch.randn(2, 2, 9, 7, generator=generator, dtype=torch.float64)
    ddf = torch.randn(2, 2, 9, 7, generator=generator, dtype=torch.float64)
    expected = Warp(mode="bicubic", padding_mode="border")(image, ddf)
    torch.testing.assert_close(warp_with_ddf(image, ddf, "border", "bicubic"), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int16, torch.uint8, torch.bool])
def test_integer_labels_keep_their_values_and_dtype_under_nearest(dtype, threads):
    generator = torch.Generator().manual_seed(3)
    top = 2 if dtype == torch.bool else 200
    labels = torch.randint(0, top, (1, 1, 12, 6, 5), generator=generator).to(dtype)
    ddf = torch.randn(1, 3, 12, 6, 5, generator=generator) * 2.5
    out = warp_with_ddf(labels, ddf, "border", mode="nearest")
    assert out.dtype == dtype and out.shape == labels.shape
    expected = Warp(mode="nearest", padding_mode="border")(labels.float(), ddf)
    assert torch.equal(out, expected.to(dtype))
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())


def test_integer_image_under_bilinear_is_rounded_into_its_dtype():
    image = torch.tensor([[[0, 10, 20, 30]]], dtype=torch.int32)[..., None].expand(1, 1, 4, 3).contiguous()
    ddf = torch.zeros(1, 2, 4, 3)
    ddf[:, 0] = 0.26  # a quarter of the way to the next row, plus a little: 2.6 -> 3, 12.6 -> 13
    out = warp_with_ddf(image, ddf, "border")
    assert out.dtype == torch.int32
    assert out[0, 0, :, 0].tolist() == [3, 13, 23, 30]


def test_ddf_takes_the_floating_image_dtype():
    image = torch.rand(1, 2, 6, 6, 6, dtype=torch.float64)
    ddf = torch.rand(1, 3, 6, 6, 6)
    out = warp_with_ddf(image, ddf)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, warp_with_ddf(image, ddf.double()), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_images_are_sampled_at_float32_positions(dtype):
    """A half-precision image keeps its dtype, but the sampling positions are not rounded to it."""
    size = 256  # positions near 255 are 1 apart in bfloat16: a 0.3-voxel shift would be lost
    image = torch.sin(torch.arange(size, dtype=torch.float64) / 7).view(1, 1, 1, 1, size).expand(1, 1, 2, 2, size)
    image = image.to(dtype)
    ddf = torch.zeros(1, 3, 2, 2, size)
    ddf[:, 2] = 0.3
    out = warp_with_ddf(image, ddf)
    assert out.dtype == dtype
    expected = warp_with_ddf(image.float(), ddf).to(dtype)  # float32 warp, one rounding
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(warp_with_ddf(image, ddf), expected, rtol=0, atol=0)


def test_bad_mode_and_complex_image():
    with pytest.raises(ValueError, match="mode must be one of"):
        warp_with_ddf(torch.rand(1, 1, 4, 4), torch.rand(1, 2, 4, 4), mode="trilinear")
    with pytest.raises(ValueError, match="real-valued"):
        warp_with_ddf(torch.rand(1, 1, 4, 4).to(torch.complex64), torch.rand(1, 2, 4, 4))


@pytest.fixture
def deterministic_gpu_paths(monkeypatch):
    """The formulations a GPU takes under torch.use_deterministic_algorithms(True), forced on the CPU."""
    import monai_sacb.networks.blocks.warp as warp_module

    monkeypatch.setattr(warp_module, "deterministic_backward_needed", lambda *tensors: True)


@pytest.mark.parametrize("shape", [(1, 4, 6, 5, 7), (2, 3, 12, 4, 5), (2, 2, 9, 7)])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_gather_warp_equals_grid_sample_values_and_gradients(shape, padding_mode, deterministic_gpu_paths):
    generator = torch.Generator().manual_seed(5)
    spatial_dims = len(shape) - 2
    image = torch.randn(shape, generator=generator, dtype=torch.float64)
    ddf = torch.randn(shape[0], spatial_dims, *shape[2:], generator=generator, dtype=torch.float64) * 3  # some outside
    grad = torch.randn(shape, generator=generator, dtype=torch.float64)
    results = []
    for formulation in ("gathers", "grid_sample"):
        leaf_image, leaf_ddf = image.clone().requires_grad_(True), ddf.clone().requires_grad_(True)
        if formulation == "gathers":
            out = warp_with_ddf(leaf_image, leaf_ddf, padding_mode)
        else:
            out = Warp(mode="bilinear", padding_mode=padding_mode)(leaf_image, leaf_ddf)
        results.append((out, *torch.autograd.grad(out, (leaf_image, leaf_ddf), grad)))
    for mine, expected in zip(*results):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-10)


def test_gather_warp_refuses_reflection_padding(deterministic_gpu_paths):
    image, ddf = torch.rand(1, 1, 4, 5, 6, requires_grad=True), torch.zeros(1, 3, 4, 5, 6)
    with pytest.raises(ValueError, match="use 'zeros' or 'border'"):
        warp_with_ddf(image, ddf, "reflection")


@pytest.mark.parametrize("sizes", [((5, 7, 6), (10, 14, 12)), ((9, 4, 6), (5, 7, 6)), ((6, 8), (12, 3))])
def test_linear_resize_equals_interpolate_values_and_gradients(sizes, deterministic_gpu_paths):
    from torch.nn import functional as F

    from monai_sacb.networks.blocks.warp import linear_resize

    old, new = sizes
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, *old, generator=generator, dtype=torch.float64, requires_grad=True)
    out = linear_resize(x, new)
    expected = F.interpolate(x, size=new, mode="trilinear" if len(old) == 3 else "bilinear", align_corners=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


def test_deterministic_formulations_only_for_gpu_gradients():
    from monai_sacb.networks.utils import deterministic_backward_needed

    cpu = torch.zeros(2, requires_grad=True)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert not deterministic_backward_needed(cpu)  # PyTorch's CPU kernels are deterministic
        meta = torch.zeros(2, device="meta", requires_grad=True)
        assert deterministic_backward_needed(cpu, meta)
        with torch.no_grad():
            assert not deterministic_backward_needed(meta)
        torch.use_deterministic_algorithms(False)
        assert not deterministic_backward_needed(meta)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_warp_under_deterministic_algorithms_repeats_bitwise():
    generator = torch.Generator().manual_seed(7)
    image = torch.randn(1, 8, 24, 20, 28, generator=generator).cuda()
    ddf = (torch.randn(1, 3, 24, 20, 28, generator=generator) * 3).cuda()
    grad = torch.randn(image.shape, generator=generator).cuda()

    def run():
        leaf_image, leaf_ddf = image.clone().requires_grad_(True), ddf.clone().requires_grad_(True)
        out = warp_with_ddf(leaf_image, leaf_ddf)
        return (out, *torch.autograd.grad(out, (leaf_image, leaf_ddf), grad))

    default = run()
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b, c in zip(first, second, default):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


@pytest.fixture
def compiled_warp_calls(monkeypatch):
    """Turns the compiled kernels on (skips without numba) and counts the compiled warps."""
    numba_kernels = pytest.importorskip("monai_sacb.networks.blocks.numba_kernels")
    pytest.importorskip("numba")
    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    calls = []
    original = numba_kernels.trilinear_warp_

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(numba_kernels, "trilinear_warp_", counted)
    return calls


@pytest.mark.parametrize("shape", [(1, 8, 12, 10, 14), (2, 3, 6, 9, 5), (1, 1, 7, 6, 8), (1, 2, 5, 1, 4), (2, 3, 1, 3, 1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_compiled_trilinear_warp_is_grid_sample_bit_for_bit(shape, layout, padding_mode, compiled_warp_calls, threads):
    """The numba warp (no gradient, float32, 3D), which computes each voxel's sampling position from the ddf itself,
    against PyTorch's grid_sample on the grid of ddf_sampling_grid: every bit, with positions outside the volume, on
    its faces and on whole voxels (floor and the corner weights' edge cases), axes of one voxel, any ddf layout."""
    generator = torch.Generator().manual_seed(3)
    image = torch.randn(shape, generator=generator)
    ddf = torch.randn(shape[0], 3, *shape[2:], generator=generator) * 3
    ddf[..., ::2] = ddf[..., ::2].round()  # whole-voxel positions, some exactly on the faces
    ddf[:, :, 0] = -torch.arange(shape[3], dtype=ddf.dtype).view(-1, 1)  # onto the first face
    if layout == "channels_last":
        image = image.contiguous(memory_format=torch.channels_last_3d)
        ddf = ddf.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        out = warp_with_ddf(image, ddf, padding_mode)
        grid = ddf_sampling_grid(ddf)
    expected = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    assert len(compiled_warp_calls) == 1 and out.is_contiguous() and out.dtype == image.dtype
    assert torch.equal(out.view(torch.int32), expected.contiguous().view(torch.int32))  # -0.0 and 0.0 too


def test_compiled_warp_only_without_gradient_and_where_it_applies(compiled_warp_calls):
    generator = torch.Generator().manual_seed(4)
    image = torch.randn(1, 2, 6, 5, 4, generator=generator)
    ddf = torch.randn(1, 3, 6, 5, 4, generator=generator)
    ddf.requires_grad_(True)
    warped = warp_with_ddf(image, ddf)
    assert not compiled_warp_calls and warped.grad_fn is not None  # autograd: grid_sample
    ddf = ddf.detach()
    warp_with_ddf(image, ddf, padding_mode="reflection")
    warp_with_ddf(image, ddf, mode="nearest")
    warp_with_ddf(image.double(), ddf.double())
    warp_with_ddf(image[..., 0], ddf[:, :2, ..., 0])  # 2D
    assert not compiled_warp_calls
    bfloat16 = warp_with_ddf(image.bfloat16(), ddf)  # sampled in float32 like grid_sample's path
    assert len(compiled_warp_calls) == 1 and bfloat16.dtype == torch.bfloat16
    assert torch.equal(bfloat16, warp_with_ddf(image.bfloat16().float(), ddf).bfloat16())


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("destination", ["new", "in_place", "float32_out", "other_layout_out"])
def test_compiled_warp_of_bfloat16_rounds_like_pytorch(layout, destination, compiled_warp_calls, threads):
    """A bfloat16 image is read and its result rounded by the kernel itself: the same bits as converting the image to
    float32, grid_sample and converting back (ties to even, which half-voxel shifts of bfloat16 values produce
    often), whatever the memory formats, into a new tensor or into ``out``, the image itself included."""
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(1, 8, 6, 7, 9, generator=generator).bfloat16()
    ddf = torch.randn(1, 3, 6, 7, 9, generator=generator) * 2
    ddf[:, :, :3] = 0.5  # midway between voxels along every axis: sums of bfloat16 halves, ties when rounded
    if layout == "channels_last":
        image = image.contiguous(memory_format=torch.channels_last_3d)
    sampled = F.grid_sample(image.float(), ddf_sampling_grid(ddf), align_corners=True)
    expected = sampled.bfloat16()
    ties = ((sampled.view(torch.int32) & 0xFFFF) == 0x8000).sum()  # float32 values midway between two bfloat16
    out = {
        "new": None,
        "in_place": image,
        "float32_out": torch.empty(image.shape),
        "other_layout_out": torch.empty(image.shape, dtype=torch.bfloat16).contiguous(
            memory_format=torch.contiguous_format if layout == "channels_last" else torch.channels_last_3d
        ),
    }[destination]
    if destination == "float32_out":
        expected = sampled
    with torch.no_grad():
        warped = warp_with_ddf(image, ddf, out=out)
    assert len(compiled_warp_calls) == 1 and ties > 0
    assert warped is out if out is not None else warped.dtype == torch.bfloat16
    bits = torch.int32 if warped.dtype == torch.float32 else torch.int16
    assert torch.equal(warped.contiguous().view(bits), expected.contiguous().view(bits))
