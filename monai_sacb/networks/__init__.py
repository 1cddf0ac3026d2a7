# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from .blocks import (
    AvgPool2x,
    InstanceNormLeakyReLU,
    KMeans,
    PyramidEncoder,
    SameConv2d,
    SameConv3d,
    SACBlock,
    SimilarityMatching,
    batched_kmeans,
    cluster_adaptive_conv,
    conv_norm_act,
    ddf_sampling_grid,
    instance_norm_leaky_relu,
    kmeans_init_draws,
    local_mean,
    same_conv,
    similarity_matching_flow,
    warp_with_ddf,
)
from .nets import PairDDFWrapper, SACBNet, SACBNetBackbone
from .utils import cpu_bfloat16_is_fast
