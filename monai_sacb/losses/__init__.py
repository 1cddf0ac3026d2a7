# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from .diffusion import ForwardDiffusionLoss
from .label_overlap import WarpedLabelDiceLoss
from .lncc import LNCC_VARIANTS, FastLNCCLoss, FastLocalNormalizedCrossCorrelationLoss, local_box_sum
from .registration import PAPER_REG_WEIGHTS, REGULARIZATION_NAMES, SIMILARITY_NAMES, RegistrationLoss

__all__ = [
    "ForwardDiffusionLoss",
    "FastLocalNormalizedCrossCorrelationLoss",
    "FastLNCCLoss",
    "LNCC_VARIANTS",
    "local_box_sum",
    "RegistrationLoss",
    "WarpedLabelDiceLoss",
    "PAPER_REG_WEIGHTS",
    "REGULARIZATION_NAMES",
    "SIMILARITY_NAMES",
]
