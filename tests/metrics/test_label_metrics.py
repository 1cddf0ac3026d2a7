# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math

import pytest
import torch

from monai.data import MetaTensor, list_data_collate
from monai.metrics import compute_dice
from monai_sacb.metrics import (
    LabelDiceMetric,
    LabelHausdorffDistanceMetric,
    LabelSurfaceDistanceMetric,
    compute_label_dice,
    compute_label_hausdorff_distance,
    compute_label_surface_distance,
    present_labels,
)

NAN = float("nan")


def assert_close_nan(actual, expected, places=5):
    """Element-wise ``round(a - e, places) == 0``, NaN only where NaN is expected."""
    actual = torch.as_tensor(actual, dtype=torch.float64).flatten().tolist()
    expected = torch.as_tensor(expected, dtype=torch.float64).flatten().tolist()
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        if math.isnan(e):
            assert math.isnan(a), f"expected NaN, got {a} in {actual}"
        else:
            assert round(a - e, places) == 0, f"{actual} != {expected}"


# -------------------------------------------------------------------------------------------------- functions


def test_present_labels(label_pair):
    assert present_labels(label_pair.y) == [1, 2, 3, 4]
    assert present_labels(label_pair.y, background=None) == [0, 1, 2, 3, 4]
    assert present_labels(torch.tensor([[5, 0], [5, 2]]), background=5) == [0, 2]


def test_dice_hand_count(label_pair):
    dice = compute_label_dice(label_pair.y_pred, label_pair.y)
    assert tuple(dice.shape) == (1, 4)
    assert_close_nan(dice, [0.0, 0.0, 0.75, 0.0])
    # a given label list fixes the columns; label 9 is not in the fixed map -> NaN, 3 is 2 * 48 / 128
    assert_close_nan(compute_label_dice(label_pair.y_pred, label_pair.y, labels=[3, 9]), [0.75, NAN])
    # partial overlap by hand: 2 x 2 square vs 2 x 3 rectangle sharing 4 voxels -> 2 * 4 / (4 + 6) = 0.8
    a = torch.zeros(1, 1, 6, 6)
    b = torch.zeros(1, 1, 6, 6)
    a[0, 0, 1:3, 1:3] = 5
    b[0, 0, 1:3, 1:4] = 5
    assert compute_label_dice(a, b).item() == pytest.approx(0.8, abs=5e-7)


def test_dice_of_no_label_is_empty():
    zeros = torch.zeros(2, 1, 4, 4, dtype=torch.int64)
    assert compute_label_dice(zeros, zeros).shape == (2, 0)


def test_dice_matches_monai():
    # random maps with labels 0..5 and label 6 only in the prediction; 9 requested but in neither map
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 6, (3, 1, 9, 8, 7), generator=g)
    y_pred = torch.randint(0, 7, (3, 1, 9, 8, 7), generator=g)
    y[1][y[1] == 2] = 0  # label 2 missing from the fixed map of case 1
    y_pred[2][y_pred[2] == 4] = 1  # label 4 missing from the prediction of case 2
    labels = [5, 2, 9, 4, 1]
    ours = compute_label_dice(y_pred, y, labels=labels)
    ref = compute_dice(
        torch.cat([y_pred == v for v in labels], 1), torch.cat([y == v for v in labels], 1), ignore_empty=True
    )
    assert_close_nan(ours, ref)
    assert math.isnan(ours[1, 1].item()) and math.isnan(ours[0, 2].item())
    assert ours[2, 3].item() == 0.0


def test_hd95_assd_mm(label_pair):
    y_pred, y, spacing = label_pair.y_pred, label_pair.y, label_pair.spacing
    assert_close_nan(compute_label_hausdorff_distance(y_pred, y, labels=[1, 2, 4], spacing=spacing), [6.0, 3.0, NAN])
    assert_close_nan(compute_label_surface_distance(y_pred, y, labels=[1, 2, 4], spacing=spacing), [6.0, 3.0, NAN])
    # in voxels without spacing
    assert_close_nan(compute_label_hausdorff_distance(y_pred, y, labels=[1, 2]), [2.0, 3.0])
    # the full Hausdorff distance of the shifted boxes is the shift: 1 voxel * 3 mm
    hd = compute_label_hausdorff_distance(y_pred, y, labels=[3], percentile=None, spacing=spacing)
    assert hd.item() == pytest.approx(3.0, abs=5e-6)


def test_2d_and_per_case_spacing():
    # lines normal to axis 1, offset 2 voxels; case 0 spacing (1, 2) -> 4 mm, case 1 spacing (3, 0.5) -> 1 mm
    y = torch.zeros(2, 1, 12, 12)
    y_pred = torch.zeros(2, 1, 12, 12)
    y[:, 0, 2:9, 5] = 7
    y_pred[:, 0, 2:9, 7] = 7
    spacing = [(1.0, 2.0), (3.0, 0.5)]
    assert_close_nan(compute_label_hausdorff_distance(y_pred, y, spacing=spacing), [4.0, 1.0])
    assert_close_nan(compute_label_surface_distance(y_pred, y, spacing=spacing), [4.0, 1.0])


def test_surface_distance_symmetric_or_from_the_prediction():
    # a 3x3 square inside a 5x5 one: each of the 8 inner boundary pixels is 1 from the outer ring; of the 16 outer
    # ones, 12 are 1 from the inner ring and the 4 corners sqrt(2)
    y_pred = torch.zeros(1, 1, 9, 9, dtype=torch.int64)
    y = torch.zeros_like(y_pred)
    y_pred[0, 0, 3:6, 3:6] = 1
    y[0, 0, 2:7, 2:7] = 1
    assert compute_label_surface_distance(y_pred, y, symmetric=False).item() == pytest.approx(1.0, abs=1e-6)
    expected = (8 * 1.0 + 12 * 1.0 + 4 * math.sqrt(2)) / 24
    assert compute_label_surface_distance(y_pred, y).item() == pytest.approx(expected, abs=1e-6)
    metric = LabelSurfaceDistanceMetric(labels=[1], symmetric=False, spacing=2.0)
    assert metric(y_pred, y).item() == pytest.approx(2.0, abs=1e-6)


def test_bad_input(label_pair):
    with pytest.raises(ValueError, match="same shape"):
        compute_label_dice(label_pair.y_pred, label_pair.y[..., :10])
    with pytest.raises(ValueError, match=r"y_pred must be a label map of shape \(B, 1"):
        compute_label_dice(label_pair.y_pred.repeat(1, 2, 1, 1, 1), label_pair.y)
    with pytest.raises(ValueError, match="integer label values"):
        compute_label_hausdorff_distance(label_pair.y_pred.float() + 0.5, label_pair.y)


# ---------------------------------------------------------------------------------------------------- metrics


def test_per_label_and_mean(label_pair):
    metric = LabelDiceMetric(labels=[1, 2, 3, 4], get_not_nans=True)
    metric(label_pair.y_pred, label_pair.y)
    metric(label_pair.y.clone(), label_pair.y)  # a perfect second case
    value, not_nans = metric.aggregate()
    # MONAI's "mean": each case over its labels, then over the cases (not_nans counts cases)
    assert value.item() == pytest.approx((0.75 / 4 + 1.0) / 2, abs=5e-6)
    assert not_nans.item() == 2
    assert_close_nan(metric.aggregate("mean_batch")[0], [0.5, 0.5, 0.875, 0.5])
    assert_close_nan(metric.aggregate("none")[0], [[0, 0, 0.75, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize(
    "return_with_label, keys", [(True, ["label_3", "label_4"]), (["caudate", "putamen"], ["caudate", "putamen"])]
)
def test_return_with_label(label_pair, return_with_label, keys):
    metric = LabelDiceMetric(labels=[3, 4], reduction="mean_batch", return_with_label=return_with_label)
    metric(label_pair.y_pred, label_pair.y)
    result = metric.aggregate()
    assert list(result) == keys
    assert result[keys[0]] == pytest.approx(0.75, abs=5e-6)
    assert result[keys[1]] == 0.0


def test_labels_from_fixed_image(label_pair):
    # labels=None: the mean over the labels of each fixed map, NaN (HD) entries skipped
    y_pred, y, spacing = label_pair.y_pred, label_pair.y, label_pair.spacing
    out = LabelHausdorffDistanceMetric(spacing=spacing)(y_pred, y)
    assert tuple(out.shape) == (1, 1)
    label_3 = compute_label_hausdorff_distance(y_pred, y, labels=[3], spacing=spacing).item()
    assert out.item() == pytest.approx((6.0 + 3.0 + label_3) / 3, abs=5e-6)
    assert LabelDiceMetric()(y_pred, y).item() == pytest.approx(0.75 / 4, abs=5e-6)


def test_nan_and_not_nans_over_two_batches(label_pair):
    metric = LabelSurfaceDistanceMetric(labels=[1, 2, 4], spacing=label_pair.spacing, get_not_nans=True)
    metric(label_pair.y_pred, label_pair.y)
    # second batch of 2 cases: label 1 missing from both predictions, label 4 now present and identical
    y_pred = torch.cat([label_pair.y_pred, label_pair.y_pred])
    y_pred[y_pred == 1] = 0
    y_pred[:, :, 1:3, 14:17, 1:3] = 4
    metric(y_pred, torch.cat([label_pair.y, label_pair.y]))
    value, not_nans = metric.aggregate()
    # entries: case 0 [6, 3, nan] -> 4.5, cases 1-2 [nan, 3, 0] -> 1.5; then over the 3 cases
    assert not_nans.item() == 3
    assert value.item() == pytest.approx((4.5 + 1.5 + 1.5) / 3, abs=5e-6)
    total, entries = metric.aggregate("sum")
    assert total.item() == pytest.approx(15.0, abs=5e-5)
    assert entries.item() == 6
    per_label, counts = metric.aggregate("mean_batch")
    assert_close_nan(per_label, [6.0, 3.0, 0.0])
    assert_close_nan(counts, [1, 3, 2])


def test_spacing_sources(label_pair):
    # MetaTensor y: spacing from its affine; a spacing= keyword overrides it; plain tensors are in voxels
    y_pred, spacing = label_pair.y_pred, label_pair.spacing
    y = MetaTensor(label_pair.y.float(), affine=torch.diag(torch.tensor([*spacing, 1.0])))
    assert LabelHausdorffDistanceMetric(labels=[1])(y_pred, y).item() == pytest.approx(6.0, abs=5e-6)
    assert LabelSurfaceDistanceMetric(labels=[1])(y_pred, y).item() == pytest.approx(6.0, abs=5e-6)
    kw = LabelHausdorffDistanceMetric(labels=[1])(y_pred, y, spacing=(1.0, 1.0, 1.0))
    assert kw.item() == pytest.approx(2.0, abs=5e-6)
    assert LabelHausdorffDistanceMetric(labels=[1])(y_pred, label_pair.y).item() == pytest.approx(2.0, abs=5e-6)
    # a collated batch of MetaTensors gives one spacing per case (case 1: 2 mm along axis 0)
    affine1 = torch.diag(torch.tensor([2.0, spacing[1], spacing[2], 1.0]))
    batch = list_data_collate([y[0], MetaTensor(label_pair.y[0].float(), affine=affine1)])
    out = LabelHausdorffDistanceMetric(labels=[1, 2])(torch.cat([y_pred, y_pred]), batch)
    assert_close_nan(out, [[6.0, 3.0], [6.0, 6.0]])
    # decollated lists of channel-first MetaTensors keep their spacing
    out = LabelHausdorffDistanceMetric(labels=[2])([y_pred[0], y_pred[0]], [y[0], y[0]])
    assert_close_nan(out, [[3.0], [3.0]])


def test_needs_y(label_pair):
    with pytest.raises(ValueError, match="fixed label map"):
        LabelDiceMetric()(label_pair.y_pred)
