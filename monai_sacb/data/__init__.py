# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from .datalists import DATALIST_FORMATS, datalist_sections, make_datalist
from .folder import folder_datalist, folder_sections, json_datalist, json_sections
from .ixi import ALLOW_PICKLE_ENV, IXI_SPLITS, convert_ixi_pickles, ixi_datalist, ixi_sections, load_ixi_pickle
from .learn2reg import learn2reg_datalist, learn2reg_sections
from .lpba40 import lpba40_datalist, lpba40_sections
from .pairing import (
    PAIR_KEYS,
    PAIRING_STRATEGIES,
    RandomPairDataset,
    all_pairs,
    as_subject,
    atlas_pairs,
    harmonize_labels,
    make_pair,
    make_pairs,
    random_pairs,
    subjects_from_pairs,
)
from .utils import IMAGE_SUFFIXES, SECTIONS, image_stem, normalize_section
