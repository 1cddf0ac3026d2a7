# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Registration metrics: Jacobian determinant, folding, SDlogJ, and per-label Dice / HD95 / ASSD."""

from __future__ import annotations

from .ddf_metric import DDFCumulativeMetric
from .folding import FoldingMetric, percent_folding
from .jacobian import jacobian_determinant
from .label_metrics import (
    LabelDiceMetric,
    LabelHausdorffDistanceMetric,
    LabelSurfaceDistanceMetric,
    compute_label_dice,
    compute_label_hausdorff_distance,
    compute_label_surface_distance,
    present_labels,
)
from .sd_log_jacobian import SDLogJacobianMetric, sd_log_jacobian

__all__ = [
    "DDFCumulativeMetric",
    "FoldingMetric",
    "LabelDiceMetric",
    "LabelHausdorffDistanceMetric",
    "LabelSurfaceDistanceMetric",
    "SDLogJacobianMetric",
    "compute_label_dice",
    "compute_label_hausdorff_distance",
    "compute_label_surface_distance",
    "jacobian_determinant",
    "percent_folding",
    "present_labels",
    "sd_log_jacobian",
]
