# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from .check import CheckPaird
from .deformation import RandSmoothDeformd, RandSyntheticPaird, random_smooth_ddf, random_smooth_field
from .io import LoadPaird
from .preprocessing import INTENSITY_OPTIONS, pair_preprocessing
from .warp import Warpd
