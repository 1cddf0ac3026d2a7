# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Standard deviation of the log Jacobian determinant (SDlogJ), the Learn2Reg smoothness measure."""

from __future__ import annotations

import numpy as np
import torch

from monai.utils import MetricReduction

from .ddf_metric import DDFCumulativeMetric
from .jacobian import jacobian_determinant
from .utils import SpacingLike, evaluation_region

__all__ = ["SDLogJacobianMetric", "sd_log_jacobian"]


def sd_log_jacobian(
    ddf: torch.Tensor | np.ndarray,
    mask: torch.Tensor | None = None,
    spacing: SpacingLike | None = None,
    border: int = 0,
    eps: float = 1e-9,
) -> torch.Tensor:
    """
    Standard deviation of ``log(max(det J, eps))`` over the voxels of each case (SDlogJ, as in Learn2Reg).

    Learn2Reg conventions: the determinant is clipped to the floor ``eps`` (default 1e-9) before the log, so a
    folded voxel contributes ``log(eps)`` (about -20.7) rather than NaN, and the standard deviation is the
    population one (divisor N, like ``numpy.std``). Learn2Reg also evaluates inside the fixed image's mask and
    drops a border of 2 voxels: pass ``mask`` and ``border=2`` to do the same. The default (``border=0``,
    no mask) takes every voxel, with the one-sided differences of
    :py:func:`monai_sacb.metrics.jacobian_determinant` on the outermost voxels.

    Any affine ddf gives 0 (its determinant is constant).

    Args:
        ddf: displacement field in voxels, shape (B, spatial_dims, *spatial), channel ``i`` along axis ``i``.
        mask: optional (B, 1, *spatial) map; only its nonzero voxels count.
        spacing: only for a ddf in mm, see :py:func:`monai_sacb.metrics.jacobian_determinant`.
        border: voxels dropped on each side of every axis.
        eps: positive floor applied to the determinant before the log.

    Returns:
        a (B,) tensor (dimensionless); NaN for a case whose evaluation region is empty.
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}.")
    det = jacobian_determinant(ddf, spacing=spacing)
    region = evaluation_region(det.shape, mask=mask, border=border, device=det.device).flatten(1)
    # sums over millions of voxels: accumulate in float64
    log_det = torch.log(det.clamp_min(eps)).flatten(1).double()
    count = region.sum(1).double()
    mean = torch.where(region, log_det, 0.0).sum(1) / count
    var = torch.where(region, (log_det - mean[:, None]) ** 2, 0.0).sum(1) / count
    return var.sqrt().to(det.dtype)


class SDLogJacobianMetric(DDFCumulativeMetric):
    """
    Standard deviation of the log Jacobian determinant of a displacement field, accumulated over iterations.
    See :py:func:`sd_log_jacobian` for the conventions (clipping floor, population std, border, mask); inputs
    and reductions as for :py:class:`monai_sacb.metrics.DDFCumulativeMetric`.

    Args:
        spacing: only for a ddf in mm, see :py:func:`monai_sacb.metrics.jacobian_determinant`.
        border: voxels dropped on each side of every axis (Learn2Reg uses 2).
        eps: positive floor applied to the determinant before the log.
        reduction: mode of reduction of the buffered (N, 1) values, applied to not-NaN values only.
        get_not_nans: whether ``aggregate()`` also returns the count of not-NaN values, ``(metric, not_nans)``.
    """

    def __init__(
        self,
        spacing: SpacingLike | None = None,
        border: int = 0,
        eps: float = 1e-9,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(spacing=spacing, border=border, reduction=reduction, get_not_nans=get_not_nans)
        self.eps = eps

    def _compute(self, ddf: torch.Tensor, mask: torch.Tensor | None, spacing: SpacingLike | None) -> torch.Tensor:
        return sd_log_jacobian(ddf, mask=mask, spacing=spacing, border=self.border, eps=self.eps)
