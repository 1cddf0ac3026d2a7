# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from .adaptive_conv import cluster_adaptive_conv
from .conv import SameConv2d, SameConv3d, same_conv
from .encoder import AvgPool2x, PyramidEncoder, conv_norm_act
from .kmeans import KMeans, batched_kmeans, kmeans_init_draws, kmeans_subset_indices
from .norm_act import InstanceNormLeakyReLU, instance_norm_leaky_relu
from .matching import SimilarityMatching, similarity_matching_flow
from .sac import SACBlock, local_mean
from .warp import ddf_sampling_grid, linear_resize, resize_ddf, warp_with_ddf
