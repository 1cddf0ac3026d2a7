# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from .datalists import (
    DATALIST_FORMATS,
    IMAGE_SUFFIXES,
    folder_datalist,
    json_datalist,
    learn2reg_datalist,
    lpba40_datalist,
    make_datalist,
)
from .default_dataset import COARSE_AAL_REGIONS, default_cache_dir, default_datalist, prepare_default_dataset
from .ixi import ALLOW_PICKLE_ENV, IXI_SPLITS, convert_ixi_pickles, ixi_datalist, load_ixi_pickle
from .pairing import (
    PAIR_KEYS,
    PAIRING_STRATEGIES,
    RandomPairDataset,
    all_pairs,
    as_subject,
    atlas_pairs,
    make_pair,
    make_pairs,
    random_pairs,
    subjects_from_pairs,
)
from .synth_dataset import ATLAS_FILES, TRAINING_ATLASES, VALIDATION_ATLAS, prepare_synth_dataset, synth_datalist
