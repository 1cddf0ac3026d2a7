# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Per-voxel Jacobian determinant of the transform p -> p + ddf(p)."""

from __future__ import annotations

import numpy as np
import torch

from .utils import SpacingLike, check_ddf, spacing_to_tensor

__all__ = ["jacobian_determinant"]


def jacobian_determinant(ddf: torch.Tensor | np.ndarray, spacing: SpacingLike | None = None) -> torch.Tensor:
    """
    Determinant of the Jacobian of the map ``phi(p) = p + ddf(p)`` at every voxel, in 2D or 3D.

    ``ddf`` follows the project convention: shape (B, spatial_dims, *spatial), channel ``i`` is the displacement
    along spatial axis ``i`` (the layout ``monai.networks.blocks.Warp`` consumes). The Jacobian is
    ``J[i, j] = delta_ij + d u_i / d p_j`` with ``u = ddf``.

    Finite differences (``torch.gradient``, unit step): second-order central differences
    ``(u(p + e_j) - u(p - e_j)) / 2`` at interior voxels, first-order one-sided differences on the first and
    last voxel of every axis; no padding or cropping, so the output has the input's spatial size. Both schemes
    are exact for affine fields, so an affine ``ddf`` gives its exact determinant everywhere, borders included.

    Units: for a ddf in voxels (the project convention) leave ``spacing`` as ``None``; the determinant is
    dimensionless (a ratio of volumes) and the voxel size does not enter. ``spacing`` is only for a ddf expressed
    in physical units (mm): the field is first converted to voxels, ``J = I + d(u_i / s_i) / d p_j``.
    That matrix is similar to the physical one, ``I + d u_i / d x_j`` with ``x_j = s_j p_j``, so both have the same
    determinant. Either way an isotropic scaling of the grid by ``k`` (``u = (k - 1)(p - c)`` in voxels, or
    ``u = (k - 1)(x - c)`` in mm with the matching ``spacing``) gives ``k ** spatial_dims``. Passing a spacing
    with a ddf that is in voxels is a mistake: it rescales the displacements.

    Args:
        ddf: displacement field, shape (B, 2, H, W) or (B, 3, H, W, D), every spatial size at least 2.
        spacing: only for a ddf in mm: voxel size per axis in mm, as one number, ``spatial_dims`` numbers,
            or a sequence of ``B`` such sequences (one per case).

    Returns:
        the determinant, shape (B, 1, *spatial), floating point (float32 unless ``ddf`` is float64).
        Values ``<= 0`` mark folding (the map is locally not invertible or reverses orientation).

    Raises:
        ValueError: see :py:func:`monai_sacb.metrics.utils.check_ddf`; also for a malformed ``spacing``.
    """
    ddf = check_ddf(ddf)
    batch_size, spatial_dims = ddf.shape[:2]
    if spacing is not None:
        s = spacing_to_tensor(spacing, batch_size, spatial_dims).to(device=ddf.device, dtype=ddf.dtype)
        ddf = ddf / s.view(batch_size, spatial_dims, *([1] * spatial_dims))

    # grads[j][:, i] = d u_i / d p_j
    grads = torch.gradient(ddf, dim=list(range(2, 2 + spatial_dims)), edge_order=1)

    def jac(i: int, j: int) -> torch.Tensor:
        d = grads[j][:, i]
        return d + 1.0 if i == j else d

    if spatial_dims == 2:
        det = jac(0, 0) * jac(1, 1) - jac(0, 1) * jac(1, 0)
    else:
        det = (
            jac(0, 0) * (jac(1, 1) * jac(2, 2) - jac(1, 2) * jac(2, 1))
            - jac(0, 1) * (jac(1, 0) * jac(2, 2) - jac(1, 2) * jac(2, 0))
            + jac(0, 2) * (jac(1, 0) * jac(2, 1) - jac(1, 1) * jac(2, 0))
        )
    return det.unsqueeze(1)
