# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Ignite handlers (MONAI ``IgniteMetricHandler``) for the registration metrics of ``monai_sacb.metrics``."""

from __future__ import annotations

from .ddf_metric_handlers import DDFMetricHandler, PercentFolding, SDLogJacobian
from .label_metric_handlers import LabelDice, LabelHausdorffDistance, LabelSurfaceDistance

__all__ = [
    "DDFMetricHandler",
    "LabelDice",
    "LabelHausdorffDistance",
    "LabelSurfaceDistance",
    "PercentFolding",
    "SDLogJacobian",
]
