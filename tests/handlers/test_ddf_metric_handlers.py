# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai.handlers import from_engine
from monai_sacb.handlers import DDFMetricHandler, PercentFolding, SDLogJacobian
from monai_sacb.metrics import SDLogJacobianMetric


@pytest.fixture
def fold(slab_fold):
    """float32 ddf, (1, 3, 10, 6, 5), folding slices 3..6 along axis 0: 40 % folded."""
    return slab_fold((10, 6, 5), 0, 3, 6).float()


def test_percent_folding(run_handler, fold):
    zero = torch.zeros_like(fold)
    handler = PercentFolding(output_transform=from_engine(["ddf"]))
    value, details = run_handler(handler, [{"ddf": torch.cat([fold, zero])}, {"ddf": fold}])
    assert value == pytest.approx(80.0 / 3, abs=5e-5)
    torch.testing.assert_close(details, torch.tensor([[40.0], [0.0], [40.0]]))


def test_percent_folding_with_mask_and_decollated(run_handler, fold):
    # (ddf, mask) from a dict output: mask on slices 0..4 -> 2 of 5 slices folded
    mask = torch.zeros((1, 1, 10, 6, 5))
    mask[:, :, :5] = 1
    handler = PercentFolding(output_transform=from_engine(["ddf", "label"]), save_details=False)
    value, details = run_handler(handler, [{"ddf": fold, "label": mask}])
    assert value == pytest.approx(40.0, abs=5e-5)
    assert details is None
    # a decollated output (list of dicts) gives a list of channel-first ddfs
    handler = PercentFolding(output_transform=from_engine(["ddf"]))
    value, _ = run_handler(handler, [[{"ddf": fold[0]}, {"ddf": torch.zeros_like(fold[0])}]])
    assert value == pytest.approx(20.0, abs=5e-5)


def test_percent_folding_border(run_handler, fold):
    # border 1 keeps slices 1..8, of which 3..6 fold
    value, _ = run_handler(PercentFolding(border=1, output_transform=lambda out: out["ddf"]), [{"ddf": fold}])
    assert value == pytest.approx(50.0, abs=5e-5)


def test_sd_log_jacobian(run_handler, quadratic_field):
    ddf, interior, full = quadratic_field()
    handler = SDLogJacobian(output_transform=from_engine(["ddf"]))
    value, details = run_handler(handler, [{"ddf": ddf}, {"ddf": torch.zeros_like(ddf)}])
    assert value == pytest.approx(float(np.std(np.log(full))) / 2, abs=5e-7)
    assert tuple(details.shape) == (2, 1)
    handler = SDLogJacobian(border=1, output_transform=lambda out: out["ddf"])
    value, _ = run_handler(handler, [{"ddf": ddf}])
    assert value == pytest.approx(float(np.std(np.log(interior))), abs=5e-7)


def test_sd_log_jacobian_eps(run_handler, slab_fold):
    # 4 of 10 slices folded, clipped to eps = 1e-3
    handler = SDLogJacobian(eps=1e-3)
    value, _ = run_handler(handler, [slab_fold((10, 6, 5), 0, 3, 6)])
    assert value == pytest.approx(-math.log(1e-3) * math.sqrt(0.4 * 0.6), abs=5e-7)


def test_ddf_metric_handler_reads_every_output_form(run_handler, quadratic_field):
    # any ddf metric fits: (ddf,), (ddf, mask), the ddf itself and a list of channel-first ddfs
    ddf, interior, _ = quadratic_field()
    mask = torch.zeros((1, 1, *ddf.shape[2:]))
    mask[:, :, 1:3] = 1  # det 1.1 and 1.2
    outputs = [(ddf,), (ddf, mask), ddf, [ddf[0]]]
    handler = DDFMetricHandler(metric_fn=SDLogJacobianMetric(border=1), output_transform=lambda out: out)
    _, details = run_handler(handler, outputs)
    inner = float(np.std(np.log(interior)))
    torch.testing.assert_close(
        details, torch.tensor([[inner], [math.log(1.2 / 1.1) / 2], [inner], [inner]], dtype=torch.float64)
    )


def test_bad_output(run_handler, fold):
    handler = PercentFolding(output_transform=lambda out: (out, out, out))
    with pytest.raises(ValueError, match="ddf, mask"):
        run_handler(handler, [torch.zeros_like(fold)])
