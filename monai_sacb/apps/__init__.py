# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Datasets generated from installed packages, and the bundle's choice of data by format name. Like
:py:mod:`monai.apps`, this package builds on :py:mod:`monai_sacb.data` and :py:mod:`monai_sacb.transforms`
(the generated pairs are made by random deformations); ``monai_sacb.data`` itself imports no transforms.
"""

from __future__ import annotations

from .bundle_datalists import (
    BUNDLE_DATA_FORMATS,
    DATA_PIPELINES,
    bundle_datalist,
    bundle_label_names,
    check_data_format,
    check_pipeline,
    describe_data,
    generated_spacing,
    inference_datalist,
)
from .colin27 import COLIN27_LABEL_SETS, prepare_colin27_pairs
from .default_dataset import COARSE_AAL_REGIONS, default_datalist, default_pair_kwargs, prepare_default_dataset
from .synth_dataset import ATLAS_FILES, TRAINING_ATLASES, VALIDATION_ATLAS, prepare_synth_dataset, synth_datalist
from .utils import DEFAULT_SPACING, default_cache_dir
