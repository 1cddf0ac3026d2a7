# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""What Ignite engines and the bundle need for registration pairs: batch preparation, inferer, evaluation
iteration, checkpoint checks and resuming, datalists and transforms chosen by a data format name."""

from __future__ import annotations

from .bundle_data import (
    BUNDLE_DATA_FORMATS,
    DEFAULT_SPACING,
    bundle_datalist,
    bundle_transforms,
    check_data_format,
    inference_datalist,
)
from .checkpoint import (
    LATEST_PATTERN,
    BestMetricTracker,
    CheckedCheckpointLoader,
    KeyMetricTracker,
    ResumeFromLatest,
    TrainerCheckpointSaver,
    atomic_save,
    check_checkpoint_compatible,
    find_resumable_checkpoint,
    latest_checkpoint,
    network_state_dict,
)
from .progress import TrainProgressBar, has_tensorboard
from .utils import PairInferer, PairNamed, PreparePairBatch, RegistrationIteration, pair_name_formatter

__all__ = [
    "BUNDLE_DATA_FORMATS",
    "DEFAULT_SPACING",
    "LATEST_PATTERN",
    "BestMetricTracker",
    "CheckedCheckpointLoader",
    "KeyMetricTracker",
    "PairInferer",
    "PairNamed",
    "PreparePairBatch",
    "RegistrationIteration",
    "ResumeFromLatest",
    "TrainProgressBar",
    "TrainerCheckpointSaver",
    "atomic_save",
    "bundle_datalist",
    "bundle_transforms",
    "check_checkpoint_compatible",
    "check_data_format",
    "find_resumable_checkpoint",
    "has_tensorboard",
    "inference_datalist",
    "latest_checkpoint",
    "network_state_dict",
    "pair_name_formatter",
]
