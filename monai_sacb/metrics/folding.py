# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Share of folded voxels (non-positive Jacobian determinant) of a displacement field."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


from .ddf_metric import DDFCumulativeMetric
from .jacobian import jacobian_determinant
from .utils import SpacingLike, evaluation_region

__all__ = ["FoldingMetric", "percent_folding"]


def percent_folding(
    ddf: torch.Tensor | np.ndarray,
    mask: torch.Tensor | None = None,
    spacing: SpacingLike | None = None,
    border: int = 0,
) -> torch.Tensor:
    """
    Percentage of voxels whose Jacobian determinant is not positive, ``100 * #{det J <= 0} / #voxels``
    (the "%|J|<=0" column of registration papers).

    The determinant is computed by :py:func:`monai_sacb.metrics.jacobian_determinant` (central differences
    inside, one-sided on the outermost voxels). By default every voxel counts, as in the SACB-Net paper.

    Args:
        ddf: displacement field in voxels, shape (B, spatial_dims, *spatial), channel ``i`` along axis ``i``.
        mask: optional (B, 1, *spatial) map, e.g. the fixed label map; only its nonzero voxels count.
        spacing: only for a ddf in mm, see :py:func:`monai_sacb.metrics.jacobian_determinant`.
        border: voxels dropped on each side of every axis before counting (0 keeps everything).

    Returns:
        a (B,) tensor of percentages in [0, 100]; NaN for a case whose evaluation region is empty.
    """
    det = jacobian_determinant(ddf, spacing=spacing)
    region = evaluation_region(det.shape, mask=mask, border=border, device=det.device)
    folded = ((det <= 0) & region).flatten(1).sum(1)
    total = region.flatten(1).sum(1)
    return 100.0 * folded.to(det.dtype) / total.to(det.dtype)


class FoldingMetric(DDFCumulativeMetric):
    """
    Percentage of folded voxels (``det J <= 0``) of a displacement field, accumulated over iterations.
    See :py:func:`percent_folding`.

    Call it with ``y_pred`` = the ddf (B, spatial_dims, *spatial) in voxels and, optionally, ``y`` = a mask
    (B, 1, *spatial) restricting the count to its nonzero voxels (``None`` counts the whole grid). Each call buffers
    a (B, 1) tensor of percentages; ``aggregate()`` reduces the buffer like MONAI's metrics.

    Example:

    .. code-block:: python

        metric = FoldingMetric()
        for batch in loader:
            _, ddf = net(batch["moving"], batch["fixed"])
            metric(ddf)
        percent = metric.aggregate().item()
        metric.reset()

    Args:
        spacing: only for a ddf in mm, see :py:func:`monai_sacb.metrics.jacobian_determinant`; a ``spacing=``
            keyword given to a call overrides it.
        border: voxels dropped on each side of every axis before counting.
        reduction: mode of reduction of the buffered (N, 1) values, applied to not-NaN values only; one of
            :py:class:`monai.utils.enums.MetricReduction` (``"mean"``, ``"sum"``, ``"mean_batch"``, ``"none"``...).
        get_not_nans: whether ``aggregate()`` also returns the count of not-NaN values, ``(metric, not_nans)``.
    """

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """
        Args:
            y_pred: ddf, shape (B, spatial_dims, *spatial).
            y: optional mask, shape (B, 1, *spatial).
            kwargs: ``spacing`` overrides the constructor's.

        Returns:
            (B, 1) percentages of folded voxels.
        """
        spacing = kwargs.get("spacing", self.spacing)
        return percent_folding(y_pred, mask=y, spacing=spacing, border=self.border).unsqueeze(1)
