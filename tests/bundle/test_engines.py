# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import os

import pytest
import torch

from monai_sacb.engines import (
    KeyMetricTracker,
    PairInferer,
    PreparePairBatch,
    bundle_datalist,
    check_checkpoint_compatible,
    check_data_format,
    inference_datalist,
    latest_checkpoint,
)
from monai_sacb.networks import SACBNet, SACBNetDDF


def test_prepare_batch_and_inferer_match_sacbnet():
    torch.manual_seed(0)
    net = SACBNetDDF(base_channels=2, kmeans_iters=2).eval()
    batch = {"moving_image": torch.rand(1, 1, 32, 32, 32), "fixed_image": torch.rand(1, 1, 32, 32, 32)}
    pair, target = PreparePairBatch()(batch, device="cpu")
    assert pair.shape == (1, 2, 32, 32, 32) and target is batch["fixed_image"]
    with torch.no_grad():
        warped, ddf = PairInferer()(pair, net)
        ref_warped, ref_ddf = SACBNet.forward(net, batch["moving_image"], batch["fixed_image"])
    torch.testing.assert_close(ddf, ref_ddf)
    torch.testing.assert_close(warped, ref_warped)
    with pytest.raises(KeyError, match="moving_image"):
        PreparePairBatch()({"image": pair})


def test_latest_checkpoint_by_epoch_number(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    for epoch in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={epoch}.pt").touch()
    (tmp_path / "model.pt").touch()
    assert latest_checkpoint(tmp_path) == os.path.join(str(tmp_path), "checkpoint_epoch=10.pt")


def test_checkpoint_compatibility_message():
    net = SACBNetDDF(base_channels=4)
    check_checkpoint_compatible({"model": net.state_dict()}, net)
    check_checkpoint_compatible(SACBNetDDF(num_clusters=5).state_dict(), net)  # clusters do not change weights
    with pytest.raises(ValueError, match=r"model\.pt was not saved from this network.*other shape"):
        check_checkpoint_compatible(SACBNetDDF(base_channels=2).state_dict(), net, "model.pt")
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        check_checkpoint_compatible({"model": {"conv.weight": torch.zeros(1)}}, net)


def test_key_metric_tracker_round_trip(tmp_path):
    from ignite.engine import Engine

    from monai.handlers import CheckpointSaver

    net = torch.nn.Linear(1, 1)

    def make():
        return CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_filename="model.pt")

    saver = make()
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"dice": 0.8}
    engine.state.key_metric_name = "dice"
    saver.metrics_completed(engine)
    state = KeyMetricTracker(saver).state_dict()
    restored = make()
    KeyMetricTracker(restored).load_state_dict(state)
    before = os.path.getmtime(tmp_path / "model.pt")
    engine.state.metrics = {"dice": 0.5}  # worse: model.pt is kept
    restored.metrics_completed(engine)
    assert os.path.getmtime(tmp_path / "model.pt") == before


def test_data_format_errors(tmp_path):
    assert check_data_format("LPBA40") == "lpba40"
    with pytest.raises(ValueError, match="unknown data format 'oasis'; valid: default, synth, learn2reg"):
        bundle_datalist("oasis", tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        bundle_datalist("learn2reg", tmp_path / "nothing")
    with pytest.raises(ValueError, match="both --moving_image and --fixed_image"):
        inference_datalist(moving_image="a.nii.gz")
    with pytest.raises(FileNotFoundError, match="--fixed_image: file not found"):
        (tmp_path / "a.nii.gz").touch()
        inference_datalist(str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"))


class _Constant(torch.nn.Module):
    """A 'network' that predicts the same ddf whatever the order of its inputs (a pure bias)."""

    def forward(self, pair):
        ddf = torch.zeros(pair.shape[0], 3, *pair.shape[2:])
        ddf[:, 0] = 1.5
        ddf[:, 2] = -0.5
        return ddf


class _Translation(torch.nn.Module):
    """Registers by a known translation: +t for (moving, fixed) = (a, b), -t for (b, a) (exact inverses)."""

    def __init__(self, reference):
        super().__init__()
        self.reference = reference

    def forward(self, pair):
        sign = torch.where(torch.isclose(pair[:, :1], self.reference).flatten(1).all(1), 1.0, -1.0)
        ddf = torch.zeros(pair.shape[0], 3, *pair.shape[2:])
        ddf[:, 1] = 2.0 * sign.view(-1, 1, 1, 1)
        return ddf


def test_symmetric_inference_cancels_an_order_independent_bias():
    pair = torch.rand(2, 2, 8, 8, 8)
    _, plain = PairInferer()(pair, _Constant())
    _, symmetric = PairInferer(symmetric=True)(pair, _Constant())
    assert float(plain.abs().max()) == 1.5
    torch.testing.assert_close(symmetric, torch.zeros_like(symmetric), atol=1e-6, rtol=0)


def test_symmetric_inference_keeps_inverse_consistent_fields():
    moving, fixed = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    pair = torch.cat([moving, fixed], dim=1)
    warped, ddf = PairInferer(symmetric=True)(pair, _Translation(moving))
    expected = torch.zeros_like(ddf)
    expected[:, 1] = 2.0
    torch.testing.assert_close(ddf, expected)
    torch.testing.assert_close(warped, PairInferer()(pair, _Translation(moving))[0])
