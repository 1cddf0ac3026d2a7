# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

__all__ = ["distributed_device", "finalize_distributed"]

_TORCHRUN = (
    "torchrun --standalone --nnodes=1 --nproc_per_node=N -m monai.bundle run --config_file "
    "\"['bundle/configs/train.json','bundle/configs/multi_gpu_train.json']\""
)


def distributed_device() -> torch.device:
    """
    This process's device in a ``torchrun`` job: ``cuda:LOCAL_RANK`` where CUDA is available, else the CPU (where
    the bundle's ``multi_gpu_train.json`` uses the gloo backend). That config calls it first in ``initialize``,
    before the process group is set up, so that a wrong start fails with a message that names the fix.

    Raises:
        RuntimeError: the process was not started by ``torchrun`` (no ``LOCAL_RANK`` in the environment), or
            ``torchrun`` started more processes per node than there are visible GPUs.
    """
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None:
        raise RuntimeError(
            f"multi_gpu_train.json runs one process per GPU under torchrun, which sets LOCAL_RANK: {_TORCHRUN} "
            "(N: the number of GPUs). On one GPU or CPU, run train.json alone."
        )
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if int(local_rank) >= count:
        raise RuntimeError(
            f"torchrun started a process with LOCAL_RANK={local_rank}, but {count} GPU(s) are visible here: start "
            f"at most one process per GPU (--nproc_per_node={count}), or make more GPUs visible (CUDA_VISIBLE_DEVICES)."
        )
    return torch.device("cuda", int(local_rank))


def finalize_distributed(settle_seconds: float = 0.2) -> None:
    """
    End a ``torch.distributed`` run: a barrier, ``destroy_process_group()``, then ``settle_seconds`` of sleep, so
    that the process exits only after the backend's worker threads have let go of their last collectives. Does
    nothing when no process group is initialised. The bundle's ``multi_gpu_train.json`` calls it in ``finalize``.

    Why the sleep: after ``barrier()`` returns, a gloo worker thread may still hold the last reference to a finished
    collective (e.g. the validation metrics' ``all_gather`` that the barrier waited for). Dropping it frees tensors
    that Python owns, which takes the GIL. If the interpreter is already finalizing, the thread is stopped inside
    that destructor and the process aborts with "terminate called without an active exception" after all its work
    is done (seen with the 2-process CPU torchrun of the tests in 1 of 45 to 4 of 18 runs; pytorch/pytorch#190489).
    ``destroy_process_group()`` does not join the workers, since the ``DistributedDataParallel`` network keeps a
    reference to the process group until the interpreter tears the network down. Sleeping releases the GIL, so
    the workers finish while the interpreter is fully alive.

    Args:
        settle_seconds: how long to wait after destroying the process group (>= 0).
    """
    if settle_seconds < 0:
        raise ValueError(f"settle_seconds must be >= 0, got {settle_seconds}.")
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    time.sleep(settle_seconds)
