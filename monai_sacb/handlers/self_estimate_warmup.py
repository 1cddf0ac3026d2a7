# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import logging
from typing import Any

from torch import nn

__all__ = ["SelfEstimateWarmup"]


class SelfEstimateWarmup:
    """
    Ramps in the subtraction of the self-estimate of
    :py:class:`monai_sacb.networks.SACBNetBackbone` (``subtract_self_estimate=True``) over the first iterations
    of a training run: before iteration ``i`` (counted from 1, as ``engine.state.iteration``, so a resumed run
    continues the ramp) it sets the network's ``self_estimate_weight`` to ``min(1, i / iterations)``.

    Why: trained from scratch, the subtracting network learned more slowly than the paper's plain network (the
    bundle's main job: held-out Dice 0.449 against 0.509 after its 160 iterations, with rougher fields); ramped in
    over the first 40 iterations it reached 0.493, with the smoothest fields of the variants tried
    (bundle/docs/README.md, "Main job"). The weight only acts in training mode: validation and
    inference (eval mode) always subtract the whole self-estimate.

    A network without ``self_estimate_weight`` or that does not subtract (e.g. VoxelMorph in
    :py:class:`monai_sacb.networks.PairDDFWrapper`, or ``subtract_self_estimate=False``) is left alone, so a config
    can list this handler whatever its ``network_def``. A ``DistributedDataParallel`` wrapper is looked through.

    Args:
        network: the trained network.
        iterations: length of the ramp in iterations; 0 subtracts the whole self-estimate from the first one.

    Example (a bundle config's ``train#handlers``)::

        {"_target_": "monai_sacb.handlers.SelfEstimateWarmup", "network": "@network", "iterations": 40}
    """

    def __init__(self, network: nn.Module, iterations: int = 40) -> None:
        if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 0:
            raise ValueError(
                f"SelfEstimateWarmup(iterations=...) takes a whole number of iterations >= 0 (0: no ramp; "
                f"--self_estimate_warmup in train.json), got {iterations!r}."
            )
        self.network = network
        self.iterations = int(iterations)

    def _target(self) -> nn.Module | None:
        network = getattr(self.network, "module", self.network)  # DistributedDataParallel
        if not getattr(network, "subtract_self_estimate", False) or not hasattr(network, "self_estimate_weight"):
            return None
        return network

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        if self._target() is None:
            logging.getLogger(__name__).info(
                "SelfEstimateWarmup: the network does not subtract a self-estimate; nothing to ramp."
            )
            return
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def weight(self, iteration: int) -> float:
        """The weight set before training iteration ``iteration`` (1-based)."""
        return 1.0 if self.iterations == 0 else min(1.0, iteration / self.iterations)

    def __call__(self, engine: Any) -> None:
        target = self._target()
        if target is not None:
            target.self_estimate_weight = self.weight(engine.state.iteration)
