# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Share of folded voxels (non-positive Jacobian determinant) of a displacement field."""

from __future__ import annotations

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
    See :py:func:`percent_folding`; inputs, arguments and reductions as for
    :py:class:`monai_sacb.metrics.DDFCumulativeMetric`.

    Example:

    .. code-block:: python

        metric = FoldingMetric()
        for batch in loader:
            _, ddf = net(batch["moving"], batch["fixed"])
            metric(ddf)
        percent = metric.aggregate().item()
        metric.reset()
    """

    def _compute(self, ddf: torch.Tensor, mask: torch.Tensor | None, spacing: SpacingLike | None) -> torch.Tensor:
        return percent_folding(ddf, mask=mask, spacing=spacing, border=self.border)
