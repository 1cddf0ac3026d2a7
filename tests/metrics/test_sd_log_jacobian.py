# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_sacb.metrics import SDLogJacobianMetric, sd_log_jacobian

# ------------------------------------------------------------------------------------------ sd_log_jacobian


def test_affine_is_zero(grid):
    a = torch.tensor([[1.2, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 1.1]], dtype=torch.float64)
    ddf = torch.einsum("ij,bj...->bi...", a - torch.eye(3, dtype=torch.float64), grid((6, 5, 7))) - 1.5
    ddf = torch.cat([ddf, torch.zeros_like(ddf)])
    torch.testing.assert_close(sd_log_jacobian(ddf), torch.zeros(2, dtype=torch.float64))
    assert sd_log_jacobian(ddf.float()).abs().max().item() < 1e-6
    ddf2 = 0.3 * (grid((8, 9)) - 4.0)  # 2D scaling
    assert sd_log_jacobian(ddf2).abs().item() < 1e-12


def test_quadratic_known_value(quadratic_field):
    ddf, interior, full = quadratic_field()
    # population std of the log determinants, each slice along axis 0 equally weighted
    assert sd_log_jacobian(ddf).item() == pytest.approx(float(np.std(np.log(full))), abs=5e-13)
    assert sd_log_jacobian(ddf, border=1).item() == pytest.approx(float(np.std(np.log(interior))), abs=5e-13)
    # a mask keeping slices 1 and 2 (det 1.1 and 1.2): std = |log 1.2 - log 1.1| / 2
    mask = torch.zeros((1, 1, *ddf.shape[2:]))
    mask[:, :, 1:3] = 1
    assert sd_log_jacobian(ddf, mask=mask).item() == pytest.approx(math.log(1.2 / 1.1) / 2, abs=5e-13)


@pytest.mark.parametrize("eps", [1e-9, 1e-3])
def test_clip_floor(slab_fold, eps):
    # 4 of 10 slices have det <= 0, clipped to eps: values log(eps) with share 0.4, else 0
    ddf = slab_fold((10, 6, 5), axis=0, start=3, stop=6)
    expected = -math.log(eps) * math.sqrt(0.4 * 0.6)
    assert sd_log_jacobian(ddf, eps=eps).item() == pytest.approx(expected, abs=5e-10)


def test_bad_input(slab_fold):
    with pytest.raises(ValueError, match="eps"):
        sd_log_jacobian(slab_fold((10, 6, 5), 0, 3, 6), eps=0.0)
    with pytest.raises(ValueError, match="3 channels but 2 spatial dims"):
        sd_log_jacobian(torch.zeros(1, 3, 8, 8))
    ddf = torch.zeros(1, 3, 4, 4, 4)
    ddf[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sd_log_jacobian(ddf)


# -------------------------------------------------------------------------------------- SDLogJacobianMetric


def test_metric_two_batches(quadratic_field):
    ddf, _, full = quadratic_field()
    metric = SDLogJacobianMetric(reduction="mean", get_not_nans=True)
    metric(torch.cat([ddf, torch.zeros_like(ddf)]))
    metric(ddf)
    value, not_nans = metric.aggregate()
    assert value.item() == pytest.approx(2 * float(np.std(np.log(full))) / 3, abs=5e-7)
    assert not_nans.item() == 3
    assert tuple(metric.aggregate("none")[0].shape) == (3, 1)


def test_metric_border_eps_and_mask(quadratic_field, slab_fold):
    ddf, _, full = quadratic_field()
    metric = SDLogJacobianMetric(border=1)
    metric(ddf)
    assert metric.aggregate().item() == pytest.approx(float(np.std(np.log(full[1:-1]))), abs=5e-7)
    # the constructor's eps reaches the function: the folded share 0.4 sits at log(1e-3)
    fold = slab_fold((10, 6, 5), 0, 3, 6)
    out = SDLogJacobianMetric(eps=1e-3)(fold)
    assert out.item() == pytest.approx(-math.log(1e-3) * math.sqrt(0.4 * 0.6), abs=5e-10)
    # y is a mask: slices 1 and 2 of the quadratic field
    mask = torch.zeros((1, 1, *ddf.shape[2:]))
    mask[:, :, 1:3] = 1
    assert SDLogJacobianMetric()(ddf, mask).item() == pytest.approx(math.log(1.2 / 1.1) / 2, abs=5e-13)
