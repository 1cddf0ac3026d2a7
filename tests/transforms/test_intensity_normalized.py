# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_sacb.transforms import IntensityNormalized


def _data():
    torch.manual_seed(0)
    return {"moving_image": torch.rand(1, 10, 10, 10) * 200 - 50, "moving_label": torch.arange(1000.0).view(1, 10, 10, 10)}


def test_percentile_maps_the_robust_range_to_unit_interval_and_leaves_labels():
    data = _data()
    out = IntensityNormalized("moving_image", "percentile")(data)
    x = data["moving_image"].numpy()
    low, high = np.percentile(x, 0.5), np.percentile(x, 99.5)
    expected = np.clip((x - low) / (high - low), 0, 1)
    np.testing.assert_allclose(np.asarray(out["moving_image"]), expected, atol=1e-5)
    assert torch.equal(out["moving_label"], data["moving_label"])


@pytest.mark.parametrize(
    "method, check",
    [
        ("minmax", lambda y: (float(y.min()), float(y.max())) == (0.0, 1.0)),
        ("zscore", lambda y: abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-4),
        ((0, 100), lambda y: float(y.min()) == 0.0 and float(y.max()) == 1.0),
        (None, lambda y: torch.equal(y, _data()["moving_image"])),
        ("none", lambda y: torch.equal(y, _data()["moving_image"])),
    ],
)
def test_each_method(method, check):
    out = IntensityNormalized("moving_image", method)(_data())["moving_image"]
    assert check(torch.as_tensor(out))


def test_window_is_linear_inside():
    data = {"moving_image": torch.tensor([[[[-500.0, 150.0, 800.0, 2000.0]]]])}
    out = IntensityNormalized("moving_image", (-500, 800))(data)["moving_image"]
    torch.testing.assert_close(torch.as_tensor(out).flatten(), torch.tensor([0.0, 0.5, 1.0, 1.0]))


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown intensity 'robust'.*'percentile', 'minmax', 'zscore', 'none'"):
        IntensityNormalized("moving_image", "robust")
