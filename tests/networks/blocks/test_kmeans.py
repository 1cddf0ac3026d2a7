# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from unittest import mock

import pytest
import torch

from monai_sacb.networks import KMeans, batched_kmeans, kmeans_init_draws
from monai_sacb.networks.blocks import kmeans as kmeans_module
from monai_sacb.networks import utils as network_utils
from monai_sacb.networks.blocks import kmeans_subset_indices

# three well separated blob centres per sample, different for each sample of the batch
CENTRES = torch.tensor(
    [
        [[10.0, 0.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0], [0.0, 0.0, -10.0, 5.0]],
        [[-8.0, -8.0, 3.0, 0.0], [8.0, 0.0, 8.0, -3.0], [0.0, 6.0, 0.0, 12.0]],
    ]
)
POINTS_PER_BLOB = 40


def _planted_blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, 120, 4) points from 3 Gaussian blobs (std 0.2) per sample, shuffled, and their (2, 120) true labels."""
    generator = torch.Generator().manual_seed(seed)
    batch, num_blobs, channels = CENTRES.shape
    labels = torch.arange(num_blobs).repeat_interleave(POINTS_PER_BLOB)
    points, truth = [], []
    for b in range(batch):
        order = torch.randperm(labels.numel(), generator=generator)
        noise = 0.2 * torch.randn(labels.numel(), channels, generator=generator)
        points.append(CENTRES[b][labels[order]] + noise)
        truth.append(labels[order])
    return torch.stack(points), torch.stack(truth)


def _nearest_centroid(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.cdist(points.double(), centroids.double()).argmin(-1)


def test_finds_planted_clusters_per_sample():
    points, truth = _planted_blobs()
    assignments, centroids = batched_kmeans(points, 3)
    assert assignments.shape == (2, 3 * POINTS_PER_BLOB)
    assert assignments.dtype == torch.int64
    assert centroids.shape == (2, 3, 4)
    assert centroids.dtype == torch.float32
    for b in range(2):
        found = []
        for blob in range(3):
            labels = assignments[b][truth[b] == blob].unique()
            assert labels.numel() == 1, f"sample {b}: planted blob {blob} split over clusters {labels.tolist()}"
            found.append(int(labels))
            # the centroid of that cluster sits at the blob's true centre (noise std 0.2, 40 points)
            torch.testing.assert_close(centroids[b, found[-1]], CENTRES[b, blob], atol=0.15, rtol=0)
        assert sorted(found) == [0, 1, 2], f"sample {b}: two blobs share a cluster: {found}"


def test_assignments_are_nearest_returned_centroid():
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(2, 200, 5, generator=generator)
    assignments, centroids = batched_kmeans(points, 6)
    assert torch.equal(assignments, _nearest_centroid(points, centroids))
    assert int(assignments.min()) >= 0 and int(assignments.max()) < 6


def test_deterministic_bitwise():
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(2, 300, 8, generator=generator)
    first = batched_kmeans(points, 7)
    second = batched_kmeans(points.clone(), 7)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
    module = KMeans(7)
    third = module(points)
    assert torch.equal(first[0], third[0]) and torch.equal(first[1], third[1])


def test_batch_samples_are_independent():
    points, _ = _planted_blobs()
    assignments, centroids = batched_kmeans(points, 3)
    for b in range(2):
        single_assignments, single_centroids = batched_kmeans(points[b : b + 1], 3)
        assert torch.equal(single_assignments[0], assignments[b])
        torch.testing.assert_close(single_centroids[0], centroids[b])


def test_constant_input_single_cluster_no_nan():
    points = torch.full((2, 50, 3), 1.5)
    assignments, centroids = batched_kmeans(points, 4)
    assert torch.isfinite(centroids).all()
    assert torch.equal(assignments, torch.zeros(2, 50, dtype=torch.int64))
    torch.testing.assert_close(centroids, torch.full((2, 4, 3), 1.5))


def test_more_clusters_than_distinct_points_no_nan():
    # only 2 distinct points, 5 clusters: some clusters must end up empty
    base = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    points = base.repeat(6, 1).unsqueeze(0).repeat(2, 1, 1)  # (2, 12, 2)
    assignments, centroids = batched_kmeans(points, 5)
    assert torch.isfinite(centroids).all()
    assert int(assignments.min()) >= 0 and int(assignments.max()) < 5
    # every point sits exactly on its centroid
    torch.testing.assert_close(torch.gather(centroids, 1, assignments.unsqueeze(-1).expand(-1, -1, 2)), points)
    # the two distinct points are in different clusters
    assert (assignments[:, 0] != assignments[:, 1]).all()


@pytest.mark.parametrize("distinct", [None, 3])
def test_cpu_kernel_equals_the_plain_formulation(distinct):
    # the CPU path finds nearest centroids by comparing scores with their minimum; points equally near two centroids
    # (few distinct values: duplicated centroids and exact ties) must still go to the lowest index, as argmin does
    generator = torch.Generator().manual_seed(5)
    points = torch.randn(2, 3000, 6, generator=generator)
    if distinct is not None:
        points = torch.randint(0, distinct, (2, 3000, 6), generator=generator).float()
    for max_points in (None, 500):
        fast = batched_kmeans(points, 7, max_points=max_points)
        with mock.patch.object(kmeans_module, "use_cpu_kernels", return_value=False):
            plain = batched_kmeans(points, 7, max_points=max_points)
        assert torch.equal(fast[0], plain[0]) and torch.equal(fast[1], plain[1])


def test_ties_go_to_the_lowest_cluster_index():
    # every point is equally near centroids 1 and 2 (the same vector twice)
    points = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [5.0, 5.0]]])
    centroids = torch.tensor([[[5.0, 5.0], [0.0, 1.0], [0.0, 1.0]]])
    one_hot = kmeans_module._nearest_one_hot_cpu(points, centroids)
    assert torch.equal(one_hot, torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]]))


def test_more_clusters_than_points():
    # a tiny coarse level can have fewer voxels than clusters: no error, no NaN, extra clusters stay empty
    points = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(4))
    assignments, centroids = batched_kmeans(points, 7)
    assert assignments.shape == (2, 4) and centroids.shape == (2, 7, 3)
    assert torch.isfinite(centroids).all()
    assert int(assignments.min()) >= 0 and int(assignments.max()) < 7
    torch.testing.assert_close(torch.gather(centroids, 1, assignments.unsqueeze(-1).expand(-1, -1, 3)), points)
    assert all(assignments[b].unique().numel() == 4 for b in range(2))  # distinct points stay apart


def test_max_points_subset():
    points, truth = _planted_blobs(seed=6)
    full = batched_kmeans(points, 3)
    # a subset at least as large as N is no subset
    same = batched_kmeans(points, 3, max_points=points.shape[1])
    assert torch.equal(full[0], same[0]) and torch.equal(full[1], same[1])
    # fitting on every 4th point still finds the planted blobs, and every point is assigned
    assignments, centroids = batched_kmeans(points, 3, max_points=30)
    assert assignments.shape == truth.shape
    assert torch.equal(assignments, _nearest_centroid(points, centroids))
    for b in range(2):
        for blob in range(3):
            assert assignments[b][truth[b] == blob].unique().numel() == 1
            label = int(assignments[b][truth[b] == blob][0])
            torch.testing.assert_close(centroids[b, label], CENTRES[b, blob], atol=0.25, rtol=0)
    again = KMeans(3, max_points=30)(points)
    assert torch.equal(again[0], assignments) and torch.equal(again[1], centroids)


def test_subset_is_one_point_per_stratum():
    index = kmeans_subset_indices(1000, 64)
    assert index.shape == (64,) and index.dtype == torch.int64
    bounds = torch.arange(65) * 1000 // 64  # stratum k holds the indices bounds[k] <= i < bounds[k + 1]
    assert torch.equal(torch.bucketize(index, bounds, right=True) - 1, torch.arange(64))
    assert torch.equal(index, kmeans_subset_indices(1000, 64))  # seeded: the same on every call
    assert torch.equal(kmeans_subset_indices(50, 64), torch.arange(50))


def test_subset_does_not_alias_with_a_256_wide_last_axis():
    # the level-2 grid of a 256^3 volume flattened: a stride of N / 16384 = 128 hits only columns w = 0 and 128
    shape = (128, 128, 256)
    num_points = shape[0] * shape[1] * shape[2]
    index = kmeans_subset_indices(num_points, 16384)
    columns = (index % shape[2]).unique().numel()
    rows = ((index // shape[2]) % shape[1]).unique().numel()
    slices = (index // (shape[1] * shape[2])).unique().numel()
    assert columns > 250 and rows == shape[1] and slices == shape[0]
    # the subset still spreads evenly: every slice of the volume gets its share
    counts = torch.bincount(index // (shape[1] * shape[2]), minlength=shape[0])
    assert int(counts.min()) == int(counts.max()) == 16384 // shape[0]


def test_subset_fit_sees_a_structure_a_stride_would_miss():
    # points vary only along the last axis of a (64, 64, 256) grid: a stride of 128 would fit on w in {0, 128} only
    w = torch.arange(256, dtype=torch.float32).repeat(64 * 64)
    points = torch.stack([(w >= 200).float() * 10.0, torch.zeros_like(w)], -1)[None]
    assignments, centroids = batched_kmeans(points, 2, max_points=8192)
    assert torch.equal(assignments[0], (w >= 200).long() if centroids[0, 1, 0] > 5 else (w < 200).long())


def test_no_gradient_through_outputs():
    points = torch.randn(1, 30, 3, requires_grad=True)
    assignments, centroids = batched_kmeans(points, 3)
    assert not assignments.requires_grad
    assert not centroids.requires_grad
    assert not KMeans(3)(points)[1].requires_grad


def test_bfloat16_input_is_clustered_in_float32(monkeypatch):
    monkeypatch.setenv("MONAI_SACB_NUMBA", "0")  # the eager path; the compiled one is compared with it below
    points, _ = _planted_blobs(seed=5)
    generator = torch.Generator().manual_seed(5)
    points = (points + torch.randn(points.shape, generator=generator)).bfloat16()
    assignments, centroids = batched_kmeans(points, 4)
    ref_assignments, ref_centroids = batched_kmeans(points.float(), 4)
    assert centroids.dtype == torch.float32
    assert torch.equal(assignments, ref_assignments)
    assert torch.equal(centroids, ref_centroids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto_assignments, auto_centroids = batched_kmeans(points.float(), 4)
    assert auto_centroids.dtype == torch.float32
    assert torch.equal(auto_assignments, ref_assignments)
    assert torch.equal(auto_centroids, ref_centroids)


def test_init_draws_are_seeded():
    draws = kmeans_init_draws(7, seed=3)
    assert draws.shape == (7,) and draws.dtype == torch.float32
    assert ((draws >= 0) & (draws < 1)).all()
    assert torch.equal(draws, kmeans_init_draws(7, seed=3))
    assert not torch.equal(draws, kmeans_init_draws(7, seed=4))
    # the module's draws come from its seed, the function's default is seed 0
    points = torch.randn(1, 100, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(KMeans(4, seed=0)(points)[0], batched_kmeans(points, 4)[0])
    explicit = batched_kmeans(points, 4, init_draws=kmeans_init_draws(4, seed=9))
    assert torch.equal(KMeans(4, seed=9)(points)[0], explicit[0])


@pytest.mark.parametrize(
    "shape, num_clusters, match",
    [
        ((10, 3), 2, r"\(B, N, C\)"),
        ((1, 2, 10, 3), 2, r"\(B, N, C\)"),
        ((1, 10, 3), 0, "num_clusters"),
        ((1, 10, 3), -2, "num_clusters"),
        ((2, 0, 3), 2, "at least one point"),
    ],
)
def test_bad_inputs_raise_value_error(shape, num_clusters, match):
    with pytest.raises(ValueError, match=match):
        batched_kmeans(torch.randn(shape), num_clusters)
    with pytest.raises(ValueError, match=match):  # the compiled bfloat16 path checks first too
        batched_kmeans(torch.randn(shape).bfloat16(), num_clusters)


def test_bad_init_draws_and_iters_raise_value_error():
    points = torch.randn(1, 10, 3)
    with pytest.raises(ValueError, match="init_draws"):
        batched_kmeans(points, 3, init_draws=torch.rand(2))
    with pytest.raises(ValueError, match="num_iters"):
        batched_kmeans(points, 3, num_iters=-1)
    with pytest.raises(ValueError, match="max_points"):
        batched_kmeans(points, 3, max_points=2)
    with pytest.raises(ValueError, match="num_clusters"):
        KMeans(num_clusters=0)


def test_module_buffer_follows_to_and_is_not_saved():
    module = KMeans(5, seed=2)
    assert torch.equal(module.init_draws, kmeans_init_draws(5, seed=2))
    assert "init_draws" not in module.state_dict()
    assert list(module.parameters()) == []
    moved = module.to(torch.float64)
    assert moved.init_draws.dtype == torch.float64
    meta = KMeans(5).to("meta")
    assert meta.init_draws.device.type == "meta"
    if torch.cuda.is_available():
        cuda = KMeans(5).to("cuda")
        assert cuda.init_draws.device.type == "cuda"
        assignments, centroids = cuda(torch.randn(2, 40, 3, device="cuda"))
        assert assignments.device.type == "cuda" and centroids.device.type == "cuda"


@pytest.fixture
def compiled_kmeans(monkeypatch):
    """The compiled k-means of bfloat16 points on (skips without numba); ``eager(fn)`` runs fn with it off."""
    pytest.importorskip("numba")
    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")

    def eager(function):
        with monkeypatch.context() as switch:
            switch.setenv("MONAI_SACB_NUMBA", "0")
            return function()

    return eager


def _integer_points(shape, distinct, seed):
    """bfloat16 points of small integer coordinates: every distance is exact in float32 whatever the summation
    order, so the compiled and the eager k-means must agree exactly, ties (duplicated centroids) included."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, distinct, shape, generator=generator).bfloat16()


@pytest.mark.parametrize(
    "shape, distinct, max_points",
    [((2, 3000, 6), 3, None), ((2, 3000, 6), 3, 500), ((2, 700, 16), 5, 256), ((3, 300, 64), 4, None), ((1, 9, 2), 2, None)],
)
def test_compiled_bfloat16_kmeans_equals_eager(shape, distinct, max_points, compiled_kmeans):
    points = _integer_points(shape, distinct, seed=shape[1])
    assert kmeans_module._compiled_kmeans(points, 10, kmeans_init_draws(7), max_points) is not None
    compiled = batched_kmeans(points, 7, max_points=max_points)
    eager = compiled_kmeans(lambda: batched_kmeans(points, 7, max_points=max_points))
    assert torch.equal(compiled[0], eager[0])
    torch.testing.assert_close(compiled[1], eager[1], rtol=0, atol=1e-6)
    assert compiled[1].dtype == torch.float32 and compiled[0].dtype == torch.int64
    # points given as a transposed view (channels first in memory), as descriptors of a contiguous feature map are
    strided = points.transpose(1, 2).contiguous().transpose(1, 2)
    transposed = batched_kmeans(strided, 7, max_points=max_points)
    assert torch.equal(transposed[0], compiled[0]) and torch.equal(transposed[1], compiled[1])
    again = batched_kmeans(points.clone(), 7, max_points=max_points)
    assert torch.equal(again[0], compiled[0]) and torch.equal(again[1], compiled[1])


def test_compiled_bfloat16_kmeans_planted_clusters_and_edge_cases(compiled_kmeans):
    points, truth = _planted_blobs(seed=7)
    points = points.bfloat16()
    for max_points in (None, 30):
        assignments, centroids = batched_kmeans(points, 3, max_points=max_points)
        eager = compiled_kmeans(lambda: batched_kmeans(points, 3, max_points=max_points))
        assert torch.equal(assignments, eager[0])
        torch.testing.assert_close(centroids, eager[1], rtol=0, atol=1e-5)
        assert torch.equal(assignments, _nearest_centroid(points.float(), centroids))
        for b in range(2):
            for blob in range(3):
                assert assignments[b][truth[b] == blob].unique().numel() == 1
    both, single = batched_kmeans(points, 3), batched_kmeans(points[1:], 3)
    assert torch.equal(single[0][0], both[0][1]) and torch.equal(single[1][0], both[1][1])  # samples are independent
    # constant input: one cluster, identical finite centroids
    assignments, centroids = batched_kmeans(torch.full((2, 50, 3), 1.5).bfloat16(), 4)
    assert torch.equal(assignments, torch.zeros(2, 50, dtype=torch.int64))
    assert torch.equal(centroids, torch.full((2, 4, 3), 1.5))
    # fewer points than clusters: every point on its own centroid, extra clusters empty but finite
    few = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(4)).bfloat16()
    assignments, centroids = batched_kmeans(few, 7)
    assert torch.isfinite(centroids).all() and all(assignments[b].unique().numel() == 4 for b in range(2))
    torch.testing.assert_close(torch.gather(centroids, 1, assignments.unsqueeze(-1).expand(-1, -1, 3)), few.float())


def test_compiled_kmeans_applies_to_bfloat16_on_cpu_only(compiled_kmeans, monkeypatch):
    """float32 results must not depend on numba being installed."""
    points = _integer_points((2, 40, 3), 3, seed=1)
    draws = kmeans_init_draws(3)
    assert kmeans_module._compiled_kmeans(points, 10, draws, None) is not None
    assert kmeans_module._compiled_kmeans(points.float(), 10, draws, None) is None
    with mock.patch.object(network_utils, "use_cpu_kernels", return_value=False):  # e.g. exporting
        assert kmeans_module._compiled_kmeans(points, 10, draws, None) is None
    monkeypatch.setenv("MONAI_SACB_NUMBA", "0")
    assert kmeans_module._compiled_kmeans(points, 10, draws, None) is None
