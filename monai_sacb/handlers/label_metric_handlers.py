# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""
Ignite handlers for the per-label registration metrics of :py:mod:`monai_sacb.metrics.label_metrics`: each
compares the warped moving label map with the fixed label map, and averages over labels, cases and iterations.

The arguments they share:

- ``labels``: label values to evaluate; ``None``: the labels present in each fixed map (without ``background``),
  each case contributing its mean over them.
- ``background``: value left out when ``labels`` is ``None``.
- ``reduction``: mode of reduction, applied to not-NaN values; default ``"mean"``. With ``labels`` given,
  ``"mean_batch"`` gives per-label means.
- ``output_transform``: maps ``engine.state.output`` to ``(y_pred, y)`` = (warped moving label, fixed label),
  each integer-valued (B, 1, *spatial) or a list of (1, *spatial); e.g.
  ``from_engine(["warped_label", "fixed_label"])``.
- ``save_details``: whether to store the per-case values in ``engine.state.metric_details[name]``.
- ``return_with_label``: with ``labels`` given and ``reduction="mean_batch"``, report a dict
  ``{"label_<value>": mean}`` (or keyed by the given names).

The distances (:py:class:`LabelHausdorffDistance`, :py:class:`LabelSurfaceDistance`) are in mm when a spacing
is known (constructor ``spacing``: one number, ``spatial_dims`` numbers, or one sequence per case; else the fixed
label's MetaTensor ``pixdim``), else in voxels. Labels missing from the prediction are NaN there and skipped by
the average.

Example (bundle config)::

    "val_mean_dice": {
        "_target_": "monai_sacb.handlers.LabelDice",
        "output_transform": "$monai.handlers.from_engine(['warped_label', 'fixed_label'])"
    }
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.handlers import IgniteMetricHandler
from monai.utils import MetricReduction

from monai_sacb.metrics import LabelDiceMetric, LabelHausdorffDistanceMetric, LabelSurfaceDistanceMetric
from monai_sacb.metrics.utils import SpacingLike

__all__ = ["LabelDice", "LabelHausdorffDistance", "LabelSurfaceDistance"]


class LabelDice(IgniteMetricHandler):
    """
    Dice per label, see :py:class:`monai_sacb.metrics.LabelDiceMetric`; the arguments are described in
    :py:mod:`monai_sacb.handlers.label_metric_handlers`.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        background: int | None = 0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        return_with_label: bool | list[str] = False,
    ) -> None:
        metric_fn = LabelDiceMetric(
            labels=labels, background=background, reduction=reduction, return_with_label=return_with_label
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class LabelHausdorffDistance(IgniteMetricHandler):
    """
    Percentile Hausdorff distance per label, see :py:class:`monai_sacb.metrics.LabelHausdorffDistanceMetric`;
    ``percentile`` (default 95, ``None`` for the maximum) is its own argument, the others are described in
    :py:mod:`monai_sacb.handlers.label_metric_handlers`.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        background: int | None = 0,
        percentile: float | None = 95.0,
        spacing: SpacingLike | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        return_with_label: bool | list[str] = False,
    ) -> None:
        metric_fn = LabelHausdorffDistanceMetric(
            labels=labels,
            background=background,
            percentile=percentile,
            spacing=spacing,
            reduction=reduction,
            return_with_label=return_with_label,
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class LabelSurfaceDistance(IgniteMetricHandler):
    """
    Average surface distance per label, see :py:class:`monai_sacb.metrics.LabelSurfaceDistanceMetric`;
    ``symmetric`` (default ``True``: ASSD; ``False``: from the prediction's boundary only) is its own argument,
    the others are described in :py:mod:`monai_sacb.handlers.label_metric_handlers`.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        background: int | None = 0,
        symmetric: bool = True,
        spacing: SpacingLike | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        return_with_label: bool | list[str] = False,
    ) -> None:
        metric_fn = LabelSurfaceDistanceMetric(
            labels=labels,
            background=background,
            symmetric=symmetric,
            spacing=spacing,
            reduction=reduction,
            return_with_label=return_with_label,
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
