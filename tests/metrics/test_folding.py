# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math

import pytest
import torch

from monai_sacb.metrics import FoldingMetric, percent_folding

SHAPE = (10, 6, 5)


@pytest.fixture
def fold(slab_fold):
    """float32 ddf folding slices 3..6 of 10 along axis 0: 40 % folded."""
    return slab_fold(SHAPE, 0, 3, 6).float()


# ------------------------------------------------------------------------------------------ percent_folding


def test_slab_fold_3d(slab_fold):
    ddf = slab_fold(SHAPE, axis=0, start=3, stop=6)  # 4 of 10 slices, the faces at det 0 included
    torch.testing.assert_close(percent_folding(ddf), torch.tensor([40.0], dtype=torch.float64))
    assert percent_folding(ddf.float()).item() == pytest.approx(40.0, abs=5e-6)


def test_slab_fold_2d_axis1(slab_fold):
    ddf = slab_fold((8, 12), axis=1, start=2, stop=4)  # 3 of 12 columns
    assert percent_folding(ddf).item() == pytest.approx(100.0 * 3 / 12, abs=5e-8)


def test_mask_and_border(slab_fold):
    ddf = torch.cat([slab_fold(SHAPE, 0, 3, 6), torch.zeros((1, 3, *SHAPE), dtype=torch.float64)])
    torch.testing.assert_close(percent_folding(ddf), torch.tensor([40.0, 0.0], dtype=torch.float64))
    # border 1 keeps 8 x 4 x 3 voxels, of which slices 3..6 (4 x 4 x 3) fold
    assert percent_folding(ddf, border=1)[0].item() == pytest.approx(50.0, abs=5e-8)
    # a mask over slices 0..4 keeps 5 slices, 2 of them folded
    mask = torch.zeros((2, 1, *SHAPE))
    mask[:, :, :5] = 1
    assert percent_folding(ddf, mask=mask)[0].item() == pytest.approx(40.0, abs=5e-8)
    # an empty region is NaN
    assert math.isnan(percent_folding(ddf, mask=torch.zeros((2, 1, *SHAPE)))[1].item())


def test_numpy_input(slab_fold):
    assert percent_folding(slab_fold(SHAPE, 0, 3, 6).numpy()).item() == pytest.approx(40.0, abs=5e-8)


def test_bad_input():
    with pytest.raises(ValueError, match="2 channels but 3 spatial dims"):
        percent_folding(torch.zeros(1, 2, 8, 8, 8))
    ddf = torch.zeros(1, 2, 8, 8)
    ddf[0, 1, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        percent_folding(ddf)
    ddf = torch.zeros(2, 3, 4, 4, 4)
    with pytest.raises(ValueError, match="mask must have shape"):
        percent_folding(ddf, mask=torch.ones(2, 1, 4, 4, 5))
    with pytest.raises(ValueError, match="border"):
        percent_folding(ddf, border=2)


# -------------------------------------------------------------------------------------------- FoldingMetric


def test_metric_two_batches(fold):
    zero = torch.zeros_like(fold)
    metric = FoldingMetric()
    out = metric(torch.cat([fold, zero]))
    assert tuple(out.shape) == (2, 1)
    metric(fold)
    assert metric.aggregate().item() == pytest.approx(80.0 / 3, abs=5e-5)
    torch.testing.assert_close(metric.aggregate("none"), torch.tensor([[40.0], [0.0], [40.0]]))
    torch.testing.assert_close(metric.aggregate("sum"), torch.tensor(80.0))
    metric.reset()
    metric(zero)
    assert metric.aggregate().item() == 0.0


def test_metric_mask_and_not_nans(fold):
    # y is an optional mask; an empty mask gives NaN, which the reduction skips and not_nans counts
    metric = FoldingMetric(get_not_nans=True)
    full = torch.ones((1, 1, *SHAPE))
    metric(fold, full)
    metric(torch.zeros_like(fold), torch.zeros_like(full))
    value, not_nans = metric.aggregate()
    assert value.item() == pytest.approx(40.0, abs=5e-5)
    assert not_nans.item() == 1


def test_metric_list_input_and_spacing_kwarg(fold):
    metric = FoldingMetric(border=1)
    out = metric([fold[0], torch.zeros_like(fold[0])])
    torch.testing.assert_close(out, torch.tensor([[50.0], [0.0]]))
    # read as mm with 2 mm voxels along axis 0, the slope is -1 voxel per voxel: det 0 on slices 4 and 5,
    # 0.5 on the slab faces; border 1 keeps slices 1..8, so 2 of 8 fold
    metric.reset()
    out = metric(fold, spacing=(2.0, 1.0, 1.0))
    assert out.item() == pytest.approx(25.0, abs=5e-5)
