# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math

import pytest
import torch

from monai_sacb.metrics import DDFCumulativeMetric


class MeanShift(DDFCumulativeMetric):
    """Mean of channel 0 over the mask (or the grid), scaled by the first spacing: a value easy to predict."""

    def _compute(self, ddf, mask, spacing):
        region = torch.ones_like(ddf[:, :1]) if mask is None else (mask != 0).to(ddf)
        scale = 1.0 if spacing is None else float(torch.as_tensor(spacing).flatten()[0])
        return scale * (ddf[:, 0:1] * region).flatten(1).sum(1) / region.flatten(1).sum(1)


def _constant(*values):
    """(len(values), 2, 4, 4) ddf whose channel 0 is ``values[b]`` for case b."""
    ddf = torch.zeros(len(values), 2, 4, 4)
    ddf[:, 0] = torch.tensor(values).view(-1, 1, 1)
    return ddf


def test_buffers_one_value_per_case_and_reduces():
    metric = MeanShift()
    out = metric(_constant(1.0, 3.0))
    torch.testing.assert_close(out, torch.tensor([[1.0], [3.0]]))
    metric(_constant(8.0))
    assert metric.aggregate().item() == pytest.approx(4.0, abs=1e-7)
    assert metric.aggregate("sum").item() == pytest.approx(12.0, abs=1e-7)
    torch.testing.assert_close(metric.aggregate("none"), torch.tensor([[1.0], [3.0], [8.0]]))
    metric.reset()
    metric(_constant(2.0))
    assert metric.aggregate().item() == 2.0


def test_mask_as_y_and_nan_skipped_with_not_nans():
    ddf = _constant(5.0, 5.0)
    ddf[:, 0, :2] = 1.0  # rows 0-1 hold 1, rows 2-3 hold 5
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2] = 1  # case 0: rows 0-1 only; case 1: empty mask -> 0 / 0 = NaN
    metric = MeanShift(reduction="mean", get_not_nans=True)
    out = metric(ddf, mask)
    assert out[0].item() == 1.0 and math.isnan(out[1].item())
    value, not_nans = metric.aggregate()
    assert value.item() == 1.0 and not_nans.item() == 1


def test_spacing_from_constructor_and_call():
    metric = MeanShift(spacing=2.0)
    assert metric(_constant(3.0)).item() == 6.0
    assert metric(_constant(3.0), spacing=0.5).item() == 1.5  # the keyword overrides the constructor
    assert MeanShift()(_constant(3.0)).item() == 3.0


def test_base_class_needs_compute():
    with pytest.raises(NotImplementedError, match="DDFCumulativeMetric must implement"):
        DDFCumulativeMetric()(_constant(1.0))
