# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""
Ignite handlers for the metrics of a displacement field alone, optionally with a mask
(:py:class:`monai_sacb.metrics.FoldingMetric`, :py:class:`monai_sacb.metrics.SDLogJacobianMetric`), each
averaged over cases and iterations.

The arguments they share:

- ``spacing``: only for a ddf in mm, see :py:func:`monai_sacb.metrics.jacobian_determinant`.
- ``border``: voxels dropped on each side of every axis before evaluating (Learn2Reg's SDlogJ uses 2).
- ``reduction``: mode of reduction over cases, applied to not-NaN values; default ``"mean"``.
- ``output_transform``: maps ``engine.state.output`` to ``(ddf,)``, ``(ddf, mask)`` or the ddf, see
  :py:class:`DDFMetricHandler`; e.g. ``from_engine(["ddf"])``.
- ``save_details``: whether to store the per-case values in ``engine.state.metric_details[name]``.

Example (bundle config)::

    "val_folding": {
        "_target_": "monai_sacb.handlers.PercentFolding",
        "output_transform": "$monai.handlers.from_engine(['ddf'])"
    }
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from monai.handlers import IgniteMetricHandler
from monai.utils import IgniteInfo, MetricReduction, min_version, optional_import

from monai_sacb.metrics import FoldingMetric, SDLogJacobianMetric
from monai_sacb.metrics.utils import SpacingLike

if TYPE_CHECKING:
    from ignite.metrics.metric import reinit__is_reduced
else:
    reinit__is_reduced, _ = optional_import(
        "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "reinit__is_reduced", as_type="decorator"
    )

__all__ = ["DDFMetricHandler", "PercentFolding", "SDLogJacobian"]


class DDFMetricHandler(IgniteMetricHandler):
    """
    :py:class:`monai.handlers.IgniteMetricHandler` for metrics whose input is a ddf, with an optional mask.

    ``output_transform`` may return:

    - a tuple ``(ddf,)`` or ``(ddf, mask)``, as ``from_engine(["ddf"])`` / ``from_engine(["ddf", "label"])``
      give for a dict ``engine.state.output``;
    - the ddf itself: a batch-first tensor (B, spatial_dims, *spatial), or a list of channel-first ddfs, as
      ``from_engine(["ddf"])`` gives for a decollated (list of dicts) output.

    A tuple is always read as ``(ddf[, mask])``, never as a sequence of per-case ddfs; use a list for those.
    """

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        """
        Args:
            output: ``(ddf,)``, ``(ddf, mask)``, or the ddf (tensor or list of channel-first tensors).

        Raises:
            ValueError: when ``output`` is a tuple whose length is not 1 or 2.
        """
        if isinstance(output, tuple):
            if len(output) not in (1, 2):
                raise ValueError(f"output must be (ddf,) or (ddf, mask), got a tuple of length {len(output)}.")
            ddf, mask = output[0], (output[1] if len(output) == 2 else None)
        else:
            ddf, mask = output, None
        self.metric_fn(ddf, mask)


class PercentFolding(DDFMetricHandler):
    """
    Percentage of voxels with a non-positive Jacobian determinant (%|J|<=0), see
    :py:func:`monai_sacb.metrics.percent_folding`; the arguments are described in
    :py:mod:`monai_sacb.handlers.ddf_metric_handlers`.
    """

    def __init__(
        self,
        spacing: SpacingLike | None = None,
        border: int = 0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = FoldingMetric(spacing=spacing, border=border, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class SDLogJacobian(DDFMetricHandler):
    """
    Standard deviation of the log Jacobian determinant (SDlogJ), see :py:func:`monai_sacb.metrics.sd_log_jacobian`;
    ``eps`` (the positive floor applied to the determinant before the log) is its own argument, the others are
    described in :py:mod:`monai_sacb.handlers.ddf_metric_handlers`.
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
        metric_fn = SDLogJacobianMetric(spacing=spacing, border=border, eps=eps, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
