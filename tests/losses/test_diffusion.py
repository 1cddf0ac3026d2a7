# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
from monai.losses import DiffusionLoss

from monai_sacb.losses import ForwardDiffusionLoss


def _ramp_ddf(shape, slopes):
    """ddf whose channel i is slopes[i] * coordinate along axis i, shape (1, 3, *shape)."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    return torch.stack([a * g for a, g in zip(slopes, grids)])[None]


def test_diffusion_of_a_linear_ramp_matches_hand_computation():
    # channel 0 = 0.5 * x, channel 1 = 0, channel 2 = 0.2 * z: forward differences are 0.5 (axis 0 of
    # channel 0) and 0.2 (axis 2 of channel 2), zero elsewhere. Per axis, the mean over the 3 channels is
    # 0.25 / 3 (axis 0), 0 (axis 1), 0.04 / 3 (axis 2); the mean over the 3 axes is 0.29 / 9.
    ddf = _ramp_ddf((8, 10, 12), (0.5, 0.0, 0.2))
    expected = (0.5**2 + 0.2**2) / 9
    assert ForwardDiffusionLoss()(ddf).item() == pytest.approx(expected, rel=1e-6)
    # MONAI's central-difference DiffusionLoss sums over axes: 3x on an affine field (documented)
    assert DiffusionLoss()(ddf).item() == pytest.approx(3 * expected, rel=1e-5)


def test_diffusion_hand_computation_random_field():
    torch.manual_seed(1)
    ddf = torch.randn(2, 3, 5, 6, 7)
    per_axis = [
        ((ddf[:, :, 1:] - ddf[:, :, :-1]) ** 2).mean(),
        ((ddf[:, :, :, 1:] - ddf[:, :, :, :-1]) ** 2).mean(),
        ((ddf[..., 1:] - ddf[..., :-1]) ** 2).mean(),
    ]
    assert ForwardDiffusionLoss()(ddf).item() == pytest.approx(sum(per_axis).item() / 3, rel=1e-6)
    assert ForwardDiffusionLoss(reduction="none")(ddf).shape == (2,)


def test_forward_diffusion_penalises_a_checkerboard():
    ddf = torch.zeros(1, 2, 6, 6)
    ddf[:, :, ::2] = 1.0  # alternates along axis 0
    assert DiffusionLoss()(ddf).item() == 0.0  # central differences miss it
    assert ForwardDiffusionLoss()(ddf).item() == pytest.approx(0.5)  # axis 0: 1, axis 1: 0


def test_sum_and_none_reductions_by_hand():
    # 2D, case 0: u = (x, 0) on a 3 x 4 grid: axis 0 has 2 x 4 differences of 1 in channel 0 (sum 8), axis 1 none;
    # case 1: zero. "sum" adds everything, "none" is each case's mean over axes of the per-axis means.
    ddf = torch.zeros(2, 2, 3, 4)
    ddf[0, 0] = torch.arange(3.0).view(3, 1)
    assert ForwardDiffusionLoss(reduction="sum")(ddf).item() == 8.0
    # case 0: axis 0 mean over (2 channels x 2 x 4) = 8 / 16 = 0.5, axis 1 mean 0 -> 0.25
    torch.testing.assert_close(ForwardDiffusionLoss(reduction="none")(ddf), torch.tensor([0.25, 0.0]))
    assert ForwardDiffusionLoss()(ddf).item() == 0.125


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 3), (3, 2, 5, 4)])
def test_gradient_equals_autograd_of_the_formula(reduction, shape):
    torch.manual_seed(3)
    ddf = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(shape[0], dtype=torch.float64) if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)
    per_axis = []
    for dim in range(2, ddf.ndim):
        squares = (torch.diff(ddf, dim=dim) ** 2).flatten(1)
        per_axis.append(squares.sum(1) if reduction == "sum" else squares.mean(1))
    stacked = torch.stack(per_axis, 1)
    expected = {"sum": stacked.sum(), "none": stacked.mean(1), "mean": stacked.mean()}[reduction]
    out = ForwardDiffusionLoss(reduction=reduction)(ddf)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad((out * weight).sum(), ddf)
    (reference,) = torch.autograd.grad((expected * weight).sum(), ddf)
    torch.testing.assert_close(grad, reference, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: ForwardDiffusionLoss(reduction=reduction)(t), (ddf,))


@pytest.mark.parametrize(
    "shape, match", [((1, 2, 4, 4, 4), "spatial_dims channels"), ((1, 2, 4, 1), "must be > 1"), ((4,), "spatial_dims")]
)
def test_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        ForwardDiffusionLoss()(torch.zeros(shape))
