# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math
import unittest

import numpy as np
import torch

from monai_sacb.metrics import jacobian_determinant, percent_folding


def grid(shape, dtype=torch.float64):
    """Voxel coordinates, shape (1, len(shape), *shape); channel i = index along axis i."""
    axes = [torch.arange(n, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def slab_fold(shape, axis, start, stop):
    """ddf with u_axis(p) = -2 * clamp(p_axis - start, 0, stop - start), other channels 0.

    Central differences give d u / d p = -2 strictly inside (start, stop) and -1 at start and stop,
    so det J = -1 inside, 0 on the two slab faces, 1 elsewhere: exactly stop - start + 1 folded slices.
    """
    p = grid(shape)[:, axis]
    ddf = torch.zeros((1, len(shape), *shape), dtype=torch.float64)
    ddf[:, axis] = -2.0 * torch.clamp(p - start, 0, stop - start)
    return ddf


class TestJacobianDeterminant(unittest.TestCase):
    def test_identity(self):
        for shape in ((6, 7), (5, 6, 7)):
            ddf = torch.zeros((2, len(shape), *shape))
            det = jacobian_determinant(ddf)
            self.assertEqual(tuple(det.shape), (2, 1, *shape))
            self.assertEqual(det.dtype, torch.float32)
            torch.testing.assert_close(det, torch.ones_like(det))

    def test_isotropic_scaling_voxels(self):
        # u(p) = (s - 1)(p - c): the grid scaled by s about c, det = s ** d at every voxel, borders included
        for shape in ((6, 7), (5, 6, 7)):
            for s in (0.5, 1.3, 2.0):
                p = grid(shape)
                ddf = (s - 1.0) * (p - 2.5)
                det = jacobian_determinant(ddf)
                torch.testing.assert_close(det, torch.full_like(det, s ** len(shape)))

    def test_isotropic_scaling_mm_with_spacing(self):
        # the same physical scaling expressed in mm, x = spacing * p: u_mm = (s - 1)(x - c)
        spacing = (1.0, 2.0, 3.0)
        shape = (5, 6, 7)
        s = 1.5
        x = grid(shape) * torch.tensor(spacing, dtype=torch.float64).view(1, 3, 1, 1, 1)
        ddf_mm = (s - 1.0) * (x - 4.0)
        det = jacobian_determinant(ddf_mm, spacing=spacing)
        torch.testing.assert_close(det, torch.full_like(det, s**3))
        # per-case spacing: the second case is the same field in a grid twice as coarse along axis 0
        ddf_mm2 = torch.cat([ddf_mm, ddf_mm], 0)
        ddf_mm2[1, 0] *= 2.0
        det2 = jacobian_determinant(ddf_mm2, spacing=[spacing, (2.0, 2.0, 3.0)])
        torch.testing.assert_close(det2, torch.full_like(det2, s**3))
        # wrongly treating the mm field as voxels gives another answer: d u_i / d p_j = (s - 1) * spacing_i
        det_vox = jacobian_determinant(ddf_mm)
        torch.testing.assert_close(det_vox, torch.full_like(det_vox, 1.5 * 2.0 * 2.5))

    def test_channel_i_is_axis_i(self):
        # u_0 = a * p_0 stretches axis 0 only: det = 1 + a. A field read with reversed channels would give 1.
        a = 0.25
        for shape in ((6, 7), (5, 6, 7)):
            ddf = torch.zeros((1, len(shape), *shape))
            ddf[:, 0] = a * grid(shape, torch.float32)[:, 0]
            det = jacobian_determinant(ddf)
            torch.testing.assert_close(det, torch.full_like(det, 1 + a))
            # a pure shear has det 1
            shear = torch.zeros_like(ddf)
            shear[:, 0] = 0.7 * grid(shape, torch.float32)[:, 1]
            torch.testing.assert_close(jacobian_determinant(shear), torch.ones_like(det))

    def test_affine(self):
        # u(p) = (A - I) p + t has det J = det A everywhere
        a = torch.tensor([[1.1, 0.2, -0.1], [0.05, 0.9, 0.3], [0.0, -0.2, 1.2]], dtype=torch.float64)
        shape = (6, 5, 7)
        p = grid(shape)
        ddf = torch.einsum("ij,bj...->bi...", a - torch.eye(3, dtype=torch.float64), p) + 0.3
        det = jacobian_determinant(ddf)
        self.assertEqual(det.dtype, torch.float64)
        torch.testing.assert_close(det, torch.full_like(det, float(torch.linalg.det(a))))

    def test_quadratic_boundary_scheme(self):
        # u_0 = a p_0^2 / 2: central differences give a * k inside, one-sided a / 2 and a (2N - 3) / 2 at the ends
        a, n = 0.1, 10
        ddf = torch.zeros((1, 2, n, 4), dtype=torch.float64)
        ddf[:, 0] = a * grid((n, 4))[:, 0] ** 2 / 2
        det = jacobian_determinant(ddf)[0, 0, :, 0]
        expected = [1 + a / 2] + [1 + a * k for k in range(1, n - 1)] + [1 + a * (2 * n - 3) / 2]
        torch.testing.assert_close(det, torch.tensor(expected, dtype=torch.float64))


class TestPercentFolding(unittest.TestCase):
    def test_slab_fold_3d(self):
        shape = (10, 6, 5)
        ddf = slab_fold(shape, axis=0, start=3, stop=6)
        det = jacobian_determinant(ddf)
        folded = det <= 0
        self.assertEqual(int(folded.sum()), 4 * 6 * 5)  # slices 3, 4, 5, 6 along axis 0
        self.assertTrue(bool(folded[:, :, 3:7].all()))
        self.assertEqual(int((det == 0).sum()), 2 * 6 * 5)  # the two slab faces sit exactly at 0 and count
        torch.testing.assert_close(percent_folding(ddf), torch.tensor([40.0], dtype=torch.float64))
        self.assertAlmostEqual(percent_folding(ddf.float()).item(), 40.0, places=5)

    def test_slab_fold_2d_axis1(self):
        shape = (8, 12)
        ddf = slab_fold(shape, axis=1, start=2, stop=4)
        self.assertEqual(int((jacobian_determinant(ddf) <= 0).sum()), 3 * 8)
        self.assertAlmostEqual(percent_folding(ddf).item(), 100.0 * 3 / 12)

    def test_mask_and_border(self):
        shape = (10, 6, 5)
        ddf = torch.cat([slab_fold(shape, 0, 3, 6), torch.zeros((1, 3, *shape), dtype=torch.float64)])
        torch.testing.assert_close(percent_folding(ddf), torch.tensor([40.0, 0.0], dtype=torch.float64))
        # border 1 keeps 8 x 4 x 3 voxels, of which slices 3..6 (4 x 4 x 3) fold
        self.assertAlmostEqual(percent_folding(ddf, border=1)[0].item(), 50.0)
        # a mask over slices 0..4 keeps 5 slices, 2 of them folded
        mask = torch.zeros((2, 1, *shape))
        mask[:, :, :5] = 1
        self.assertAlmostEqual(percent_folding(ddf, mask=mask)[0].item(), 40.0)
        # an empty region is NaN
        self.assertTrue(math.isnan(percent_folding(ddf, mask=torch.zeros((2, 1, *shape)))[1].item()))

    def test_numpy_input(self):
        ddf = slab_fold((10, 6, 5), 0, 3, 6).numpy()
        self.assertAlmostEqual(percent_folding(ddf).item(), 40.0)
        self.assertIsInstance(np.asarray(jacobian_determinant(ddf)), np.ndarray)


class TestBadInput(unittest.TestCase):
    def test_channel_count(self):
        with self.assertRaisesRegex(ValueError, "3 channels but 2 spatial dims"):
            jacobian_determinant(torch.zeros(1, 3, 8, 8))
        with self.assertRaisesRegex(ValueError, "2 channels but 3 spatial dims"):
            percent_folding(torch.zeros(1, 2, 8, 8, 8))

    def test_dims(self):
        with self.assertRaisesRegex(ValueError, "2 or 3 spatial dims"):
            jacobian_determinant(torch.zeros(1, 1, 8))
        with self.assertRaisesRegex(ValueError, "at least 2"):
            jacobian_determinant(torch.zeros(1, 2, 8, 1))

    def test_nan_inf(self):
        ddf = torch.zeros(1, 2, 8, 8)
        ddf[0, 1, 3, 3] = float("nan")
        with self.assertRaisesRegex(ValueError, "NaN"):
            jacobian_determinant(ddf)
        ddf[0, 1, 3, 3] = float("inf")
        with self.assertRaisesRegex(ValueError, "infinite"):
            percent_folding(ddf)

    def test_spacing(self):
        ddf = torch.zeros(2, 3, 4, 4, 4)
        with self.assertRaisesRegex(ValueError, "spacing must be"):
            jacobian_determinant(ddf, spacing=(1.0, 2.0))
        with self.assertRaisesRegex(ValueError, "positive"):
            jacobian_determinant(ddf, spacing=(1.0, 0.0, 1.0))
        with self.assertRaisesRegex(ValueError, "spacing must be"):
            jacobian_determinant(ddf, spacing=[(1.0, 1.0, 1.0)] * 3)

    def test_mask_border(self):
        ddf = torch.zeros(2, 3, 4, 4, 4)
        with self.assertRaisesRegex(ValueError, "mask must have shape"):
            percent_folding(ddf, mask=torch.ones(2, 1, 4, 4, 5))
        with self.assertRaisesRegex(ValueError, "border"):
            percent_folding(ddf, border=2)


if __name__ == "__main__":
    unittest.main()
