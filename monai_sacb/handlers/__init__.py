# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Ignite handlers (MONAI ``IgniteMetricHandler``) for the registration metrics of ``monai_sacb.metrics``."""

from __future__ import annotations

from .ddf_metric import DDFMetricHandler
from .folding import PercentFolding
from .label_metrics import LabelDice, LabelHausdorffDistance, LabelSurfaceDistance
from .sd_log_jacobian import SDLogJacobian

__all__ = [
    "DDFMetricHandler",
    "LabelDice",
    "LabelHausdorffDistance",
    "LabelSurfaceDistance",
    "PercentFolding",
    "SDLogJacobian",
]
