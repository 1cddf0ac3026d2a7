# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""What MONAI's stock engines (``SupervisedTrainer``, ``SupervisedEvaluator``) need for registration pairs beyond
their defaults: the ``prepare_batch`` that turns a batch of pairs into the network's input, and the device and the
clean end of each process of a distributed run."""

from __future__ import annotations

from .distributed import distributed_device, finalize_distributed
from .utils import PreparePairBatch

__all__ = ["PreparePairBatch", "distributed_device", "finalize_distributed"]
