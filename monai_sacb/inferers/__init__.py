# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Inferers for registration pairs: the pair inferer of the engines (pair -> warped image and ddf) and instance
optimisation (test-time refinement) of displacement fields."""

from __future__ import annotations

from .instance_optimization import (
    DEFAULT_LEVELS,
    DEFAULT_SMOOTHING,
    DEFAULT_STEPS,
    InstanceOptimization,
    finetune_network,
    level_shape,
    refine_ddf,
    resize_ddf,
    resize_image,
)
from .pair import PairInferer, foreground_box, symmetric_ddf

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_SMOOTHING",
    "DEFAULT_STEPS",
    "InstanceOptimization",
    "PairInferer",
    "finetune_network",
    "foreground_box",
    "level_shape",
    "refine_ddf",
    "resize_ddf",
    "resize_image",
    "symmetric_ddf",
]
