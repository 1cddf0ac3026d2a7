# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Fixtures shared by the metric and handler tests: displacement fields with a known Jacobian determinant and a
pair of label maps with hand-counted Dice and surface distances. Each field maker is a fixture returning the
function, so that a test can ask for the shape it needs.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def _grid(shape, dtype=torch.float64):
    axes = [torch.arange(n, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


@pytest.fixture
def grid():
    """``grid(shape, dtype=float64)``: voxel coordinates, (1, len(shape), *shape); channel i = index along axis i."""
    return _grid


@pytest.fixture
def slab_fold():
    """
    ``slab_fold(shape, axis, start, stop)``: a ddf with ``u_axis(p) = -2 * clamp(p_axis - start, 0, stop - start)``,
    other channels 0, float64.

    Central differences give d u / d p = -2 strictly inside (start, stop) and -1 at start and stop, so
    det J = -1 inside, 0 on the two slab faces, 1 elsewhere: exactly stop - start + 1 folded slices.
    """

    def make(shape, axis, start, stop):
        p = _grid(shape)[:, axis]
        ddf = torch.zeros((1, len(shape), *shape), dtype=torch.float64)
        ddf[:, axis] = -2.0 * torch.clamp(p - start, 0, stop - start)
        return ddf

    return make


@pytest.fixture
def quadratic_field():
    """
    ``quadratic_field(n=10, a=0.1, shape_rest=(4, 5))`` -> ``(ddf, interior, full)``: a 3D ddf with
    ``u_0 = a p_0^2 / 2``, whose det J along axis 0 is ``full`` = 1 + a/2, 1 + a k (k = 1..n-2), 1 + a (2n - 3) / 2
    (``interior`` without the two ends).
    """

    def make(n=10, a=0.1, shape_rest=(4, 5)):
        shape = (n, *shape_rest)
        ddf = torch.zeros((1, 3, *shape), dtype=torch.float64)
        ddf[:, 0] = a * _grid(shape)[:, 0] ** 2 / 2
        interior = [1 + a * k for k in range(1, n - 1)]
        return ddf, interior, [1 + a / 2] + interior + [1 + a * (2 * n - 3) / 2]

    return make


@pytest.fixture
def label_pair():
    """
    ``.y`` (fixed) and ``.y_pred`` (warped moving) label maps, (1, 1, 24, 20, 20), with ``.spacing`` (1, 2, 3) mm:

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
    return SimpleNamespace(y_pred=y_pred, y=y, spacing=(1.0, 2.0, 3.0))
