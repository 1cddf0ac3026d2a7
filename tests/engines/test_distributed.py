# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

from monai_sacb.engines import distributed_device, finalize_distributed


def test_finalize_distributed_ends_the_process_group_after_its_collectives(tmp_path):
    """A one-process gloo group: a collective, then finalize: the group is gone, the wait is the given one."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        gathered = [torch.zeros(3)]
        dist.all_gather(gathered, torch.arange(3.0))
        assert torch.equal(gathered[0], torch.arange(3.0))
        start = time.perf_counter()
        finalize_distributed(settle_seconds=0.05)
        assert time.perf_counter() - start >= 0.05
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    finalize_distributed()  # nothing to end: a no-op
    with pytest.raises(ValueError, match="settle_seconds must be >= 0"):
        finalize_distributed(settle_seconds=-1.0)


def test_distributed_device_is_the_local_rank_gpu_or_the_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed_device() == torch.device("cpu")  # CPU processes (gloo)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed_device() == torch.device("cuda", 1)


def test_distributed_device_names_the_fix_for_a_wrong_start(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(RuntimeError, match=r"under torchrun.*--nproc_per_node=N .*run train.json alone"):
        distributed_device()
    # two processes on a machine with one GPU (the documented command is for two GPUs)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK=1, but 1 GPU\(s\) are visible.*--nproc_per_node=1"):
        distributed_device()
