# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""The common part of the cumulative metrics of a displacement field (one value per case)."""

from __future__ import annotations

import torch

from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from .utils import SpacingLike

__all__ = ["DDFCumulativeMetric"]


class DDFCumulativeMetric(CumulativeIterationMetric):
    """
    Base of the ddf metrics: each call buffers a (B, 1) tensor, one value per case, computed by a subclass's
    ``_compute_tensor(y_pred=ddf, y=optional mask, spacing=...)``; ``aggregate()`` reduces the buffer like
    MONAI's metrics.

    Args:
        spacing: only for a ddf in mm, see :py:func:`monai_sacb.metrics.jacobian_determinant`; a ``spacing=``
            keyword given to a call overrides it.
        border: voxels dropped on each side of every axis before evaluating.
        reduction: mode of reduction of the buffered (N, 1) values, applied to not-NaN values only; one of
            :py:class:`monai.utils.enums.MetricReduction` (``"mean"``, ``"sum"``, ``"mean_batch"``, ``"none"``...).
        get_not_nans: whether ``aggregate()`` also returns the count of not-NaN values, ``(metric, not_nans)``.
    """

    def __init__(
        self,
        spacing: SpacingLike | None = None,
        border: int = 0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.spacing = spacing
        self.border = border
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Reduce the buffered (N, 1) values.

        Args:
            reduction: overrides ``self.reduction`` for this call.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f
