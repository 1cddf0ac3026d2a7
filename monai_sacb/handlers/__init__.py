# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Ignite handlers: the registration metrics of ``monai_sacb.metrics`` (MONAI ``IgniteMetricHandler``), crash-safe
checkpoints and resuming, a progress bar, the warm-up of the self-estimate's subtraction, and the evaluation
report and figures of registered pairs."""

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
from .registration_panels import RegistrationPanelSaver, TensorBoardRegistrationPanels
from .registration_report import RegistrationReport
from .self_estimate_warmup import SelfEstimateWarmup

__all__ = [
    "LATEST_PATTERN",
    "BestMetricTracker",
    "CheckedCheckpointLoader",
    "DDFMetricHandler",
    "LabelDice",
    "LabelHausdorffDistance",
    "LabelSurfaceDistance",
    "PercentFolding",
    "RegistrationPanelSaver",
    "RegistrationReport",
    "ResumeFromLatest",
    "SDLogJacobian",
    "SelfEstimateWarmup",
    "TensorBoardRegistrationPanels",
    "TrainProgressBar",
    "TrainerCheckpointSaver",
    "atomic_save",
    "check_checkpoint_compatible",
    "find_resumable_checkpoint",
    "latest_checkpoint",
    "network_state_dict",
]
