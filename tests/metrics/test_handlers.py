# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math
import unittest

import numpy as np
import torch
from ignite.engine import Engine

from monai.handlers import from_engine
from monai_sacb.handlers import LabelDice, LabelHausdorffDistance, LabelSurfaceDistance, PercentFolding, SDLogJacobian
from tests.metrics.test_jacobian import slab_fold
from tests.metrics.test_label_metrics import SPACING, make_pair
from tests.metrics.test_sd_log_jacobian import quadratic_field


def evaluate(handler, outputs, name="metric"):
    """Run a pass-through evaluation engine over ``outputs`` (one per iteration) with ``handler`` attached."""
    engine = Engine(lambda engine, batch: batch)
    handler.attach(engine, name)
    engine.run(outputs, max_epochs=1)
    return engine.state.metrics[name], getattr(engine.state, "metric_details", {}).get(name)


class TestDDFHandlers(unittest.TestCase):
    def setUp(self):
        self.fold = slab_fold((10, 6, 5), 0, 3, 6).float()  # 40 % folded
        self.zero = torch.zeros_like(self.fold)

    def test_percent_folding(self):
        handler = PercentFolding(output_transform=from_engine(["ddf"]))
        value, details = evaluate(handler, [{"ddf": torch.cat([self.fold, self.zero])}, {"ddf": self.fold}])
        self.assertAlmostEqual(value, 80.0 / 3, places=4)
        torch.testing.assert_close(details, torch.tensor([[40.0], [0.0], [40.0]]))

    def test_percent_folding_with_mask_and_decollated(self):
        # (ddf, mask) from a dict output: mask on slices 0..4 -> 2 of 5 slices folded
        mask = torch.zeros((1, 1, 10, 6, 5))
        mask[:, :, :5] = 1
        handler = PercentFolding(output_transform=from_engine(["ddf", "label"]), save_details=False)
        value, _ = evaluate(handler, [{"ddf": self.fold, "label": mask}])
        self.assertAlmostEqual(value, 40.0, places=4)
        # a decollated output (list of dicts) gives a list of channel-first ddfs
        handler = PercentFolding(output_transform=from_engine(["ddf"]))
        value, _ = evaluate(handler, [[{"ddf": self.fold[0]}, {"ddf": self.zero[0]}]])
        self.assertAlmostEqual(value, 20.0, places=4)

    def test_sd_log_jacobian(self):
        ddf, interior, full = quadratic_field()
        handler = SDLogJacobian(output_transform=from_engine(["ddf"]))
        value, details = evaluate(handler, [{"ddf": ddf}, {"ddf": torch.zeros_like(ddf)}])
        self.assertAlmostEqual(value, float(np.std(np.log(full))) / 2, places=6)
        self.assertEqual(tuple(details.shape), (2, 1))
        handler = SDLogJacobian(border=1, output_transform=lambda out: out["ddf"])
        value, _ = evaluate(handler, [{"ddf": ddf}])
        self.assertAlmostEqual(value, float(np.std(np.log(interior))), places=6)

    def test_bad_output(self):
        handler = PercentFolding(output_transform=lambda out: (out, out, out))
        with self.assertRaisesRegex(ValueError, "ddf, mask"):
            evaluate(handler, [self.zero])


class TestLabelHandlers(unittest.TestCase):
    def setUp(self):
        self.y_pred, self.y = make_pair()
        self.outputs = [{"pred_label": self.y_pred, "label": self.y}, {"pred_label": self.y.clone(), "label": self.y}]

    def test_label_dice(self):
        handler = LabelDice(labels=[1, 2, 3, 4], output_transform=from_engine(["pred_label", "label"]))
        value, details = evaluate(handler, self.outputs)
        self.assertAlmostEqual(value, (0.75 / 4 + 1.0) / 2, places=5)
        torch.testing.assert_close(details, torch.tensor([[0.0, 0.0, 0.75, 0.0], [1.0, 1.0, 1.0, 1.0]]))
        # per-label report, labels found in the fixed maps
        handler = LabelDice(
            labels=[3, 4],
            reduction="mean_batch",
            return_with_label=True,
            output_transform=from_engine(["pred_label", "label"]),
        )
        value, _ = evaluate(handler, self.outputs)
        self.assertEqual(set(value), {"label_3", "label_4"})
        self.assertAlmostEqual(value["label_3"], 0.875, places=5)
        self.assertAlmostEqual(value["label_4"], 0.5, places=5)

    def test_label_hd95(self):
        handler = LabelHausdorffDistance(
            labels=[1, 2, 4], spacing=SPACING, output_transform=from_engine(["pred_label", "label"])
        )
        value, details = evaluate(handler, self.outputs[:1])
        self.assertAlmostEqual(value, 4.5, places=5)  # (6 + 3) / 2, label 4 NaN and skipped
        self.assertTrue(math.isnan(details[0, 2].item()))

    def test_label_assd(self):
        handler = LabelSurfaceDistance(
            labels=[1, 2], spacing=SPACING, output_transform=from_engine(["pred_label", "label"])
        )
        value, _ = evaluate(handler, self.outputs)  # case 0: (6 + 3) / 2, case 1 identical: 0
        self.assertAlmostEqual(value, 2.25, places=5)


if __name__ == "__main__":
    unittest.main()
