# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math
import unittest

import numpy as np
import torch

from monai_sacb.metrics import FoldingMetric, SDLogJacobianMetric, sd_log_jacobian
from tests.metrics.test_jacobian import grid, slab_fold


def quadratic_field(n=10, a=0.1, shape_rest=(4, 5)):
    """u_0 = a p_0^2 / 2: det J = 1 + a/2, 1 + a k (k = 1..n-2), 1 + a (2n - 3) / 2 along axis 0."""
    shape = (n, *shape_rest)
    ddf = torch.zeros((1, 3, *shape), dtype=torch.float64)
    ddf[:, 0] = a * grid(shape)[:, 0] ** 2 / 2
    interior = [1 + a * k for k in range(1, n - 1)]
    return ddf, interior, [1 + a / 2] + interior + [1 + a * (2 * n - 3) / 2]


class TestSDLogJacobian(unittest.TestCase):
    def test_affine_is_zero(self):
        shape = (6, 5, 7)
        a = torch.tensor([[1.2, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 1.1]], dtype=torch.float64)
        ddf = torch.einsum("ij,bj...->bi...", a - torch.eye(3, dtype=torch.float64), grid(shape)) - 1.5
        ddf = torch.cat([ddf, torch.zeros_like(ddf)])
        torch.testing.assert_close(sd_log_jacobian(ddf), torch.zeros(2, dtype=torch.float64))
        self.assertLess(sd_log_jacobian(ddf.float()).abs().max().item(), 1e-6)
        ddf2 = 0.3 * (grid((8, 9)) - 4.0)  # 2D scaling
        self.assertLess(sd_log_jacobian(ddf2).abs().item(), 1e-12)

    def test_quadratic_known_value(self):
        ddf, interior, full = quadratic_field()
        # population std of the log determinants, each slice along axis 0 equally weighted
        self.assertAlmostEqual(sd_log_jacobian(ddf).item(), float(np.std(np.log(full))), places=12)
        self.assertAlmostEqual(sd_log_jacobian(ddf, border=1).item(), float(np.std(np.log(interior))), places=12)
        # a mask keeping slices 1 and 2 (det 1.1 and 1.2): std = |log 1.2 - log 1.1| / 2
        mask = torch.zeros((1, 1, *ddf.shape[2:]))
        mask[:, :, 1:3] = 1
        self.assertAlmostEqual(sd_log_jacobian(ddf, mask=mask).item(), math.log(1.2 / 1.1) / 2, places=12)

    def test_clip_floor(self):
        # 4 of 10 slices have det <= 0, clipped to eps: values log(eps) with share 0.4, else 0
        ddf = slab_fold((10, 6, 5), axis=0, start=3, stop=6)
        for eps in (1e-9, 1e-3):
            expected = -math.log(eps) * math.sqrt(0.4 * 0.6)
            self.assertAlmostEqual(sd_log_jacobian(ddf, eps=eps).item(), expected, places=9)
        with self.assertRaisesRegex(ValueError, "eps"):
            sd_log_jacobian(ddf, eps=0.0)

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, "3 channels but 2 spatial dims"):
            sd_log_jacobian(torch.zeros(1, 3, 8, 8))
        ddf = torch.zeros(1, 3, 4, 4, 4)
        ddf[0, 0, 0, 0, 0] = float("nan")
        with self.assertRaisesRegex(ValueError, "NaN"):
            sd_log_jacobian(ddf)


class TestCumulativeDDFMetrics(unittest.TestCase):
    def setUp(self):
        shape = (10, 6, 5)
        self.fold = slab_fold(shape, 0, 3, 6).float()  # 40 % folded
        self.zero = torch.zeros_like(self.fold)  # 0 % folded
        self.shape = shape

    def test_folding_two_batches(self):
        metric = FoldingMetric()
        out = metric(torch.cat([self.fold, self.zero]))
        self.assertEqual(tuple(out.shape), (2, 1))
        metric(self.fold)
        self.assertAlmostEqual(metric.aggregate().item(), 80.0 / 3, places=4)
        torch.testing.assert_close(metric.aggregate("none"), torch.tensor([[40.0], [0.0], [40.0]]))
        torch.testing.assert_close(metric.aggregate("sum"), torch.tensor(80.0))
        metric.reset()
        metric(self.zero)
        self.assertEqual(metric.aggregate().item(), 0.0)

    def test_folding_mask_and_not_nans(self):
        # y is an optional mask; an empty mask gives NaN, which the reduction skips and not_nans counts
        metric = FoldingMetric(get_not_nans=True)
        full = torch.ones((1, 1, *self.shape))
        metric(self.fold, full)
        metric(self.zero, torch.zeros_like(full))
        value, not_nans = metric.aggregate()
        self.assertAlmostEqual(value.item(), 40.0, places=4)
        self.assertEqual(not_nans.item(), 1)

    def test_folding_list_input_and_spacing_kwarg(self):
        metric = FoldingMetric(border=1)
        out = metric([self.fold[0], self.zero[0]])
        torch.testing.assert_close(out, torch.tensor([[50.0], [0.0]]))
        # read as mm with 2 mm voxels along axis 0, the slope is -1 voxel per voxel: det 0 on slices 4 and 5,
        # 0.5 on the slab faces; border 1 keeps slices 1..8, so 2 of 8 fold
        metric.reset()
        out = metric(self.fold, spacing=(2.0, 1.0, 1.0))
        self.assertAlmostEqual(out.item(), 25.0, places=4)

    def test_sdlogj_two_batches(self):
        ddf, _, full = quadratic_field()
        metric = SDLogJacobianMetric(reduction="mean", get_not_nans=True)
        metric(torch.cat([ddf, torch.zeros_like(ddf)]))
        metric(ddf)
        value, not_nans = metric.aggregate()
        self.assertAlmostEqual(value.item(), 2 * float(np.std(np.log(full))) / 3, places=6)
        self.assertEqual(not_nans.item(), 3)
        self.assertEqual(tuple(metric.aggregate("none")[0].shape), (3, 1))
        metric = SDLogJacobianMetric(border=1)
        metric(ddf)
        self.assertAlmostEqual(metric.aggregate().item(), float(np.std(np.log(full[1:-1]))), places=6)


if __name__ == "__main__":
    unittest.main()
