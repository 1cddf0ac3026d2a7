# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from .pair_ddf import PairDDFWrapper
from .sacbnet import SACBNet, SACBNetBackbone
