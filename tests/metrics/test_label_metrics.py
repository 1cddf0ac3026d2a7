# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math
import unittest

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
SPACING = (1.0, 2.0, 3.0)


def make_pair():
    """
    Fixed y and warped moving y_pred, (1, 1, 24, 20, 20), spacing (1, 2, 3) mm:

    - label 1: one-voxel-thick 6x6 plates normal to axis 2, y_pred at z=4, y at z=6: every boundary voxel is
      2 voxels * 3 mm = 6 mm from the other plate (HD95 = ASSD = 6), no overlap (Dice 0).
    - label 2: plates normal to axis 0, y_pred at x=12, y at x=15: 3 voxels * 1 mm = 3 mm; Dice 0.
    - label 3: 4x4x4 boxes, y_pred shifted by 1 voxel along axis 2: overlap 3*4*4 = 48 of 64 + 64 (Dice 0.75);
      the largest boundary distance is that 1-voxel shift, 3 mm (HD with percentile=None).
    - label 4: only in y (absent from the prediction): Dice 0, HD and ASSD NaN.
    - label 9: only in y_pred (not in the fixed map): not evaluated unless asked, then NaN.
    """
    y = torch.zeros(1, 1, 24, 20, 20, dtype=torch.int64)
    y_pred = torch.zeros_like(y)
    y_pred[0, 0, 3:9, 3:9, 4] = 1
    y[0, 0, 3:9, 3:9, 6] = 1
    y_pred[0, 0, 12, 12:18, 12:18] = 2
    y[0, 0, 15, 12:18, 12:18] = 2
    y_pred[0, 0, 18:22, 2:6, 11:15] = 3
    y[0, 0, 18:22, 2:6, 10:14] = 3
    y[0, 0, 1:3, 14:17, 1:3] = 4
    y_pred[0, 0, 1:3, 1:3, 16:18] = 9
    return y_pred, y


def assert_close_nan(test, actual, expected, places=5):
    actual = torch.as_tensor(actual, dtype=torch.float64).flatten().tolist()
    expected = torch.as_tensor(expected, dtype=torch.float64).flatten().tolist()
    test.assertEqual(len(actual), len(expected))
    for a, e in zip(actual, expected):
        if math.isnan(e):
            test.assertTrue(math.isnan(a), f"expected NaN, got {a} in {actual}")
        else:
            test.assertAlmostEqual(a, e, places=places, msg=f"{actual} != {expected}")


class TestLabelFunctions(unittest.TestCase):
    def setUp(self):
        self.y_pred, self.y = make_pair()

    def test_present_labels(self):
        self.assertEqual(present_labels(self.y), [1, 2, 3, 4])
        self.assertEqual(present_labels(self.y, background=None), [0, 1, 2, 3, 4])

    def test_dice_hand_count(self):
        dice = compute_label_dice(self.y_pred, self.y)
        self.assertEqual(tuple(dice.shape), (1, 4))
        assert_close_nan(self, dice, [0.0, 0.0, 0.75, 0.0])
        # a given label list fixes the columns; label 9 is not in the fixed map -> NaN, 3 is 2 * 48 / 128
        assert_close_nan(self, compute_label_dice(self.y_pred, self.y, labels=[3, 9]), [0.75, NAN])
        # partial overlap by hand: 2 x 2 square vs 2 x 3 rectangle sharing 4 voxels -> 2 * 4 / (4 + 6) = 0.8
        a = torch.zeros(1, 1, 6, 6)
        b = torch.zeros(1, 1, 6, 6)
        a[0, 0, 1:3, 1:3] = 5
        b[0, 0, 1:3, 1:4] = 5
        self.assertAlmostEqual(compute_label_dice(a, b).item(), 0.8, places=6)

    def test_dice_matches_monai(self):
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
        assert_close_nan(self, ours, ref)
        self.assertTrue(math.isnan(ours[1, 1].item()) and math.isnan(ours[0, 2].item()))
        self.assertEqual(ours[2, 3].item(), 0.0)

    def test_hd95_assd_mm(self):
        hd95 = compute_label_hausdorff_distance(self.y_pred, self.y, labels=[1, 2, 4], spacing=SPACING)
        assert_close_nan(self, hd95, [6.0, 3.0, NAN])
        assd = compute_label_surface_distance(self.y_pred, self.y, labels=[1, 2, 4], spacing=SPACING)
        assert_close_nan(self, assd, [6.0, 3.0, NAN])
        # in voxels without spacing
        assert_close_nan(self, compute_label_hausdorff_distance(self.y_pred, self.y, labels=[1, 2]), [2.0, 3.0])
        # the full Hausdorff distance of the shifted boxes is the shift: 1 voxel * 3 mm
        hd = compute_label_hausdorff_distance(self.y_pred, self.y, labels=[3], percentile=None, spacing=SPACING)
        self.assertAlmostEqual(hd.item(), 3.0, places=5)

    def test_2d_and_per_case_spacing(self):
        # lines normal to axis 1, offset 2 voxels; case 0 spacing (1, 2) -> 4 mm, case 1 spacing (3, 0.5) -> 1 mm
        y = torch.zeros(2, 1, 12, 12)
        y_pred = torch.zeros(2, 1, 12, 12)
        y[:, 0, 2:9, 5] = 7
        y_pred[:, 0, 2:9, 7] = 7
        spacing = [(1.0, 2.0), (3.0, 0.5)]
        assert_close_nan(self, compute_label_hausdorff_distance(y_pred, y, spacing=spacing), [4.0, 1.0])
        assert_close_nan(self, compute_label_surface_distance(y_pred, y, spacing=spacing), [4.0, 1.0])

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, "same shape"):
            compute_label_dice(self.y_pred, self.y[..., :10])
        with self.assertRaisesRegex(ValueError, r"y_pred must be a label map of shape \(B, 1"):
            compute_label_dice(self.y_pred.repeat(1, 2, 1, 1, 1), self.y)
        with self.assertRaisesRegex(ValueError, "integer label values"):
            compute_label_hausdorff_distance(self.y_pred.float() + 0.5, self.y)


class TestLabelMetrics(unittest.TestCase):
    def setUp(self):
        self.y_pred, self.y = make_pair()

    def test_per_label_and_mean(self):
        metric = LabelDiceMetric(labels=[1, 2, 3, 4], get_not_nans=True)
        metric(self.y_pred, self.y)
        y_pred2 = self.y.clone()  # a perfect second case
        metric(y_pred2, self.y)
        value, not_nans = metric.aggregate()
        # MONAI's "mean": each case over its labels, then over the cases (not_nans counts cases)
        self.assertAlmostEqual(value.item(), (0.75 / 4 + 1.0) / 2, places=5)
        self.assertEqual(not_nans.item(), 2)
        per_label = metric.aggregate("mean_batch")[0]
        assert_close_nan(self, per_label, [0.5, 0.5, 0.875, 0.5])
        assert_close_nan(self, metric.aggregate("none")[0], [[0, 0, 0.75, 0], [1, 1, 1, 1]])

    def test_return_with_label(self):
        metric = LabelDiceMetric(labels=[3, 4], reduction="mean_batch", return_with_label=True)
        metric(self.y_pred, self.y)
        result = metric.aggregate()
        self.assertEqual(list(result), ["label_3", "label_4"])
        self.assertAlmostEqual(result["label_3"], 0.75, places=5)

    def test_labels_from_fixed_image(self):
        # labels=None: the mean over the labels of each fixed map, NaN (HD) entries skipped
        metric = LabelHausdorffDistanceMetric(spacing=SPACING)
        out = metric(self.y_pred, self.y)
        self.assertEqual(tuple(out.shape), (1, 1))
        labels_1_to_3 = compute_label_hausdorff_distance(self.y_pred, self.y, labels=[3], spacing=SPACING).item()
        self.assertAlmostEqual(out.item(), (6.0 + 3.0 + labels_1_to_3) / 3, places=5)
        dice = LabelDiceMetric()(self.y_pred, self.y)
        self.assertAlmostEqual(dice.item(), 0.75 / 4, places=5)

    def test_nan_and_not_nans_over_two_batches(self):
        metric = LabelSurfaceDistanceMetric(labels=[1, 2, 4], spacing=SPACING, get_not_nans=True)
        metric(self.y_pred, self.y)
        # second batch of 2 cases: label 1 missing from both predictions, label 4 now present and identical
        y_pred = torch.cat([self.y_pred, self.y_pred])
        y_pred[y_pred == 1] = 0
        y_pred[:, :, 1:3, 14:17, 1:3] = 4
        metric(y_pred, torch.cat([self.y, self.y]))
        value, not_nans = metric.aggregate()
        # entries: case 0 [6, 3, nan] -> 4.5, cases 1-2 [nan, 3, 0] -> 1.5; then over the 3 cases
        self.assertEqual(not_nans.item(), 3)
        self.assertAlmostEqual(value.item(), (4.5 + 1.5 + 1.5) / 3, places=5)
        total, entries = metric.aggregate("sum")
        self.assertAlmostEqual(total.item(), 15.0, places=4)
        self.assertEqual(entries.item(), 6)
        per_label, counts = metric.aggregate("mean_batch")
        assert_close_nan(self, per_label, [6.0, 3.0, 0.0])
        assert_close_nan(self, counts, [1, 3, 2])

    def test_spacing_sources(self):
        # MetaTensor y: spacing from its affine; a spacing= keyword overrides it; plain tensors are in voxels
        y = MetaTensor(self.y.float(), affine=torch.diag(torch.tensor([*SPACING, 1.0])))
        self.assertAlmostEqual(LabelHausdorffDistanceMetric(labels=[1])(self.y_pred, y).item(), 6.0, places=5)
        self.assertAlmostEqual(LabelSurfaceDistanceMetric(labels=[1])(self.y_pred, y).item(), 6.0, places=5)
        kw = LabelHausdorffDistanceMetric(labels=[1])(self.y_pred, y, spacing=(1.0, 1.0, 1.0))
        self.assertAlmostEqual(kw.item(), 2.0, places=5)
        self.assertAlmostEqual(LabelHausdorffDistanceMetric(labels=[1])(self.y_pred, self.y).item(), 2.0, places=5)
        # a collated batch of MetaTensors gives one spacing per case (case 1: 2 mm along axis 0)
        affine1 = torch.diag(torch.tensor([2.0, SPACING[1], SPACING[2], 1.0]))
        batch = list_data_collate([y[0], MetaTensor(self.y[0].float(), affine=affine1)])
        out = LabelHausdorffDistanceMetric(labels=[1, 2])(torch.cat([self.y_pred, self.y_pred]), batch)
        assert_close_nan(self, out, [[6.0, 3.0], [6.0, 6.0]])
        # decollated lists of channel-first MetaTensors keep their spacing
        metric = LabelHausdorffDistanceMetric(labels=[2])
        out = metric([self.y_pred[0], self.y_pred[0]], [y[0], y[0]])
        assert_close_nan(self, out, [[3.0], [3.0]])

    def test_needs_y(self):
        with self.assertRaisesRegex(ValueError, "fixed label map"):
            LabelDiceMetric()(self.y_pred)


if __name__ == "__main__":
    unittest.main()
