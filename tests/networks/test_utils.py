# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch.nn import functional as F

from monai_sacb.networks import utils
from monai_sacb.networks.blocks import adaptive_conv, conv, matching, norm_act, warp
from monai_sacb.networks.utils import channels_last_format, is_exporting, use_cpu_kernels


def test_use_cpu_kernels_on_cpu_and_not_while_tracing():
    x = torch.rand(2, 3)
    assert use_cpu_kernels(x) and not is_exporting()
    assert not use_cpu_kernels(torch.empty(2, 3, device="meta"))
    seen = []

    def record(t):
        seen.append(use_cpu_kernels(t))
        return t + 1

    torch.jit.trace(record, x, check_trace=False)
    assert seen == [False]
    with mock.patch.object(utils, "is_exporting", return_value=True):
        assert not use_cpu_kernels(x)


def test_channels_last_format():
    assert channels_last_format(3) == torch.channels_last_3d
    assert channels_last_format(2) == torch.channels_last


@pytest.fixture
def plain():
    """Every block as it runs off the CPU (CUDA, export, compile): use_cpu_kernels answers False everywhere, also
    where utils.compiled_cpu_kernels asks it for the optional compiled kernels."""
    modules = (conv, norm_act, adaptive_conv, warp, matching, utils)
    patches = [mock.patch.object(m, "use_cpu_kernels", return_value=False) for m in modules]
    yield {m.__name__.rsplit(".", 1)[1]: p.start() for m, p in zip(modules, patches)}
    for p in patches:
        p.stop()


def _volume(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_conv_asks_the_seam_and_falls_back_to_f_conv(plain):
    x, weight, bias = _volume((1, 1, 8, 6, 5)), _volume((4, 1, 3, 3, 3), 1), _volume((4,), 2)
    out = conv.same_conv(x, weight, bias)
    assert plain["conv"].called
    assert torch.equal(out, F.conv3d(x, weight, bias, padding=1))


def test_norm_asks_the_seam_and_falls_back_to_instance_norm(plain):
    x = _volume((2, 4, 6, 5, 4))
    out = norm_act.instance_norm_leaky_relu(x, 0.1)
    assert plain["norm_act"].called
    assert torch.equal(out, F.leaky_relu(F.instance_norm(x), 0.1))


def test_adaptive_conv_asks_the_seam_and_falls_back_to_stacked(plain):
    x, weight = _volume((1, 3, 6, 5, 4)), _volume((2, 3, 3, 3, 3), 1)
    gains = torch.rand(1, 4, 27, generator=torch.Generator().manual_seed(2))
    assignments = torch.randint(0, 4, (1, 120), generator=torch.Generator().manual_seed(3))
    out = adaptive_conv.cluster_adaptive_conv(x, weight, gains, assignments)
    assert plain["adaptive_conv"].called
    assert torch.equal(out, adaptive_conv.cluster_adaptive_conv(x, weight, gains, assignments, method="stacked"))


def test_warp_asks_the_seam_and_falls_back_to_one_grid_sample(plain):
    image, ddf = _volume((1, 2, 6, 5, 4)), _volume((1, 3, 6, 5, 4), 1)
    with mock.patch.object(warp, "_grid_sample_in_slabs") as slabs:
        out = warp.warp_with_ddf(image, ddf)
    assert plain["warp"].called and not slabs.called
    expected = F.grid_sample(image, warp.ddf_sampling_grid(ddf), align_corners=True)
    assert torch.equal(out, expected)


def test_matching_asks_the_seam(plain):
    moving, fixed = _volume((1, 4, 6, 5, 4)), _volume((1, 4, 6, 5, 4), 1)
    with torch.no_grad():
        out = matching.similarity_matching_flow(moving, fixed)
    assert plain["matching"].called
    plain["matching"].return_value = True  # the CPU kernel: a reused buffer, the same sums
    with torch.no_grad():
        torch.testing.assert_close(matching.similarity_matching_flow(moving, fixed), out, rtol=0, atol=1e-6)


def test_cpu_bfloat16_is_fast_needs_onednn_bfloat16_and_amx():
    from monai_sacb.networks import cpu_bfloat16_is_fast

    expected = bool(
        torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        and getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    assert cpu_bfloat16_is_fast() is expected
    with torch.backends.mkldnn.flags(enabled=False):
        assert cpu_bfloat16_is_fast() is False
    with mock.patch.object(torch.cpu, "_is_amx_tile_supported", return_value=False, create=True):
        assert cpu_bfloat16_is_fast() is False
