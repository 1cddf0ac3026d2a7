# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_sacb.metrics import jacobian_determinant


@pytest.mark.parametrize("shape", [(6, 7), (5, 6, 7)])
def test_identity(shape):
    ddf = torch.zeros((2, len(shape), *shape))
    det = jacobian_determinant(ddf)
    assert tuple(det.shape) == (2, 1, *shape)
    assert det.dtype == torch.float32
    torch.testing.assert_close(det, torch.ones_like(det))


@pytest.mark.parametrize("shape", [(6, 7), (5, 6, 7)])
@pytest.mark.parametrize("s", [0.5, 1.3, 2.0])
def test_isotropic_scaling_voxels(grid, shape, s):
    # u(p) = (s - 1)(p - c): the grid scaled by s about c, det = s ** d at every voxel, borders included
    ddf = (s - 1.0) * (grid(shape) - 2.5)
    det = jacobian_determinant(ddf)
    torch.testing.assert_close(det, torch.full_like(det, s ** len(shape)))


def test_isotropic_scaling_mm_with_spacing(grid):
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


@pytest.mark.parametrize("shape", [(6, 7), (5, 6, 7)])
def test_channel_i_is_axis_i(grid, shape):
    # u_0 = a * p_0 stretches axis 0 only: det = 1 + a. A field read with reversed channels would give 1.
    a = 0.25
    ddf = torch.zeros((1, len(shape), *shape))
    ddf[:, 0] = a * grid(shape, torch.float32)[:, 0]
    det = jacobian_determinant(ddf)
    torch.testing.assert_close(det, torch.full_like(det, 1 + a))
    # a pure shear has det 1
    shear = torch.zeros_like(ddf)
    shear[:, 0] = 0.7 * grid(shape, torch.float32)[:, 1]
    torch.testing.assert_close(jacobian_determinant(shear), torch.ones_like(det))


def test_affine(grid):
    # u(p) = (A - I) p + t has det J = det A everywhere
    a = torch.tensor([[1.1, 0.2, -0.1], [0.05, 0.9, 0.3], [0.0, -0.2, 1.2]], dtype=torch.float64)
    ddf = torch.einsum("ij,bj...->bi...", a - torch.eye(3, dtype=torch.float64), grid((6, 5, 7))) + 0.3
    det = jacobian_determinant(ddf)
    assert det.dtype == torch.float64
    torch.testing.assert_close(det, torch.full_like(det, float(torch.linalg.det(a))))


def test_quadratic_boundary_scheme(grid):
    # u_0 = a p_0^2 / 2: central differences give a * k inside, one-sided a / 2 and a (2N - 3) / 2 at the ends
    a, n = 0.1, 10
    ddf = torch.zeros((1, 2, n, 4), dtype=torch.float64)
    ddf[:, 0] = a * grid((n, 4))[:, 0] ** 2 / 2
    det = jacobian_determinant(ddf)[0, 0, :, 0]
    expected = [1 + a / 2] + [1 + a * k for k in range(1, n - 1)] + [1 + a * (2 * n - 3) / 2]
    torch.testing.assert_close(det, torch.tensor(expected, dtype=torch.float64))


def test_slab_fold_values(slab_fold):
    ddf = slab_fold((10, 6, 5), axis=0, start=3, stop=6)
    det = jacobian_determinant(ddf)
    folded = det <= 0
    assert int(folded.sum()) == 4 * 6 * 5  # slices 3, 4, 5, 6 along axis 0
    assert bool(folded[:, :, 3:7].all())
    assert int((det == 0).sum()) == 2 * 6 * 5  # the two slab faces sit exactly at 0


def test_numpy_input(slab_fold):
    ddf = slab_fold((10, 6, 5), 0, 3, 6)
    det = jacobian_determinant(ddf.numpy())
    assert isinstance(np.asarray(det), np.ndarray)
    torch.testing.assert_close(torch.as_tensor(det), jacobian_determinant(ddf))


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 3, 8, 8), "3 channels but 2 spatial dims"),
        ((1, 1, 8), "2 or 3 spatial dims"),
        ((1, 2, 8, 1), "at least 2"),
    ],
)
def test_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        jacobian_determinant(torch.zeros(shape))


@pytest.mark.parametrize("value, match", [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_non_finite(value, match):
    ddf = torch.zeros(1, 2, 8, 8)
    ddf[0, 1, 3, 3] = value
    with pytest.raises(ValueError, match=match):
        jacobian_determinant(ddf)


@pytest.mark.parametrize(
    "spacing, match",
    [((1.0, 2.0), "spacing must be"), ((1.0, 0.0, 1.0), "positive"), ([(1.0, 1.0, 1.0)] * 3, "spacing must be")],
)
def test_bad_spacing(spacing, match):
    with pytest.raises(ValueError, match=match):
        jacobian_determinant(torch.zeros(2, 3, 4, 4, 4), spacing=spacing)
