# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from monai_sacb.networks import InstanceNormLeakyReLU, instance_norm_leaky_relu
from monai_sacb.networks.blocks.numba_kernels import numba_kernels

try:
    import numba  # noqa: F401

    HAS_NUMBA = True
except ImportError:
    HAS_NUMBA = False


@pytest.fixture(params=["eager", "numba"])
def bfloat16_kernel(request, monkeypatch):
    """Each bfloat16 test runs with the eager chunked kernel and with the compiled one (when numba is installed)."""
    if request.param == "numba" and not HAS_NUMBA:
        pytest.skip("numba is not installed")
    monkeypatch.setenv("MONAI_SACB_NUMBA", "1" if request.param == "numba" else "0")
    assert (numba_kernels() is not None) == (request.param == "numba")
    return request.param


def _layout(x, name):
    if name == "channels_last":
        return x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
    return x.contiguous()


def _reference(x, slope=0.1):
    return F.leaky_relu(F.instance_norm(x, eps=1e-5), slope)


@pytest.mark.parametrize("shape", [(2, 8, 6, 5, 7), (3, 4, 9, 10), (1, 16, 4, 4, 4), (2, 3, 5, 4, 1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last"])
def test_forward_and_gradient_equal_pytorch(shape, layout, grad_layout):
    generator = torch.Generator().manual_seed(0)
    x = _layout(torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + 2, layout).requires_grad_(True)
    grad = _layout(torch.randn(shape, generator=generator, dtype=torch.float64), grad_layout)
    out = instance_norm_leaky_relu(x)
    expected = _reference(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert out.stride() == x.stride()  # the memory format is kept
    (dx,) = torch.autograd.grad(out, x, grad)
    (ref,) = torch.autograd.grad(expected, x, grad)
    torch.testing.assert_close(dx, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("inplace", [False, True])
def test_other_memory_layouts_equal_pytorch(inplace):
    """A transposed view is neither contiguous nor channels-last; its flattened voxels are not a view of it."""
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(2, 4, 5, 6, 7, generator=generator, dtype=torch.float64) * 0.5 + 3
    x = base.transpose(2, 3)
    expected = _reference(x)
    out = instance_norm_leaky_relu(x, inplace=inplace)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert out.stride() == x.stride()
    if inplace:
        torch.testing.assert_close(base.transpose(2, 3), expected, rtol=1e-12, atol=1e-12)
    leaf = base.clone().transpose(2, 3).requires_grad_(True)
    (dx,) = torch.autograd.grad(instance_norm_leaky_relu(leaf).sum(), leaf)
    (ref,) = torch.autograd.grad(_reference(leaf).sum(), leaf)
    torch.testing.assert_close(dx, ref, rtol=1e-10, atol=1e-10)


def test_gradcheck_and_identity_slope():
    x = torch.randn(2, 3, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: instance_norm_leaky_relu(t * 2 + 1), (x,))
    assert torch.autograd.gradcheck(lambda t: instance_norm_leaky_relu(t, negative_slope=1.0), (x,))
    torch.testing.assert_close(instance_norm_leaky_relu(x, negative_slope=1.0), F.instance_norm(x))


def test_inplace_overwrites_and_out_of_place_does_not():
    x = torch.randn(2, 4, 5, 6, 7)
    kept = x.clone()
    out = instance_norm_leaky_relu(x)
    assert torch.equal(x, kept)
    same = InstanceNormLeakyReLU(inplace=True)(x)
    assert same.data_ptr() == x.data_ptr()
    torch.testing.assert_close(same, out, rtol=0, atol=0)


def test_bfloat16_is_normalised_in_float32_and_stays_bfloat16(bfloat16_kernel):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 7, 5, generator=generator) * 4 + 20  # a mean 5 SDs from zero
    x = x.contiguous(memory_format=torch.channels_last_3d).bfloat16()
    expected = _reference(x.double()).to(torch.bfloat16)
    out = instance_norm_leaky_relu(x)
    assert out.dtype == torch.bfloat16 and out.stride() == x.stride()
    # one bfloat16 rounding of the float32 result: within one unit in the last place of the exact answer
    torch.testing.assert_close(out.float(), expected.float(), rtol=2**-7, atol=1e-2)
    same = instance_norm_leaky_relu(x, inplace=True)
    assert same.data_ptr() == x.data_ptr()
    torch.testing.assert_close(same, out, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted"])
@pytest.mark.parametrize("shape", [(2, 8, 40, 36, 48), (1, 3, 64, 80), (3, 1, 5, 7, 3), (2, 3, 5, 4, 1)])
def test_bfloat16_in_chunks_equals_float64_reference(shape, layout, monkeypatch, bfloat16_kernel):
    """Many chunks (a small chunk size), every memory layout, a mean far from zero: one rounding from exact."""
    import monai_sacb.networks.blocks.norm_act as norm_act

    monkeypatch.setattr(norm_act, "_CHUNK_ELEMENTS", 4096)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator) * 0.5 + 30  # a mean 60 SDs from zero
    x = (x.transpose(2, 3) if layout == "permuted" else _layout(x, layout)).bfloat16()
    expected = _reference(x.double())
    out = instance_norm_leaky_relu(x)
    assert out.dtype == torch.bfloat16 and out.stride() == x.stride()
    torch.testing.assert_close(out.double(), expected, rtol=2**-7, atol=2e-2)
    assert (out.double() - expected).abs().mean() < 2e-3  # no bias from the statistics, only rounding


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("shape", [(2, 8, 32, 24, 40), (1, 16, 10, 12, 10), (2, 64, 5, 6, 5)])
def test_compiled_and_eager_bfloat16_kernels_agree(shape, monkeypatch):
    """The same rounding of nearly the same statistics (float64 sums in one, float32 chunk sums in the other):
    equal but for rare one-step differences of bfloat16."""
    generator = torch.Generator().manual_seed(2)
    x = (torch.randn(shape, generator=generator) * 3 + 10).contiguous(memory_format=torch.channels_last_3d)
    x = x.bfloat16()
    results = {}
    for switch in ("0", "1"):
        monkeypatch.setenv("MONAI_SACB_NUMBA", switch)
        results[switch] = instance_norm_leaky_relu(x)
    eager, compiled = results["0"].float(), results["1"].float()
    differ = eager != compiled
    assert differ.float().mean() < 1e-3
    assert ((eager - compiled).abs()[differ] <= 2**-7 * compiled.abs()[differ] + 1e-6).all()  # one bfloat16 step


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("shape", [(1, 4, 2, 2, 2), (2, 64, 5, 6, 5)])
def test_compiled_bfloat16_kernel_runs_at_every_size(shape, monkeypatch):
    """No size threshold: down to a few voxels the compiled kernel costs no more than the eager one (0.08-0.1 ms)."""
    import monai_sacb.networks.blocks.numba_kernels as kernels_module

    calls = []
    original = kernels_module.bfloat16_instance_norm_leaky_relu_
    counted = lambda *args: calls.append(1) or original(*args)  # noqa: E731
    monkeypatch.setattr(kernels_module, "bfloat16_instance_norm_leaky_relu_", counted)
    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    instance_norm_leaky_relu(torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last_3d))
    assert calls == [1]


def test_constant_bfloat16_input_gives_zeros(bfloat16_kernel):
    x = torch.full((2, 8, 4, 6, 8), 3.5).contiguous(memory_format=torch.channels_last_3d).bfloat16()
    out = instance_norm_leaky_relu(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, torch.zeros_like(out))


def test_low_precision_with_gradient_uses_pytorch_instance_norm():
    x = torch.randn(1, 4, 8, 8, 8)
    low = x.bfloat16().requires_grad_(True)
    out = instance_norm_leaky_relu(low)
    assert out.dtype == torch.bfloat16 and out.grad_fn is not None
    torch.testing.assert_close(out.float(), _reference(x), rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert low.grad is not None and torch.isfinite(low.grad.float()).all()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_training_runs_the_fused_function_and_equals_pytorch(layout, tf32, monkeypatch, saved_storages):
    """GPU training takes the fused function (one saved tensor, not two) with float32 statistics, TF32 or not."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    generator = torch.Generator().manual_seed(3)
    x64 = torch.randn(2, 8, 24, 20, 28, generator=generator, dtype=torch.float64) * 3 + 20  # mean 7 SDs out
    grad = torch.randn(x64.shape, generator=generator, dtype=torch.float64)
    leaf64 = x64.clone().requires_grad_(True)
    expected = _reference(leaf64)
    (expected_dx,) = torch.autograd.grad(expected, leaf64, grad)

    x = _layout(x64.float().cuda(), layout).requires_grad_(True)
    with saved_storages() as fused:
        out = instance_norm_leaky_relu(x * 1.0, inplace=True)
    assert type(out.grad_fn).__name__ == "_InstanceNormLeakyReLUBackward" and out.stride() == x.stride()
    (dx,) = torch.autograd.grad(out, x, grad.float().cuda())
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx.double().cpu(), expected_dx, rtol=1e-4, atol=1e-4)
    with saved_storages() as plain:
        _reference(x * 1.0)
    # the output alone (and per-channel values) against the input and the output
    assert sum(fused.values()) < 0.6 * sum(plain.values())
    with torch.no_grad():  # inference keeps PyTorch's kernels
        assert instance_norm_leaky_relu(x).grad_fn is None


@needs_cuda
def test_cuda_amp_training_stays_float16_and_is_as_accurate_as_pytorch():
    """Under CUDA autocast a convolution's float16 output is normalised with float32 statistics and stays float16;
    its errors against float64 are those of PyTorch's own float16 norm (rounding, and the LeakyReLU's kink)."""
    generator = torch.Generator().manual_seed(4)
    x16 = (torch.randn(2, 8, 24, 20, 28, generator=generator) * 3 + 20).half()
    grad16 = torch.randn(x16.shape, generator=generator).half()
    leaf64 = x16.double().requires_grad_(True)
    expected = _reference(leaf64)
    (expected_dx,) = torch.autograd.grad(expected, leaf64, grad16.double())
    errors = {}
    for name, fn in {"fused": instance_norm_leaky_relu, "pytorch": _reference}.items():
        x = x16.cuda().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.float16):
            out = fn(x * 1.0)
        (dx,) = torch.autograd.grad(out, x, grad16.cuda())
        assert out.dtype == torch.float16 and dx.dtype == torch.float16
        errors[name] = (
            float((out.detach().double().cpu() - expected).abs().mean()),
            float((dx.double().cpu() - expected_dx).abs().mean()),
        )
    assert errors["fused"][0] <= 1.2 * errors["pytorch"][0] + 1e-4
    assert errors["fused"][1] <= 1.2 * errors["pytorch"][1] + 1e-4
