# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from .diffusion import ForwardDiffusionLoss
from .registration import PAPER_REG_WEIGHTS, REGULARIZATION_NAMES, SIMILARITY_NAMES, RegistrationLoss

__all__ = ["ForwardDiffusionLoss", "RegistrationLoss", "PAPER_REG_WEIGHTS", "REGULARIZATION_NAMES", "SIMILARITY_NAMES"]
