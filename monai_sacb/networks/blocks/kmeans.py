# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from monai_sacb.networks.utils import compiled_cpu_kernels, use_cpu_kernels

__all__ = ["batched_kmeans", "kmeans_init_draws", "kmeans_subset_indices", "KMeans"]


def kmeans_init_draws(num_clusters: int, seed: int = 0) -> torch.Tensor:
    """
    The uniform draws in [0, 1) that seed k-means++ initialisation, made from a fixed CPU generator so that
    the same seed gives the same draws on every device and every call.

    Returns:
        a float32 tensor of shape (num_clusters,).
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_clusters, generator=generator)


@functools.lru_cache(maxsize=16)
def _subset_jitter(num_samples: int) -> torch.Tensor:
    """Fixed uniform draws in [0, 1), one per stratum, from a CPU generator seeded once (the same on every call)."""
    return torch.rand(num_samples, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def kmeans_subset_indices(num_points: int, max_points: int, device: torch.device | str | None = None) -> torch.Tensor:
    """
    Indices of an evenly spread, seeded subset of ``max_points`` out of ``num_points`` (all of them when
    ``num_points <= max_points``).

    Jittered stratified sampling: the flattened index range is cut into ``max_points`` equal strata and one index
    is drawn in each, at a fixed pseudo-random position. A plain stride would alias with the last spatial axis of a
    flattened volume (at 256^3, every 128th voxel lies on the ``w = 0`` plane); a random position in each stratum
    cannot, yet the subset stays as evenly spread as the stride and is the same on every call and device.

    Returns:
        int64 tensor of shape ``(min(num_points, max_points),)``, strictly increasing.
    """
    if num_points <= max_points:
        return torch.arange(num_points, device=device)
    bounds = torch.div(torch.arange(max_points + 1, dtype=torch.int64) * num_points, max_points, rounding_mode="floor")
    start, width = bounds[:-1], bounds[1:] - bounds[:-1]  # stratum k: [start_k, start_k + width_k), width_k >= 1
    offset = torch.floor(_subset_jitter(max_points) * width).long().clamp_max(width - 1)
    return (start + offset).to(device)


def _squared_distances(points: torch.Tensor, sq_norms: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(B, N, C) points with their (B, N, 1) squared norms, (B, K, C) centroids -> (B, N, K) squared distances."""
    dist = torch.baddbmm(sq_norms, points, centroids.transpose(1, 2), alpha=-2)
    return dist + centroids.pow(2).sum(-1).unsqueeze(1)


def _nearest_centroid(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(B, N, C) points, (B, K, C) centroids -> (B, N) index of the nearest centroid (ties: lowest index).
    ``|c|^2 - 2 <x, c>`` orders the centroids like the squared distance, without the points' norms."""
    scores = torch.baddbmm(centroids.pow(2).sum(-1).unsqueeze(1), points, centroids.transpose(1, 2), alpha=-2)
    return scores.argmin(-1)


def _nearest_one_hot(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(B, N, C) points, (B, K, C) centroids -> (B, N, K) float32 one-hot of each point's nearest centroid."""
    return F.one_hot(_nearest_centroid(points, centroids), centroids.shape[1]).float()


def _nearest_one_hot_cpu(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """
    :py:func:`_nearest_one_hot` with the same scores, about 1.8x faster on CPU for short rows of K scores: a point's
    nearest centroids are those whose score equals the row's minimum (PyTorch's CPU ``amin`` over a short last axis
    is much faster than its ``argmin``). A point equally near two centroids gets two ones; then, and only then (the
    count of ones tells), the one-hot is built from ``argmin`` after all, which keeps ties at the lowest index.
    """
    scores = torch.baddbmm(centroids.pow(2).sum(-1).unsqueeze(1), points, centroids.transpose(1, 2), alpha=-2)
    one_hot = (scores == scores.amin(-1, keepdim=True)).float()
    if int(one_hot.sum()) != points.shape[0] * points.shape[1]:
        return _nearest_one_hot(points, centroids)
    return one_hot


def _cumulative_sum(values: torch.Tensor) -> torch.Tensor:
    """``torch.cumsum(values, dim=1)``; computed on the CPU (sequential, deterministic) for a GPU tensor under
    ``torch.use_deterministic_algorithms(True)``, where PyTorch refuses a floating-point cumsum on CUDA."""
    if values.device.type != "cpu" and torch.are_deterministic_algorithms_enabled():
        return torch.cumsum(values.cpu(), dim=1).to(values.device)
    return torch.cumsum(values, dim=1)


def _gather_points(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N, C) points, (B,) index -> (B, C): the indexed point of each sample."""
    return torch.gather(points, 1, index.reshape(-1, 1, 1).expand(-1, 1, points.shape[-1])).squeeze(1)


def batched_kmeans(
    points: torch.Tensor,
    num_clusters: int,
    num_iters: int = 10,
    init_draws: torch.Tensor | None = None,
    max_points: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Euclidean k-means, run on each sample of a batch on its own, on the tensor's device.

    Initialisation is k-means++ (each new centre drawn with probability proportional to the squared distance to
    the nearest chosen centre), using the given uniform draws instead of a random generator, so the result is a
    pure function of the input. Then exactly ``num_iters`` Lloyd iterations: a fixed count, so the loop never
    waits on the host to test convergence. A cluster that loses all its points keeps its previous centroid;
    constant inputs give identical centroids and every point in cluster 0. Nothing here is differentiable:
    assignments and centroids carry no gradient. bfloat16 points on the CPU (the descriptors of inference under
    bfloat16 autocast) take a compiled kernel where numba is installed
    (:py:mod:`~monai_sacb.networks.blocks.numba_kernels`): the same algorithm, one sample per thread, its sums
    in other orders.

    Args:
        points: (B, N, C) feature vectors; computed in float32 whatever the input dtype (autocast-safe).
        num_clusters: K, the number of clusters. With fewer distinct points than K (tiny coarse levels, constant
            regions), some centroids coincide and the extra clusters stay empty.
        num_iters: number of Lloyd iterations after initialisation.
        init_draws: (K,) uniform draws in [0, 1) for k-means++; defaults to ``kmeans_init_draws(K, seed=0)``.
        max_points: when N is larger, centroids are fitted on a fixed, evenly spread subset of ``max_points``
            points (:py:func:`kmeans_subset_indices`: one point at a seeded position in each of ``max_points``
            equal strata) and then all N points are assigned to them; ``None`` fits on all points.
            For voxel descriptors, which vary smoothly, this changes the centroids little and the cost a lot.

    Returns:
        assignments (B, N) int64 in [0, K), and centroids (B, K, C) float32, consistent with each other
        (each point is assigned to its nearest returned centroid, ties to the lowest index).
    """
    if points.ndim != 3:
        raise ValueError(f"points must have shape (B, N, C), got {tuple(points.shape)}.")
    batch, num_points, _ = points.shape
    if num_points == 0:
        raise ValueError(f"points must hold at least one point per sample (N >= 1), got shape {tuple(points.shape)}.")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}.")
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0, got {num_iters}.")
    if init_draws is None:
        init_draws = kmeans_init_draws(num_clusters)
    if init_draws.numel() != num_clusters:
        raise ValueError(f"init_draws must have {num_clusters} values, got {init_draws.numel()}.")

    if max_points is not None and max_points < num_clusters:
        raise ValueError(f"max_points must be >= num_clusters={num_clusters}, got {max_points}.")

    compiled = _compiled_kmeans(points, num_iters, init_draws, max_points)
    if compiled is not None:
        return compiled
    with torch.no_grad(), torch.autocast(points.device.type, enabled=False):
        all_points = points.detach().float()
        if max_points is None or num_points <= max_points:
            x = all_points
        else:
            x = all_points[:, kmeans_subset_indices(num_points, max_points, device=all_points.device)]
        num_points = x.shape[1]
        sq_norms = x.pow(2).sum(-1, keepdim=True)
        draws = init_draws.to(device=x.device, dtype=torch.float64)

        # k-means++ by inverse-CDF sampling; the first centre is drawn uniformly.
        first = (draws[0] * num_points).long().clamp_max(num_points - 1).expand(batch)
        centroids = [_gather_points(x, first)]
        nearest = _squared_distances(x, sq_norms, centroids[0].unsqueeze(1)).squeeze(-1).clamp_min(0)
        for j in range(1, num_clusters):
            # the tiny floor makes the draw uniform (instead of undefined) when every point is already a centre
            cdf = _cumulative_sum(nearest.double() + 1e-30)
            target = draws[j] * cdf[:, -1:]
            # first index whose cdf reaches the target; argmax over a 0/1 mask exports to ONNX, searchsorted may not
            index = (cdf > target).to(torch.uint8).argmax(dim=1)
            centroids.append(_gather_points(x, index))
            distance = _squared_distances(x, sq_norms, centroids[-1].unsqueeze(1)).squeeze(-1).clamp_min(0)
            nearest = torch.minimum(nearest, distance)
        centres = torch.stack(centroids, dim=1)

        nearest_one_hot = _nearest_one_hot_cpu if use_cpu_kernels(x) else _nearest_one_hot
        for _ in range(num_iters):
            one_hot = nearest_one_hot(x, centres)  # (B, N, K)
            counts = one_hot.sum(1).unsqueeze(-1)  # (B, K, 1)
            # a matrix product instead of scatter_add keeps the update deterministic on CUDA
            sums = torch.bmm(one_hot.transpose(1, 2), x)
            centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        assignments = _nearest_centroid(all_points, centres)
    return assignments, centres


def _compiled_kmeans(
    points: torch.Tensor, num_iters: int, init_draws: torch.Tensor, max_points: int | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """
    :py:func:`batched_kmeans` of bfloat16 CPU points (the voxel descriptors of CPU inference under bfloat16
    autocast) by the compiled kernel (:py:func:`~monai_sacb.networks.blocks.numba_kernels.bfloat16_kmeans`), in
    about 40 % of the time; None where it does not apply: other dtypes (so float32 results never depend on whether
    numba is installed), other devices, tracing or export, or no kernels.
    """
    points = points.detach()  # k-means is not differentiable on any path
    if points.dtype != torch.bfloat16:
        return None
    kernels = compiled_cpu_kernels(points)
    if kernels is None:
        return None
    from monai_sacb.networks.blocks.numba_kernels import bfloat16_kmeans

    num_points = points.shape[1]
    subset = kmeans_subset_indices(num_points, num_points if max_points is None else max_points)
    return bfloat16_kmeans(points, num_iters, init_draws, subset, kernels)


class KMeans(nn.Module):
    """
    Module form of :py:func:`batched_kmeans` with its k-means++ draws fixed at construction from ``seed``
    (kept as a non-persistent buffer, so it follows ``.to(device)`` and is not saved in checkpoints).

    Args:
        num_clusters: K.
        num_iters: Lloyd iterations after k-means++ initialisation.
        seed: seed of the initialisation draws.
        max_points: fit centroids on an evenly spread subset of at most this many points (``None``: all points).
    """

    def __init__(self, num_clusters: int = 7, num_iters: int = 10, seed: int = 0, max_points: int | None = None) -> None:
        super().__init__()
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}.")
        self.num_clusters = num_clusters
        self.num_iters = num_iters
        self.max_points = max_points
        self.register_buffer("init_draws", kmeans_init_draws(num_clusters, seed), persistent=False)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) -> assignments (B, N), centroids (B, K, C); see :py:func:`batched_kmeans`."""
        return batched_kmeans(points, self.num_clusters, self.num_iters, self.init_draws, self.max_points)
