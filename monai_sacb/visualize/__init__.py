# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Figures of registrations, like :py:mod:`monai.visualize`: the panel of one pair (slices with label contours,
checkerboard, deformed grid, log-Jacobian with folds) and the box plot of a metric per structure. Matplotlib
figures on the Agg canvas (no pyplot state); this package may import :py:mod:`monai_sacb.metrics` only.
"""

from __future__ import annotations

from .plots import label_metric_boxplot, read_metric_rows
from .registration import ORIENTATIONS, PANEL_COLUMNS, log_jacobian, registration_panel, slice_centre
from .utils import as_volume, checkerboard, figure_to_array, label_boundaries, new_figure, save_figure

__all__ = [
    "ORIENTATIONS",
    "PANEL_COLUMNS",
    "as_volume",
    "checkerboard",
    "figure_to_array",
    "label_boundaries",
    "label_metric_boxplot",
    "log_jacobian",
    "new_figure",
    "read_metric_rows",
    "registration_panel",
    "save_figure",
    "slice_centre",
]
