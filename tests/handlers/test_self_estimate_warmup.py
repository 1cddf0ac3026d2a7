# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""SelfEstimateWarmup: the weight the network sees at each training iteration, in resumed runs too, and the
networks it leaves alone."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from monai_sacb.handlers import SelfEstimateWarmup
from monai_sacb.networks import SACBNetBackbone


def _weights_seen(network, handler, num_iterations, start_iteration=0):
    """Runs a training engine whose step records the network's self_estimate_weight; returns one per iteration."""
    seen = []
    backbone = getattr(network, "module", network)
    engine = Engine(lambda engine, batch: seen.append(backbone.self_estimate_weight))
    handler.attach(engine)
    if start_iteration:  # a resumed run: the state restored from a checkpoint after start_iteration iterations
        epochs_done = start_iteration // num_iterations
        state = {"iteration": start_iteration, "epoch_length": num_iterations, "max_epochs": epochs_done + 1}
        engine.load_state_dict(state)
    engine.run(range(num_iterations), max_epochs=1 if not start_iteration else None)
    return seen


class _Wrapped(torch.nn.Module):
    """Stands in for DistributedDataParallel: the network as ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_ramps_from_the_first_iteration_to_one():
    net = SACBNetBackbone(subtract_self_estimate=True)
    seen = _weights_seen(net, SelfEstimateWarmup(net, iterations=4), 6)
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_resumed_run_continues_the_ramp_and_ddp_is_looked_through():
    net = SACBNetBackbone(subtract_self_estimate=True)
    wrapped = _Wrapped(net)
    assert _weights_seen(wrapped, SelfEstimateWarmup(wrapped, iterations=10), 3, start_iteration=6) == [0.7, 0.8, 0.9]


def test_zero_iterations_subtracts_everything_and_plain_networks_are_left_alone():
    net = SACBNetBackbone(subtract_self_estimate=True)
    net.self_estimate_weight = 0.5
    assert _weights_seen(net, SelfEstimateWarmup(net, iterations=0), 2) == [1.0, 1.0]
    plain = SACBNetBackbone()  # the paper's network: nothing to ramp
    assert _weights_seen(plain, SelfEstimateWarmup(plain, iterations=4), 2) == [1.0, 1.0]
    other = torch.nn.Linear(2, 2)  # e.g. a wrapped VoxelMorph: no attribute, no error
    engine = Engine(lambda engine, batch: None)
    SelfEstimateWarmup(other, iterations=4).attach(engine)
    engine.run(range(2), max_epochs=1)
    assert not hasattr(other, "self_estimate_weight")


@pytest.mark.parametrize("iterations", [-1, 2.5, True, "40"])
def test_bad_iterations_are_refused(iterations):
    with pytest.raises((ValueError, TypeError)):
        SelfEstimateWarmup(SACBNetBackbone(subtract_self_estimate=True), iterations=iterations)
