# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from collections.abc import Callable

from monai.utils import MetricReduction

from monai_sacb.metrics import SDLogJacobianMetric
from monai_sacb.metrics.utils import SpacingLike

from .ddf_metric import DDFMetricHandler

__all__ = ["SDLogJacobian"]


class SDLogJacobian(DDFMetricHandler):
    """
    Standard deviation of the log Jacobian determinant (SDlogJ), averaged over cases and iterations.

    Example (bundle config)::

        "val_sdlogj": {
            "_target_": "monai_sacb.handlers.SDLogJacobian",
            "output_transform": "$monai.handlers.from_engine(['ddf'])"
        }
    """

    def __init__(
        self,
        spacing: SpacingLike | None = None,
        border: int = 0,
        eps: float = 1e-9,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        """
        Args:
            spacing: only for a ddf in mm, see :py:func:`monai_sacb.metrics.jacobian_determinant`.
            border: voxels dropped on each side of every axis (Learn2Reg uses 2).
            eps: positive floor applied to the determinant before the log.
            reduction: mode of reduction over cases, applied to not-NaN values; default ``"mean"``.
            output_transform: maps ``engine.state.output`` to ``(ddf,)``, ``(ddf, mask)`` or the ddf,
                see :py:class:`DDFMetricHandler`; e.g. ``from_engine(["ddf"])``.
            save_details: whether to store the per-case values in ``engine.state.metric_details[name]``.

        See also:
            :py:func:`monai_sacb.metrics.sd_log_jacobian`
        """
        metric_fn = SDLogJacobianMetric(spacing=spacing, border=border, eps=eps, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
