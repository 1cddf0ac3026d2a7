# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from .check import CheckInputsd, CheckLabelGridd, CheckPaird
from .deformation import RandSmoothDeformd, RandSyntheticPaird, random_smooth_ddf, random_smooth_field
from .displacement import (
    ApplyDisplacementd,
    DDFToVoxelsd,
    DDFToWorldd,
    SaveITKDisplacementd,
    apply_itk_displacement,
    ddf_voxels_to_world,
    ddf_world_to_voxels,
    invert_ddf,
    invert_itk_displacement,
    load_itk_displacement,
    ras_to_lps_vectors,
    save_itk_displacement,
)
from .io import LoadPaird, PairNamed, pair_name, pair_name_formatter
from .labels import (
    IXI_FREESURFER_LABELS,
    IXI_LABEL_NAMES,
    IXI_LABELS,
    LABEL_PRESETS,
    LPBA40_LABELS,
    TRANSMORPH_IXI_FREESURFER_CODES,
    RemapLabels,
    RemapLabelsd,
)
from .preprocessing import INTENSITY_OPTIONS, IntensityNormalized, pair_preprocessing
from .synthesis import (
    RandLabelSynthPaird,
    integrate_velocity,
    random_affine_ddf,
    random_contrast,
    random_velocity_ddf,
    synthesize_image,
)
from .spatial import RandDivisiblePadd, Warpd
