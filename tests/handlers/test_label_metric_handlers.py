# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math

import pytest
import torch

from monai.handlers import from_engine
from monai_sacb.handlers import LabelDice, LabelHausdorffDistance, LabelSurfaceDistance

TO_PAIR = from_engine(["pred_label", "label"])


@pytest.fixture
def outputs(label_pair):
    """Two iterations: the hand-counted pair, then a perfect prediction."""
    return [
        {"pred_label": label_pair.y_pred, "label": label_pair.y},
        {"pred_label": label_pair.y.clone(), "label": label_pair.y},
    ]


def test_label_dice(run_handler, outputs):
    value, details = run_handler(LabelDice(labels=[1, 2, 3, 4], output_transform=TO_PAIR), outputs)
    assert value == pytest.approx((0.75 / 4 + 1.0) / 2, abs=5e-6)
    torch.testing.assert_close(details, torch.tensor([[0.0, 0.0, 0.75, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    # labels found in the fixed maps, each case its mean over them
    value, _ = run_handler(LabelDice(output_transform=TO_PAIR), outputs)
    assert value == pytest.approx((0.75 / 4 + 1.0) / 2, abs=5e-6)


def test_label_dice_per_label_report(run_handler, outputs):
    handler = LabelDice(labels=[3, 4], reduction="mean_batch", return_with_label=True, output_transform=TO_PAIR)
    value, _ = run_handler(handler, outputs)
    assert set(value) == {"label_3", "label_4"}
    assert value["label_3"] == pytest.approx(0.875, abs=5e-6)
    assert value["label_4"] == pytest.approx(0.5, abs=5e-6)


def test_label_hd95(run_handler, outputs, label_pair):
    handler = LabelHausdorffDistance(labels=[1, 2, 4], spacing=label_pair.spacing, output_transform=TO_PAIR)
    value, details = run_handler(handler, outputs[:1])
    assert value == pytest.approx(4.5, abs=5e-6)  # (6 + 3) / 2, label 4 NaN and skipped
    assert math.isnan(details[0, 2].item())
    # the full Hausdorff distance of label 3 (boxes shifted by one 3 mm voxel)
    handler = LabelHausdorffDistance(labels=[3], percentile=None, spacing=label_pair.spacing, output_transform=TO_PAIR)
    value, _ = run_handler(handler, outputs[:1])
    assert value == pytest.approx(3.0, abs=5e-6)


def test_label_assd(run_handler, outputs, label_pair):
    handler = LabelSurfaceDistance(labels=[1, 2], spacing=label_pair.spacing, output_transform=TO_PAIR)
    value, _ = run_handler(handler, outputs)  # case 0: (6 + 3) / 2, case 1 identical: 0
    assert value == pytest.approx(2.25, abs=5e-6)


def test_label_assd_from_the_prediction_only(run_handler):
    # a 3x3 square inside a 5x5 one: every boundary pixel of the prediction is 1 pixel (2 mm) from the other ring
    y_pred = torch.zeros(1, 1, 9, 9, dtype=torch.int64)
    y = torch.zeros_like(y_pred)
    y_pred[0, 0, 3:6, 3:6] = 1
    y[0, 0, 2:7, 2:7] = 1
    handler = LabelSurfaceDistance(labels=[1], symmetric=False, spacing=2.0, output_transform=TO_PAIR)
    value, _ = run_handler(handler, [{"pred_label": y_pred, "label": y}])
    assert value == pytest.approx(2.0, abs=1e-6)
