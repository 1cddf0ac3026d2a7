# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""The common part of the cumulative metrics of a displacement field (one value per case)."""

from __future__ import annotations

from typing import Any

import torch

from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from .utils import SpacingLike

__all__ = ["DDFCumulativeMetric"]


class DDFCumulativeMetric(CumulativeIterationMetric):
    """
    Base of the ddf metrics: call it with ``y_pred`` = the ddf (B, spatial_dims, *spatial) in voxels and,
    optionally, ``y`` = a mask (B, 1, *spatial) restricting the evaluation to its nonzero voxels (``None``: the
    whole grid), and a ``spacing=`` keyword overriding the constructor's. Each call buffers a (B, 1) tensor, one
    value per case, computed by a subclass's ``_compute(ddf, mask, spacing)``; ``aggregate()`` reduces the buffer
    like MONAI's metrics.

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

    def _compute(self, ddf: torch.Tensor, mask: torch.Tensor | None, spacing: SpacingLike | None) -> torch.Tensor:
        """The (B,) values of one batch."""
        raise NotImplementedError(f"Subclass {self.__class__.__name__} must implement this method.")

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """
        Args:
            y_pred: ddf, shape (B, spatial_dims, *spatial).
            y: optional mask, shape (B, 1, *spatial).
            kwargs: ``spacing`` overrides the constructor's.

        Returns:
            (B, 1) values.
        """
        return self._compute(y_pred, y, kwargs.get("spacing", self.spacing)).unsqueeze(1)

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
