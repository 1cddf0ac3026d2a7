# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai.data import MetaTensor, list_data_collate
from monai_sacb.metrics.utils import check_ddf, evaluation_region, spacing_from_meta, spacing_to_tensor


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.int64, torch.float32),
    ],
)
def test_check_ddf_dtypes(dtype, expected):
    ddf = torch.arange(2 * 3 * 4).reshape(1, 2, 3, 4).to(dtype)
    out = check_ddf(ddf)
    assert type(out) is torch.Tensor and out.dtype == expected
    torch.testing.assert_close(out, ddf.to(expected))


def test_check_ddf_drops_metadata_and_reads_numpy():
    meta = MetaTensor(torch.ones(1, 3, 2, 2, 2))
    assert type(check_ddf(meta)) is torch.Tensor
    out = check_ddf(np.full((2, 2, 3, 3), 0.5))
    assert out.dtype == torch.float64 and out.shape == (2, 2, 3, 3) and bool((out == 0.5).all())


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 3, 4), "2 or 3 spatial dims"),
        ((1, 2, 4, 4, 4), "2 channels but 3 spatial dims"),
        ((1, 2, 1, 4), "at least 2"),
    ],
)
def test_check_ddf_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        check_ddf(torch.zeros(shape))


@pytest.mark.parametrize(
    "spacing, expected",
    [
        (2.0, [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]),
        ((1.0, 2.0, 3.0), [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]),
        ([(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        ([[1.5], [2.5]], [[1.5, 1.5, 1.5], [2.5, 2.5, 2.5]]),
        (torch.tensor([0.5, 1.0, 2.0]), [[0.5, 1.0, 2.0], [0.5, 1.0, 2.0]]),
    ],
)
def test_spacing_to_tensor_forms(spacing, expected):
    out = spacing_to_tensor(spacing, batch_size=2, spatial_dims=3)
    assert out.dtype == torch.float64 and out.is_contiguous()
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize(
    "spacing, match",
    [
        ((1.0, 2.0), "spacing must be"),
        ([(1.0, 1.0, 1.0)] * 3, "spacing must be"),
        ((1.0, -1.0, 1.0), "positive and finite"),
        ((1.0, float("inf"), 1.0), "positive and finite"),
    ],
)
def test_spacing_to_tensor_bad(spacing, match):
    with pytest.raises(ValueError, match=match):
        spacing_to_tensor(spacing, batch_size=2, spatial_dims=3)


def test_spacing_from_meta():
    assert spacing_from_meta(torch.zeros(1, 1, 4, 4, 4)) is None
    one = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.diag(torch.tensor([1.0, 2.0, 3.0, 1.0])))
    assert spacing_from_meta(one[None]) == [[1.0, 2.0, 3.0]]
    other = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.diag(torch.tensor([0.5, 0.5, 4.0, 1.0])))
    batch = list_data_collate([one, other])
    assert spacing_from_meta(batch) == [[1.0, 2.0, 3.0], [0.5, 0.5, 4.0]]


def test_evaluation_region_border_and_mask():
    region = evaluation_region((2, 1, 6, 5, 4), border=1)
    assert region.dtype == torch.bool and region.shape == (2, 1, 6, 5, 4)
    assert int(region.sum()) == 2 * 4 * 3 * 2
    assert bool(region[:, :, 1:5, 1:4, 1:3].all())
    mask = torch.zeros(1, 1, 6, 5, 4)  # batch size 1 broadcasts to both cases
    mask[:, :, :3] = 2.0
    region = evaluation_region((2, 1, 6, 5, 4), mask=mask, border=1)
    assert region.sum().item() == 2 * 2 * 3 * 2  # rows 1 and 2 of the inner 4
    assert evaluation_region((1, 1, 4, 4), border=0).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"border": -1}, "border"),
        ({"border": 2}, "border"),
        ({"mask": torch.ones(2, 1, 4, 5)}, "mask must have shape"),
        ({"mask": torch.ones(2, 2, 4, 4)}, "mask must have shape"),
        ({"mask": torch.ones(3, 1, 4, 4)}, "batch size 3"),
    ],
)
def test_evaluation_region_bad(kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluation_region((2, 1, 4, 4), **kwargs)
