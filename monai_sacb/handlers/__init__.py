# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Ignite handlers: the registration metrics of ``monai_sacb.metrics`` (MONAI ``IgniteMetricHandler``), crash-safe
checkpoints and resuming, and a progress bar."""

from __future__ import annotations

from .checkpoint import (
    LATEST_PATTERN,
    BestMetricTracker,
    CheckedCheckpointLoader,
    ResumeFromLatest,
    TrainerCheckpointSaver,
    atomic_save,
    check_checkpoint_compatible,
    find_resumable_checkpoint,
    latest_checkpoint,
    network_state_dict,
)
from .ddf_metric_handlers import DDFMetricHandler, PercentFolding, SDLogJacobian
from .label_metric_handlers import LabelDice, LabelHausdorffDistance, LabelSurfaceDistance
from .progress import TrainProgressBar

__all__ = [
    "LATEST_PATTERN",
    "BestMetricTracker",
    "CheckedCheckpointLoader",
    "DDFMetricHandler",
    "LabelDice",
    "LabelHausdorffDistance",
    "LabelSurfaceDistance",
    "PercentFolding",
    "ResumeFromLatest",
    "SDLogJacobian",
    "TrainProgressBar",
    "TrainerCheckpointSaver",
    "atomic_save",
    "check_checkpoint_compatible",
    "find_resumable_checkpoint",
    "latest_checkpoint",
    "network_state_dict",
]
